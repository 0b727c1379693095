#!/usr/bin/env bash
# Benchmark: VQ-VAE and its learned prior on MNIST (the 10,000 real test images of
# ../shared/data/mnist, cut into 8,000 train / 1,000 val / 1,000 test), CPU, one thread, through
# the entry points: stage 1 (experiment=vqvae_mnist) for STAGE1_MINUTES of CPU time, then the
# Transformer prior (experiment=vqvae_prior_mnist) on its last checkpoint for PRIOR_MINUTES
# (callbacks.cpu_budget; each stage validates once, when its budget stops it). Reports the held-out
# bits/dim bounds of both (uniform prior / learned prior) and the prior's FID in the features of
# genlab's own MNIST classifier (no download; callbacks.fid.extractor=classifier) on 1,000 samples.
# Then (unless SAMPLING_TIME=0) bench/vqvae_sampling.py times sampling against PixelCNN at 28x28.
#   STAGE1_MINUTES=10 PRIOR_MINUTES=10 bash bench/vqvae_mnist.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STAGE1_MINUTES=${STAGE1_MINUTES:-10}
PRIOR_MINUTES=${PRIOR_MINUTES:-10}
SAMPLING_TIME=${SAMPLING_TIME:-1}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work/data/MNIST/raw" bench/results
cp ../shared/data/mnist/*.gz "$work/data/MNIST/raw/"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline
common=("dataset.root=$work/data" dataset.pool=test dataset.download=false callbacks.samples=null
        callbacks.bpd.max_examples=1000 logger=csv trainer.enable_progress_bar=false hardware.cpu_threads=1 trainer.max_epochs=100000
        trainer.check_val_every_n_epoch=100000)
start=$(date +%s)
echo "stage 1: start $(date -u +%H:%M) UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
$PY -m genlab.train experiment=vqvae_mnist "${common[@]}" callbacks.fid=null "callbacks.cpu_budget.minutes=$STAGE1_MINUTES" \
    "hydra.run.dir=$work/vqvae" > "$work/vqvae.log" 2>&1
mid=$(date +%s)
echo "prior: start $(date -u +%H:%M) UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
cp "$work/vqvae/metrics.json" bench/results/vqvae_mnist_stage1_metrics.json
$PY -m genlab.train experiment=vqvae_prior_mnist "${common[@]}" "model.vqvae_ckpt=$work/vqvae/checkpoints/last.ckpt" \
    callbacks.fid.extractor=classifier callbacks.fid.num_samples=1000 "callbacks.cpu_budget.minutes=$PRIOR_MINUTES" \
    "hydra.run.dir=$work/prior" > "$work/prior.log" 2>&1
end=$(date +%s)
echo "prior: done $(date -u +%H:%M) UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
grep -h "cpu_budget" "$work/vqvae.log" "$work/prior.log" || true
cp "$work/prior/metrics.json" bench/results/vqvae_mnist_prior_metrics.json
$PY -m genlab.sample "ckpt=$work/prior/checkpoints/last.ckpt" n=64 "hydra.run.dir=$work/prior/samples" > "$work/sample.log" 2>&1
cp "$work/prior/samples/samples.png" bench/results/vqvae_mnist_prior_samples.png
printf 'stage 1: %d s wall; prior: %d s wall\n' $((mid - start)) $((end - mid))
$PY - "$work/vqvae/metrics.json" "$work/prior/metrics.json" <<'PYEOF'
import json, sys
for path in sys.argv[1:]:
    m = json.load(open(path))
    print(path, {k: round(v, 4) for k, v in m["final"].items() if k.startswith("test/")})
PYEOF
[ "$SAMPLING_TIME" = 0 ] || $PY bench/vqvae_sampling.py "$work/prior/checkpoints/last.ckpt" | tee bench/results/vqvae_sampling.txt
echo "runs in $work"
