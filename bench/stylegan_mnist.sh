#!/usr/bin/env bash
# Benchmark (issue 15): StyleGAN2 against the DCGAN (non-saturating, the best loss of bench/gan.md)
# on MNIST, the same CPU budget for each: one run after the other, one compute thread each,
# each stopped by callbacks.cpu_budget after MINUTES of its own CPU time (fair on a shared
# machine, where a wall-clock budget gives each run whatever the others leave).
# Data: the 10,000 real MNIST test images (dataset.pool=test: 8,000 train / 1,000 val / 1,000 test).
# FID, precision and recall with the offline classifier extractor, 1,000 samples (EMA generator)
# against the 1,000 val images every 2 epochs (250 batches of 64) and once more when the budget
# stops training; against the 1,000 test images at the end (best checkpoint by val FID).
#   MNIST_ROOT=DIR bash bench/stylegan_mnist.sh      # DIR/MNIST/raw/t10k-*
# Environment: PYTHON (default .venv/bin/python), MINUTES (CPU-minutes per run, default 20),
# MODELS (default "dcgan stylegan"), WORK (default bench/out/stylegan_mnist, git-ignored;
# GENLAB_CACHE_DIR=$WORK/cache keeps the MNIST classifier, trained once, outside the budget).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MINUTES=${MINUTES:-20}
work=${WORK:-$PWD/bench/out/stylegan_mnist}
root=${MNIST_ROOT:-$work/data}
if [ -z "${MNIST_ROOT:-}" ]; then mkdir -p "$root/MNIST/raw" && cp ../shared/data/mnist/*.gz "$root/MNIST/raw/"; fi
mkdir -p "$work" bench/results
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline GENLAB_CACHE_DIR="$work/cache"
common=(dataset.root="$root" dataset.pool=test hardware.cpu_threads=1 callbacks.cpu_budget.minutes=$MINUTES
        trainer.max_epochs=1000 trainer.check_val_every_n_epoch=2 callbacks.fid.num_samples=1000
        logger=csv trainer.enable_progress_bar=false)
declare -A overrides=(
    [dcgan]="experiment=dcgan_mnist model.loss=nonsaturating"
    [stylegan]="experiment=stylegan_mnist"
)
for name in ${MODELS:-dcgan stylegan}; do
    echo "$name start: $(cat /proc/loadavg)" >> "$work/load.txt"
    # shellcheck disable=SC2086
    /usr/bin/time -f "$name: %U s user, %S s sys, %e s wall" -a -o "$work/times.txt" \
        "$PYTHON" -m genlab.train ${overrides[$name]} "${common[@]}" hydra.run.dir="$work/runs/$name" > "$work/$name.log" 2>&1
    echo "$name end: $(cat /proc/loadavg)" >> "$work/load.txt"
    cp "$(ls "$work/runs/$name"/samples/*.png | sort | tail -1)" "bench/results/stylegan_mnist20_${name}_samples.png"
    cp "$work/runs/$name/metrics.json" "bench/results/stylegan_mnist20_${name}_metrics.json"
    cp "$work/runs/$name/csv/metrics.csv" "bench/results/stylegan_mnist20_${name}_curves.csv"
done
cp "$work/times.txt" bench/results/stylegan_mnist20_times.txt
echo "runs in $work"
