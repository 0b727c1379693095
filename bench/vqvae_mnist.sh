#!/usr/bin/env bash
# Benchmark: VQ-VAE and its learned prior on MNIST (the 10,000 real test images of
# ../shared/data/mnist, cut into 8,000 train / 1,000 val / 1,000 test), CPU, one thread, through
# the entry points: stage 1 (experiment=vqvae_mnist) for STAGE1_TIME, then the Transformer prior
# (experiment=vqvae_prior_mnist) on its last checkpoint for PRIOR_TIME. Reports the held-out
# bits/dim bounds of both (uniform prior / learned prior) and the prior's FID in the features of
# genlab's own MNIST classifier (no download; callbacks.fid.extractor=classifier) on 1,000 samples.
# Then bench/vqvae_sampling.py times sampling against PixelCNN at 28x28.
#   STAGE1_TIME=00:00:06:00 PRIOR_TIME=00:00:05:00 bash bench/vqvae_mnist.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STAGE1_TIME=${STAGE1_TIME:-00:00:10:00}
PRIOR_TIME=${PRIOR_TIME:-00:00:10:00}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work/data/MNIST/raw" bench/results
cp ../shared/data/mnist/*.gz "$work/data/MNIST/raw/"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline
common=("dataset.root=$work/data" dataset.pool=test dataset.download=false callbacks.samples=null
        callbacks.bpd.max_examples=1000 logger=csv trainer.enable_progress_bar=false trainer.check_val_every_n_epoch=1)
start=$(date +%s)
$PY -m genlab.train experiment=vqvae_mnist "${common[@]}" callbacks.fid=null "trainer.max_time=\"$STAGE1_TIME\"" \
    "hydra.run.dir=$work/vqvae" > "$work/vqvae.log" 2>&1
mid=$(date +%s)
$PY -m genlab.train experiment=vqvae_prior_mnist "${common[@]}" "model.vqvae_ckpt=$work/vqvae/checkpoints/last.ckpt" \
    callbacks.fid.extractor=classifier callbacks.fid.num_samples=1000 "trainer.max_time=\"$PRIOR_TIME\"" \
    "hydra.run.dir=$work/prior" > "$work/prior.log" 2>&1
end=$(date +%s)
$PY -m genlab.sample "ckpt=$work/prior/checkpoints/last.ckpt" n=64 "hydra.run.dir=$work/prior/samples" > "$work/sample.log" 2>&1
cp "$work/vqvae/metrics.json" bench/results/vqvae_mnist_stage1_metrics.json
cp "$work/prior/metrics.json" bench/results/vqvae_mnist_prior_metrics.json
cp "$work/prior/samples/samples.png" bench/results/vqvae_mnist_prior_samples.png
printf 'stage 1: %d s wall; prior: %d s wall\n' $((mid - start)) $((end - mid))
$PY - "$work/vqvae/metrics.json" "$work/prior/metrics.json" <<'PYEOF'
import json, sys
for path in sys.argv[1:]:
    m = json.load(open(path))
    print(path, {k: round(v, 4) for k, v in m["final"].items() if k.startswith("test/")})
PYEOF
$PY bench/vqvae_sampling.py "$work/prior/checkpoints/last.ckpt" | tee bench/results/vqvae_sampling.txt
echo "runs in $work"
