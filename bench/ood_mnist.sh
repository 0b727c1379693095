#!/usr/bin/env bash
# Benchmark: likelihood-based OOD detection (genlab-eval ood=..., genlab/ood.py) for a VAE trained on
# MNIST, against the offline demo sets: the 8x8 digits upscaled to 28x28, CIFAR-10 in grey (the
# JPEG test images, converted and resized by the image_folder datamodule), inverted MNIST and
# uniform noise. The background model of the likelihood ratio is a VAE with a 2-D latent and a
# quarter of the width trained the same way (a stand-in: Ren et al. train the background on
# randomly perturbed inputs, which genlab has no option for). Results: bench/ood.md, metrics in
# bench/results/ood_mnist_metrics.json, histograms bench/results/ood_mnist_*.png.
#   bash bench/ood_mnist.sh
# Environment: PYTHON (default .venv/bin/python), THREADS (default 1), EPOCHS (default 5), WORK
# (default a temp dir), MNIST (default ../shared/data/mnist), CIFAR (default ../shared/data/cifar10-jpg).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${THREADS:-1} WANDB_MODE=offline
EPOCHS=${EPOCHS:-5}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work/data/MNIST/raw" "$work/cifar"
cp "${MNIST:-../shared/data/mnist}"/*.gz "$work/data/MNIST/raw/"
[ -d "$work/cifar/test" ] || tar xzf "${CIFAR:-../shared/data/cifar10-jpg}/test.tar.gz" -C "$work/cifar"
common=(experiment=vae_mnist "dataset.root=$work/data" dataset.pool=test "trainer.max_epochs=$EPOCHS"
        "trainer.check_val_every_n_epoch=$EPOCHS" callbacks.fid=null logger=none test=false
        callbacks.bpd.max_examples=1000 hardware=cpu trainer.enable_progress_bar=false)
time $PYTHON -m genlab.train "${common[@]}" "hydra.run.dir=$work/model"
time $PYTHON -m genlab.train "${common[@]}" model.latent_dim=2 model.channels=[8,16] "hydra.run.dir=$work/background"
# bits/dim by the importance-weighted bound with 16 samples (the run's own 64 for the background)
time $PYTHON -m genlab.evaluate "ckpt=$(ls "$work"/model/checkpoints/best-*.ckpt)" \
    "ood=[digits,image_folder:$work/cifar/test,inverted,noise]" \
    "ood_background=$(ls "$work"/background/checkpoints/best-*.ckpt)" +model.iw_samples=16 \
    hardware=cpu trainer.enable_progress_bar=false "hydra.run.dir=$work/ood"
cp "$work/ood/metrics.json" bench/results/ood_mnist_metrics.json
for score in bpd typicality llr; do cp "$work/ood/ood_$score.png" "bench/results/ood_mnist_$score.png"; done
echo "results in $work/ood"
