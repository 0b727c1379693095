#!/usr/bin/env bash
# Benchmark: the issue-14 families on MNIST (the 10,000 real test images of ../shared/data/mnist,
# cut by the data module into 8,000 train / 1,000 val / 1,000 test), on a CPU with one thread,
# through the normal entry points. Training stops after MAX_TIME (default 20 min, validations
# included); the best checkpoint is then tested (held-out bits/dim). Afterwards genlab-sample
# draws N_SAMPLES from the best checkpoint, timed apart. Copies metrics.json and the grid to
# bench/results/families_<name>_*.
#   bash bench/families_mnist.sh [NAME=EXPERIMENT[,OVERRIDE...] ...]
#   MAX_TIME=00:00:08:00 bash bench/families_mnist.sh row=pixelrnn_mnist,model.variant=row_lstm
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MAX_TIME=${MAX_TIME:-00:00:20:00}
N_SAMPLES=${N_SAMPLES:-16}
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(pixelrnn_row=pixelrnn_mnist,model.variant=row_lstm
                               pixelrnn_diagonal=pixelrnn_mnist,model.variant=diagonal_bilstm hvae=hvae_mnist)
work=${WORK:-$(mktemp -d)}
mkdir -p "$work/data/MNIST/raw" bench/results
cp ../shared/data/mnist/*.gz "$work/data/MNIST/raw/"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline
for spec in "${runs[@]}"; do
    name=${spec%%=*}
    IFS=, read -r -a args <<< "${spec#*=}"
    run="$work/$name"
    start=$(date +%s)
    $PY -m genlab.train "experiment=${args[0]}" "${args[@]:1}" "dataset.root=$work/data" dataset.pool=test \
        dataset.download=false callbacks.fid=null callbacks.samples=null callbacks.bpd.max_examples=1000 \
        "trainer.max_time=\"$MAX_TIME\"" logger=csv trainer.enable_progress_bar=false \
        "hydra.run.dir=$run" > "$work/$name.log" 2>&1
    end=$(date +%s)
    best=$(ls "$run"/checkpoints/best-*.ckpt 2>/dev/null | head -1 || true)
    best=${best:-$run/checkpoints/last.ckpt}
    $PY -m genlab.sample "ckpt=$best" "n=$N_SAMPLES" "hydra.run.dir=$run/samples" > "$work/$name.sample.log" 2>&1
    sampled=$(date +%s)
    cp "$run/metrics.json" "bench/results/families_${name}_mnist_metrics.json"
    cp "$run/samples/samples.png" "bench/results/families_${name}_mnist_samples.png"
    printf '%s: train+val+test %d s wall (best checkpoint %s); %d samples %d s\n' "$name" $((end - start)) \
        "$(basename "$best")" "$N_SAMPLES" $((sampled - end))
    $PY - "$run/metrics.json" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
print({k: round(v, 4) for k, v in m["final"].items() if "bpd" in k or k.endswith("loss")})
PYEOF
done
echo "runs in $work"
