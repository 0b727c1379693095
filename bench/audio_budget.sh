#!/bin/bash
# The 20-CPU-minute runs of bench/audio.md: one family through genlab-train, stopped by
# callbacks.cpu_budget, validated and tested once at the end (FID and class accuracy on 300 clips).
#   bash bench/audio_budget.sh wavenet|waveglow [extra overrides]
set -u
family=$1; shift
cd "$(dirname "$0")/.."
out=bench/out/${family}20
mkdir -p bench/out
uptime > "$out.load"
(while sleep 300; do uptime >> "$out.load"; done) &
watcher=$!
OMP_NUM_THREADS=1 .venv/bin/python -m genlab.train experiment=${family}_fsdd \
  dataset.root=../shared/data/fsdd dataset.download=false hardware=cpu hardware.cpu_threads=1 logger=csv \
  callbacks.cpu_budget.minutes=20 trainer.max_epochs=100000 trainer.limit_train_batches=1.0 \
  trainer.check_val_every_n_epoch=100000 \
  trainer.enable_progress_bar=false hydra.run.dir=$out "$@" > "$out.log" 2>&1
echo "exit $?" >> "$out.log"
kill $watcher
uptime >> "$out.load"
