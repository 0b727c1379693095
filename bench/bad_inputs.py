"""Count what becomes of bad inputs: clear one-line errors, tracebacks, silent accepts, hangs.

    .venv/bin/python bench/bad_inputs.py                 # this checkout
    .venv/bin/python bench/bad_inputs.py --repo /work/main   # another checkout (e.g. before a change)

Runs every case of tests/bad_inputs.py through its command's main() in this one process
(nothing trains: reaching Trainer.fit/test/validate counts as accepted), plus the 16-bit PNG
case, which is judged by the pixel values it yields. Prints one line per case and the totals.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sixteen_bit_pngs(root: Path) -> tuple[str, str]:
    """16-bit grey PNGs: 'converted' when 65535 -> 255 and 32896 -> 128, else 'accepted' (wrong)."""
    import numpy as np
    from PIL import Image

    from genlab.data import ImageFolderDataModule

    folder = root / "png16"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(np.tile([[0, 32896], [65535, 257]], (2, 2)).astype(np.uint16)).save(folder / f"{i}.png")
    data = ImageFolderDataModule(root=str(folder), channels=1, image_size=4, val_fraction=0.2, test_fraction=0.2)
    try:
        pixels = data.split_dataset("train")[0][0][0, :2, :2].tolist()
    except Exception as err:  # noqa: BLE001 - any refusal is judged by its message
        return ("clear" if "16" in str(err) and str(folder) in str(err) else "traceback"), str(err)
    verdict = "converted" if pixels == [[0, 128], [255, 1]] else "accepted"
    return verdict, f"pixels {pixels} (right: [[0, 128], [255, 1]])"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=HERE.parent, help="the genlab checkout to try")
    args = parser.parse_args()
    sys.path[:0] = [str(args.repo.resolve()), str(HERE.parent / "tests")]
    os.environ.setdefault("WANDB_MODE", "offline")
    os.chdir(args.repo)

    from bad_inputs import CASES, make_fixtures, run

    import genlab

    print(f"genlab from {Path(genlab.__file__).parent}")
    counts: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        fixtures = make_fixtures(Path(tmp) / "fixtures")
        gpu = __import__("torch").cuda.is_available()
        for case in CASES:
            if case.only_without_gpu and gpu:
                continue
            outcome = run(case, fixtures, Path(tmp) / "logs" / case.id)
            counts[outcome.kind] += 1
            extra = f" LEFT {outcome.leftovers}" if outcome.leftovers else ""
            print(f"{outcome.kind:9s} {case.command:6s} {case.id}: {outcome.message[:160]}{extra}", flush=True)
        kind, message = sixteen_bit_pngs(Path(tmp))
        counts[kind] += 1
        print(f"{kind:9s} train  image_folder_16_bit_png: {message}")
    total = sum(counts.values())
    print(f"\n{total} bad inputs: " + ", ".join(f"{n} {kind}" for kind, n in counts.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
