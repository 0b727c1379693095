#!/usr/bin/env bash
# Benchmark: each autoregressive model on MNIST (the 10,000 real test images of ../shared/data/mnist,
# cut into 8,000 train / 1,000 val / 1,000 test), on a CPU with one thread, through the normal
# entry point. Training stops after MAX_TIME (default 14 min, validations included); the best
# checkpoint is then tested (bits/dim on the held-out val and test parts). No grids during
# training (sampling 64 images at 28x28 is minutes for the conv models on this CPU): afterwards
# genlab-sample draws N_SAMPLES (default 64) from the best checkpoint, timed apart. Copies each
# run's metrics.json and the grid to bench/results/.
#   bash bench/autoregressive_mnist.sh [experiment ...]     (default: all three)
#   PY=python MAX_TIME=00:00:08:00 N_SAMPLES=16 bash bench/autoregressive_mnist.sh autoregressive_mnist
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MAX_TIME=${MAX_TIME:-00:00:14:00}
N_SAMPLES=${N_SAMPLES:-64}
experiments=("$@")
[ ${#experiments[@]} -gt 0 ] || experiments=(autoregressive_pixelcnn_mnist autoregressive_mnist autoregressive_transformer_mnist)
work=${WORK:-$(mktemp -d)}
mkdir -p "$work/data/MNIST/raw" bench/results
cp ../shared/data/mnist/*.gz "$work/data/MNIST/raw/"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline
for exp in "${experiments[@]}"; do
    run="$work/$exp"
    start=$(date +%s)
    $PY -m genlab.train "experiment=$exp" "dataset.root=$work/data" dataset.pool=test dataset.download=false \
        callbacks.fid=null callbacks.samples=null "trainer.max_time=\"$MAX_TIME\"" logger=csv trainer.enable_progress_bar=false \
        "hydra.run.dir=$run" > "$work/$exp.log" 2>&1
    end=$(date +%s)
    best=$(ls "$run"/checkpoints/best-*.ckpt | head -1)
    $PY -m genlab.sample "ckpt=$best" "n=$N_SAMPLES" "hydra.run.dir=$run/sample64" > "$work/$exp.sample.log" 2>&1
    sampled=$(date +%s)
    cp "$run/metrics.json" "bench/results/${exp}_metrics.json"
    cp "$run/sample64/samples.png" "bench/results/${exp}_samples.png"
    printf '%s: train+val+test %d s wall (best checkpoint %s); %d samples %d s\n' "$exp" $((end - start)) \
        "$(basename "$best")" "$N_SAMPLES" $((sampled - end))
    grep -E "likelihood is exact|bits/dim \(|objective" "$work/$exp.log" | sed 's/^\[[^]]*\]//'
    $PY - "$run/metrics.json" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
print({k: round(v, 4) for k, v in m["final"].items() if k.endswith("bpd") or k.endswith("loss")})
PYEOF
done
echo "runs in $work"
