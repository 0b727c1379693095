#!/usr/bin/env bash
# Benchmark: the default `genlab-train` (no overrides) on this machine, once the venv exists,
# from a cold FID cache (the classifier is trained as on a first run). Copies the last sample
# grid and metrics.json to bench/results/.
#   bash bench/default_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
start=$(date +%s.%N)
GENLAB_LOG_DIR="$work/outputs" GENLAB_CACHE_DIR="$work/cache" WANDB_MODE=offline \
    .venv/bin/genlab-train trainer.enable_progress_bar=false > "$work/log.txt" 2>&1
end=$(date +%s.%N)
run=$(dirname "$(find "$work/outputs" -name metrics.json | head -1)")
mkdir -p bench/results
cp "$(ls "$run"/samples/*.png | sort | tail -1)" bench/results/default_samples.png
cp "$run/metrics.json" bench/results/default_metrics.json
printf 'default genlab-train: %.1f s wall\n' "$(echo "$end - $start" | bc)"
grep -E "FID classifier for|objective" "$work/log.txt" | sed 's/^\[[^]]*\]//'
rm -rf "$work"
