#!/usr/bin/env bash
# Seconds from command to `genlab-train --help` output and to a bad-config error, next to
# `python -c "import torch, pytorch_lightning"`, 5 rounds interleaved, median (repo root, venv).
#   bash bench/startup.sh
set -u
py=.venv/bin/python
run() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
declare -A t
for i in 1 2 3 4 5; do
  t[help]+="$(run $py -c 'import sys; sys.argv=["genlab-train","--help"]; from genlab.train import main; main()') "
  t[bad]+="$(run $py -c 'import sys; sys.argv=["genlab-train","model=nope"]; from genlab.train import main; main()') "
  t[torch]+="$(run $py -c 'import torch, pytorch_lightning') "
  t[bare]+="$(run $py -c 'pass') "
done
for k in help bad torch bare; do
  echo "$k: $(echo ${t[$k]} | tr ' ' '\n' | sort -n | sed -n 3p) s (median of: ${t[$k]})"
done
uptime
