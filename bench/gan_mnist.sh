#!/usr/bin/env bash
# Benchmark: the three DCGAN losses on MNIST (the 10,000 real test images, split 8,000 train /
# 1,000 val / 1,000 test), one after the other on the CPU, same model and budget for each:
# up to 12 "epochs" of 40 batches of 64 images (trainer.limit_train_batches=40: a fresh shuffled
# subset each time) = 480 batches, each run capped at 6 minutes of training (trainer.max_time),
# whichever comes first. wgan_gp splits each batch into its 5 critic steps, so every loss makes
# one generator step per batch. A small DCGAN (widths 16, latent 64). FID with the offline
# classifier extractor after every 40 batches (1,000 samples vs the 1,000 val images) and on
# the test split at the end (best checkpoint by val FID, EMA weights).
#   bash bench/gan_mnist.sh            # then: python bench/gan_report.py (curves, table)
# Environment: PYTHON (default .venv/bin/python), THREADS (default 1), WORK (default a temp dir;
# reuse one to keep the FID classifier, trained once per cache: 24 min on the loaded machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
THREADS=${THREADS:-1}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work/data/MNIST/raw" bench/results
cp ../shared/data/mnist/*.gz "$work/data/MNIST/raw/"
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS WANDB_MODE=offline GENLAB_CACHE_DIR="$work/cache"
for loss in ${LOSSES:-nonsaturating hinge wgan_gp}; do
    start=$(date +%s.%N)
    "$PYTHON" -m genlab.train experiment=dcgan_mnist dataset.root="$work/data" dataset.pool=test \
        model.loss=$loss model.g_width=16 model.d_width=16 model.latent_dim=64 \
        trainer.max_epochs=12 trainer.limit_train_batches=40 trainer.check_val_every_n_epoch=1 \
        trainer.max_time=00:00:06:00 \
        trainer.log_every_n_steps=5 callbacks.fid.num_samples=1000 callbacks.samples.n=64 \
        logger=csv trainer.enable_progress_bar=false hydra.run.dir="$work/runs/$loss" > "$work/$loss.log" 2>&1
    end=$(date +%s.%N)
    printf '%s: %.0f s wall\n' "$loss" "$(echo "$end - $start" | bc)" | tee -a "$work/times.txt"
    cp "$(ls "$work/runs/$loss"/samples/*.png | sort | tail -1)" "bench/results/gan_mnist_${loss}_samples.png"
    cp "$work/runs/$loss/metrics.json" "bench/results/gan_mnist_${loss}_metrics.json"
    cp "$work/runs/$loss/csv/metrics.csv" "bench/results/gan_mnist_${loss}_curves.csv"
done
cp "$work/times.txt" bench/results/gan_mnist_times.txt
echo "runs in $work"
