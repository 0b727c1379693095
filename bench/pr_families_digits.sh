#!/usr/bin/env bash
# Benchmark (issue 15): precision and recall of every family on the embedded 8x8 digits, the
# picture behind "likelihood models cover modes, GANs seek them". Each family's digits
# experiment trains for the same 30 epochs (23 batches of 64 each), one after the other, one
# thread; then FID, precision and recall (offline classifier) of 1,000 samples (the EMA weights,
# the family's default sampler) against the 1,437 training digits (callbacks.fid.split=train,
# so both sets are large enough for 3-nearest-neighbour balls).
#   bash bench/pr_families_digits.sh      # then: python bench/pr_families_table.py
# Environment: PYTHON (default .venv/bin/python), WORK (default a temp dir), EPOCHS (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
EPOCHS=${EPOCHS:-30}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work" bench/results
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline
for experiment in ${EXPERIMENTS:-vae_digits flow_realnvp_digits autoregressive_digits ddpm_digits dcgan_digits stylegan_digits}; do
    /usr/bin/time -f "$experiment: %U s user, %S s sys, %e s wall" -a -o "$work/times.txt" \
        "$PYTHON" -m genlab.train experiment=$experiment trainer.max_epochs=$EPOCHS \
        trainer.check_val_every_n_epoch=$EPOCHS callbacks.fid.split=train callbacks.fid.num_samples=1000 \
        objective=val/fid_classifier test=false logger=none trainer.enable_progress_bar=false \
        hydra.run.dir="$work/runs/$experiment" > "$work/$experiment.log" 2>&1 || echo "$experiment failed" >> "$work/times.txt"
    cp "$work/runs/$experiment/metrics.json" "bench/results/pr_digits_${experiment}_metrics.json" || true
    cp "$(ls "$work/runs/$experiment"/samples/*.png | sort | tail -1)" "bench/results/pr_digits_${experiment}_samples.png" || true
done
cp "$work/times.txt" bench/results/pr_digits_times.txt
echo "runs in $work"
