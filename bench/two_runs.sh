#!/usr/bin/env bash
# Benchmark: the default digits `genlab-train` alone, then two of it started together (sharing the
# machine's cores; issue 17's floor: each within 2.5x of the run alone). Warm FID cache, W&B offline.
#   bash bench/two_runs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
run() {  # $1: name; prints the wall seconds of one default run
    local start end
    start=$(date +%s.%N)
    GENLAB_LOG_DIR="$work/$1" GENLAB_CACHE_DIR="$work/cache" WANDB_MODE=offline \
        .venv/bin/genlab-train trainer.enable_progress_bar=false > "$work/$1.log" 2>&1
    end=$(date +%s.%N)
    printf '%s %.1f\n' "$1" "$(echo "$end - $start" | bc)"
}
run warmup > /dev/null   # trains the FID classifier into the cache once
alone=$(run alone)
run pair_a > "$work/a.txt" & run pair_b > "$work/b.txt" & wait
echo "$alone"; cat "$work/a.txt" "$work/b.txt"; echo "CPUs: $(nproc)"
rm -rf "$work"
