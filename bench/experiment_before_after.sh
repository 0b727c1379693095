#!/usr/bin/env bash
# Benchmark (issue 13): one shipped experiment through the normal entry point on a CPU (one thread),
# then 64 samples from its best checkpoint with genlab-sample. Copies metrics.json and the grid to
# $OUT/<prefix>_${TAG}_{metrics.json,samples.png}. Run it on a copy of older code for "before":
#   git archive <commit> | tar -x -C /tmp/old && REPO=/tmp/old PY="env PYTHONPATH=/tmp/old python" TAG=before OUT=$PWD/bench/results bash bench/experiment_before_after.sh nice
#   TAG=fixed bash bench/experiment_before_after.sh nice     # experiment=flow_nice_digits as shipped (100 epochs)
#   TAG=after bash bench/experiment_before_after.sh vae      # experiment=vae_mnist for MAX_TIME (default 4 min)
# Further arguments are overrides for genlab-train (e.g. trainer.max_epochs=1 for a smoke run).
# vae: the 10,000 real MNIST images of /work/shared/data/mnist (pool=test: 8,000 / 1,000 / 1,000),
# validation every epoch, FID with the classifier extractor (no download), bits/dim (IWAE, k=64)
# on BPD_EXAMPLES (default 200) val images.
set -euo pipefail
kind=${1:?usage: bench/experiment_before_after.sh nice|vae}
cd "${REPO:-$(dirname "$0")/..}"
PY=${PY:-.venv/bin/python}
TAG=${TAG:-run}
out=${OUT:-$PWD/bench/results}
work=${WORK:-$(mktemp -d)}
mkdir -p "$out"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline GENLAB_CACHE_DIR=${GENLAB_CACHE_DIR:-$work/cache}
case $kind in
nice) prefix=flows_nice_digits
      args=(experiment=flow_nice_digits) ;;
vae)  prefix=vae_mnist
      mkdir -p "$work/data/MNIST/raw"
      cp "${MNIST:-/work/shared/data/mnist}"/*.gz "$work/data/MNIST/raw/"
      args=(experiment=vae_mnist "dataset.root=$work/data" dataset.pool=test dataset.download=false
            callbacks.fid.extractor=classifier callbacks.fid.num_samples=1000
            "callbacks.bpd.max_examples=${BPD_EXAMPLES:-200}" trainer.check_val_every_n_epoch=1
            "trainer.max_time=\"${MAX_TIME:-00:00:04:00}\"") ;;
*) echo "unknown: $kind (nice or vae)" >&2; exit 2 ;;
esac
start=$(date +%s)
$PY -m genlab.train "${args[@]}" "${@:2}" logger=csv trainer.enable_progress_bar=false "hydra.run.dir=$work/run" > "$work/train.log" 2>&1
end=$(date +%s)
best=$(ls "$work"/run/checkpoints/best-*.ckpt | head -1)
$PY -m genlab.sample "ckpt=$best" n=64 "hydra.run.dir=$work/sample64" > "$work/sample.log" 2>&1
cp "$work/run/metrics.json" "$out/${prefix}_${TAG}_metrics.json"
cp "$work/sample64/samples.png" "$out/${prefix}_${TAG}_samples.png"
echo "$prefix ($TAG): train+val+test $((end - start)) s wall, best checkpoint $(basename "$best")"
$PY - "$work/run/metrics.json" "$work/sample64/samples.npz" <<'PYEOF'
import json, sys
import numpy as np
m = json.load(open(sys.argv[1]))
print({k: round(v, 4) for k, v in m["final"].items() if k.startswith(("test/", "val/"))})
images = np.load(sys.argv[2])["images"]
print("samples: max pixel", int(images.max()), "mean pixel", round(float(images.mean()), 1))
PYEOF
echo "run directory: $work"
