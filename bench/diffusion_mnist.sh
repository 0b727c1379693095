#!/usr/bin/env bash
# Benchmark (c): DDPM on MNIST on this CPU in at most 20 minutes, through genlab-train.
# The 10,000 real MNIST images of ../shared/data/mnist (or $MNIST_RAW) are split 80/10/10 (dataset.pool=test);
# a deliberately small UNet (ch=16, mult 1,2,2, one block per level, ~0.29M parameters) trained
# for a fixed number of epochs, then one validation: bits/dim (bound, 10 of T=1000 terms,
# stratified) on the 1000 val images, FID (offline classifier extractor, 500 DDIM-20 samples vs
# the 1000 val images) and a sample grid. Copies metrics.json and the grid to bench/results/.
#   bash bench/diffusion_mnist.sh [EPOCHS]   (default 3; the figures in bench/diffusion.md used 8)
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-3}
py=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
# A fixed data root: the MNIST FID classifier is trained on the first run (minutes) and cached
# by the dataset's identity, which includes its path; later runs reuse it.
data=${GENLAB_CACHE_DIR:-$HOME/.cache/genlab}/bench-data/mnist
mkdir -p "$data/MNIST/raw" bench/results
cp -n "${MNIST_RAW:-../shared/data/mnist}"/*.gz "$data/MNIST/raw/"
start=$(date +%s)
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} GENLAB_LOG_DIR="$work/outputs" WANDB_MODE=offline \
    $py -m genlab.train experiment=ddpm_mnist dataset.root="$data" dataset.pool=test \
    dataset.batch_size=64 model.channels=16 model.channel_mult=[1,2,2] model.num_res_blocks=1 \
    model.attention_resolutions=[] model.dropout=0.0 model.optimizer.lr=1e-3 model.bound_timesteps=10 \
    callbacks.ema.decay=0.995 callbacks.bpd.max_examples=1000 callbacks.fid.extractor=classifier \
    callbacks.fid.num_samples=500 callbacks.fid.every_n_epochs="$epochs" sampler.steps=20 callbacks.samples.n=64 \
    trainer.max_epochs="$epochs" trainer.check_val_every_n_epoch="$epochs" test=false \
    logger=csv trainer.enable_progress_bar=false > "$work/log.txt" 2>&1
end=$(date +%s)
run=$(dirname "$(find "$work/outputs" -name metrics.json | head -1)")
cp "$(ls "$run"/samples/*.png | sort | tail -1)" bench/results/diffusion_mnist_samples.png
cp "$run/metrics.json" bench/results/diffusion_mnist_metrics.json
echo "ddpm mnist: $((end - start)) s wall, $epochs epochs"
grep -E "bits/dim|fid_classifier=|FID classifier" "$work/log.txt" | sed 's/^\[[^]]*\]//'
cp "$work/log.txt" bench/results/diffusion_mnist_log.txt
rm -rf "$work"
