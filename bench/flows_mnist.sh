#!/usr/bin/env bash
# Benchmark: a flow (realnvp or glow) trained on CPU for at most 20 minutes on the 10,000 real
# MNIST images of ../shared/data/mnist (pool=test: 8,000 train / 1,000 val / 1,000 test), then
# held-out (test) bits/dim of the best checkpoint, samples at temperatures 0.5/0.7/1.0 and a
# latent interpolation grid between test images. Results go to bench/results/flows_<model>_*.
#   bash bench/flows_mnist.sh realnvp      (or glow; THREADS=1 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: bench/flows_mnist.sh realnvp|glow}
python=${PYTHON:-.venv/bin/python}
threads=${THREADS:-1}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work/data/MNIST/raw" bench/results
cp ../shared/data/mnist/*.gz "$work/data/MNIST/raw/"
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads WANDB_MODE=offline
export GENLAB_LOG_DIR="$work/outputs" GENLAB_CACHE_DIR="$work/cache"
start=$(date +%s)
"$python" -m genlab.train experiment=flow_${model}_mnist dataset.root="$work/data" dataset.pool=test \
    trainer.max_time=00:00:20:00 trainer.max_epochs=1000 callbacks.fid=null callbacks.bpd.max_examples=null \
    logger=csv trainer.enable_progress_bar=false hydra.run.dir="$work/run" > "$work/train.log" 2>&1
end=$(date +%s)
echo "train + test: $((end - start)) s wall" | tee "$work/timing.txt"
ckpt=$(ls "$work"/run/checkpoints/best-*.ckpt | head -1)
for t in 0.5 0.7 1.0; do
    "$python" -m genlab.sample ckpt="$ckpt" n=64 +sampler.temperature=$t hydra.run.dir="$work/samples_t$t" \
        > "$work/sample_t$t.log" 2>&1
    cp "$work/samples_t$t/samples.png" "bench/results/flows_${model}_samples_t$t.png"
done
"$python" -m genlab.sample ckpt="$ckpt" interpolate=8 interpolate_steps=10 +dataset.root="$work/data" \
    hydra.run.dir="$work/interp" > "$work/interp.log" 2>&1
cp "$work/interp/interpolation.png" "bench/results/flows_${model}_interpolation.png"
cp "$work/run/metrics.json" "bench/results/flows_${model}_metrics.json"
cp "$work/run/csv/metrics.csv" "bench/results/flows_${model}_curve.csv" 2>/dev/null || true
grep -E "objective|bits/dim|max_time|stopped" "$work/train.log" | sed 's/^\[[^]]*\]//' || true
echo "run directory: $work"
