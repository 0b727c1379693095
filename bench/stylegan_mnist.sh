#!/usr/bin/env bash
# Benchmark (issue 15): StyleGAN2 against the DCGAN (non-saturating, the best loss of bench/gan.md)
# on MNIST, the same CPU budget for each: both runs start together, one thread each, and train
# until trainer.max_time (wall) runs out; /usr/bin/time records the CPU seconds each really got
# (the machine is shared, so a wall budget is not a CPU budget: the table states both).
# Data: the 10,000 real MNIST test images (dataset.pool=test: 8,000 train / 1,000 val / 1,000 test).
# FID, precision and recall with the offline classifier extractor, 1,000 samples against the
# 1,000 val images after every 40 batches and against the 1,000 test images at the end (best
# checkpoint by val FID, EMA generator).
#   MNIST_ROOT=DIR bash bench/stylegan_mnist.sh      # DIR/MNIST/raw/t10k-*
# Environment: PYTHON (default .venv/bin/python), BUDGET (trainer.max_time, default 00:00:15:00),
# WORK (default a temp dir; GENLAB_CACHE_DIR=$WORK/cache keeps the MNIST classifier).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BUDGET=${BUDGET:-00:00:15:00}
work=${WORK:-$(mktemp -d)}
root=${MNIST_ROOT:-$work/data}
if [ -z "${MNIST_ROOT:-}" ]; then mkdir -p "$root/MNIST/raw" && cp ../shared/data/mnist/*.gz "$root/MNIST/raw/"; fi
mkdir -p "$work" bench/results
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline GENLAB_CACHE_DIR="$work/cache"
common=(dataset.root="$root" dataset.pool=test dataset.batch_size=64 trainer.max_epochs=1000
        trainer.limit_train_batches=40 trainer.check_val_every_n_epoch=1 trainer.max_time=$BUDGET
        trainer.log_every_n_steps=5 callbacks.fid.num_samples=1000 callbacks.samples.n=64
        logger=csv trainer.enable_progress_bar=false)
run() {  # name, overrides...
    local name=$1; shift
    /usr/bin/time -f "$name: %U s user, %S s sys, %e s wall" -a -o "$work/times.txt" \
        "$PYTHON" -m genlab.train "$@" "${common[@]}" hydra.run.dir="$work/runs/$name" > "$work/$name.log" 2>&1
}
run dcgan experiment=dcgan_mnist model.loss=nonsaturating model.g_width=16 model.d_width=16 model.latent_dim=64 &
run stylegan experiment=stylegan_mnist model.g_width=16 model.d_width=16 model.latent_dim=64 model.w_dim=64 &
wait
for name in dcgan stylegan; do
    cp "$(ls "$work/runs/$name"/samples/*.png | sort | tail -1)" "bench/results/stylegan_mnist_${name}_samples.png"
    cp "$work/runs/$name/metrics.json" "bench/results/stylegan_mnist_${name}_metrics.json"
    cp "$work/runs/$name/csv/metrics.csv" "bench/results/stylegan_mnist_${name}_curves.csv"
done
cp "$work/times.txt" bench/results/stylegan_mnist_times.txt
echo "runs in $work"
