#!/usr/bin/env bash
# Benchmark: the issue-14 families on MNIST (the 10,000 real test images of ../shared/data/mnist,
# cut by the data module into 8,000 train / 1,000 val / 1,000 test), on a CPU with one thread,
# through the normal entry points. Training stops after CPU_MINUTES of the process's CPU time
# (callbacks.cpu_budget, default 20; fair under load, unlike a wall-clock limit), then validates
# once; the best checkpoint is then tested (held-out bits/dim). Overrides given after the experiment
# come last, so they win over the defaults here. Afterwards genlab-sample draws
# N_SAMPLES (0: none) from the best checkpoint, timed apart. Copies metrics.json, the log and the
# grid to bench/results/families_<name>_*.
#   bash bench/families_mnist.sh [NAME=EXPERIMENT[,OVERRIDE...] ...]
#   CPU_MINUTES=8 bash bench/families_mnist.sh row=pixelrnn_mnist,model.variant=row_lstm
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CPU_MINUTES=${CPU_MINUTES:-20}
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
    echo "$name: start $(date -u +%H:%M) UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
    $PY -m genlab.train "experiment=${args[0]}" "dataset.root=$work/data" dataset.pool=test \
        dataset.download=false callbacks.fid=null callbacks.samples=null callbacks.bpd.max_examples=1000 \
        "callbacks.cpu_budget.minutes=$CPU_MINUTES" hardware.cpu_threads=1 trainer.max_epochs=100000 logger=csv trainer.enable_progress_bar=false \
        "${args[@]:1}" "hydra.run.dir=$run" > "$work/$name.log" 2>&1
    end=$(date +%s)
    echo "$name: trained+tested $(date -u +%H:%M) UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
    grep -h "cpu_budget" "$work/$name.log" || true
    cp "$work/$name.log" "bench/results/families_${name}_mnist_train.log"
    cp "$run/metrics.json" "bench/results/families_${name}_mnist_metrics.json"
    best=$(ls "$run"/checkpoints/best-*.ckpt 2>/dev/null | head -1 || true)
    best=${best:-$run/checkpoints/last.ckpt}
    if [ "$N_SAMPLES" -gt 0 ]; then
        $PY -m genlab.sample "ckpt=$best" "n=$N_SAMPLES" "hydra.run.dir=$run/samples" > "$work/$name.sample.log" 2>&1
        cp "$run/samples/samples.png" "bench/results/families_${name}_mnist_samples.png"
    fi
    sampled=$(date +%s)
    printf '%s: train+val+test %d s wall (best checkpoint %s); %d samples %d s\n' "$name" $((end - start)) \
        "$(basename "$best")" "$N_SAMPLES" $((sampled - end))
    $PY - "$run/metrics.json" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
print({k: round(v, 4) for k, v in m["final"].items() if "bpd" in k or k.endswith("loss")})
PYEOF
done
echo "runs in $work"
