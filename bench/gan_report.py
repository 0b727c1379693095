"""Curves and a summary table from the runs of bench/gan_mnist.sh (reads bench/results/gan_mnist_*).

    python bench/gan_report.py   # writes bench/results/gan_mnist_curves.png and gan_mnist_summary.json

Per loss: FID after every epoch, the final test FID, and how steady the game was over the last
half of training (mean and standard deviation of D(x), D(G(z)) and each loss, logged every 5 steps).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LOSSES = ("nonsaturating", "hinge", "wgan_gp")
CURVES = ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake")


def read_rows(loss: str) -> list[dict[str, float]]:
    with open(RESULTS / f"gan_mnist_{loss}_curves.csv") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    points = [(row["step"], row[key]) for row in rows if key in row]
    return [p[0] for p in points], [p[1] for p in points]


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def main() -> None:
    runs = {loss: read_rows(loss) for loss in LOSSES if (RESULTS / f"gan_mnist_{loss}_curves.csv").is_file()}
    fig, axes = plt.subplots(1, len(CURVES) + 1, figsize=(4 * (len(CURVES) + 1), 3.4))
    summary = {}
    for loss, rows in runs.items():
        metrics = json.loads((RESULTS / f"gan_mnist_{loss}_metrics.json").read_text())
        _, fids = series(rows, "val/fid_classifier")
        entry = {"val_fid_per_epoch": [round(v, 2) for v in fids],
                 "test_fid": round(metrics["final"].get("test/fid_classifier", float("nan")), 2),
                 "status": metrics["status"]}
        for ax, key in zip(axes, CURVES):
            steps, values = series(rows, key)
            ax.plot(steps, values, label=loss, lw=0.8)
            ax.set_title(key)
            late = values[len(values) // 2:]
            m, s = mean_std(late)
            entry[f"{key} (2nd half) mean, std"] = [round(m, 3), round(s, 3)]
        epochs, _ = series(rows, "val/fid_classifier")
        axes[-1].plot(range(1, len(fids) + 1), fids, marker="o", label=loss)
        summary[loss] = entry
    axes[-1].set_title("val/fid_classifier per epoch")
    axes[-1].set_xlabel("epoch")
    for ax in axes[:-1]:
        ax.set_xlabel("training batch (= generator step)")
    axes[-1].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "gan_mnist_curves.png", dpi=90)
    (RESULTS / "gan_mnist_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
