"""Benchmark: kill -9 at many moments, re-run the same command, compare with an uninterrupted run.

    .venv/bin/python bench/kill_resume.py [--repeats 1]

Each trial is independent: a fresh run directory, the test suite's resumable command
(``tests/test_resume.py``: VAE on digits, 5 epochs, a validation every 2 epochs, a step
checkpoint every 7 steps, EMA, the test after fit), one SIGKILL at a moment read from the
process's output and run directory, then the same command again to the end. A trial is exact
when the final weights, ``metrics.json`` (final and best) and the CSV history equal the
uninterrupted run's, and the checkpoint folder holds the same files (one last.ckpt, one
best-*.ckpt, no -vN copy, no temporary file).

Results go to bench/results/kill_resume.json; bench/RESULTS.md has the write-up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's genlab, and the test's helpers

from test_resume import (  # noqa: E402
    Watched, assert_same_result, checkpoint_files, cli, env, metrics_final, saved_step)


def moments(run: Path) -> dict[str, Callable[[Watched], Callable[[], bool]]]:
    def saving_after(step: int) -> Callable[[Watched], Callable[[], bool]]:
        return lambda w: lambda: saved_step(run) >= step and any((run / "checkpoints").glob(".*.tmp"))

    return {
        "before any checkpoint (step ~3)": lambda w: lambda: (run / "config_resolved.yaml").exists()
        and bool(list(run.glob("csv/**/metrics.csv"))),
        "right after the first step checkpoint": lambda w: lambda: saved_step(run) >= 7,
        "during a step checkpoint's save": saving_after(0),
        "mid-epoch 1": lambda w: lambda: saved_step(run) >= 28,
        "during the first validation": lambda w: w.printed("bits/dim (vae) is an upper bound"),
        "at a validation's end, before its checkpoint": lambda w: lambda: saved_step(run) <= 42 and "val/bpd" in metrics_final(run),
        "right after a validation-end checkpoint": lambda w: lambda: saved_step(run) == 46,
        "during the save after a validation-end checkpoint": saving_after(46),
        "in the last epoch": lambda w: lambda: saved_step(run) >= 105,
        "right after the end-of-training checkpoint": lambda w: lambda: saved_step(run) == 115,
        "as the test starts": lambda w: w.printed("testing the best checkpoint"),
        "during the test": lambda w: w.printed("Loaded model weights from the checkpoint"),
        "after the test, before the run is marked completed": lambda w: lambda: "test/bpd" in metrics_final(run),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="genlab-kill-"))
    whole = root / "whole"
    subprocess.run(cli(whole), env=env(), check=True, capture_output=True, timeout=900)
    trials = []
    for repeat in range(args.repeats):
        for what in moments(root / "run"):
            run = root / "run"
            shutil.rmtree(run, ignore_errors=True)
            start = time.time()
            watched = Watched(run)
            moment = moments(run)[what](watched)
            try:
                watched.kill_when(moment, what)
            except AssertionError as err:  # the moment never came: not a trial
                trials.append({"moment": what, "killed": False, "why": str(err)[:300]})
                continue
            killed_at = saved_step(run)
            orphans = [n for n in checkpoint_files(run) if n.endswith(".tmp")]
            rerun = subprocess.run(cli(run), env=env(), capture_output=True, text=True, timeout=900)
            trial = {"moment": what, "killed": True, "last_ckpt_step_at_kill": killed_at, "orphan_tmp": orphans,
                     "rerun_exit": rerun.returncode, "seconds": round(time.time() - start, 1)}
            try:
                assert rerun.returncode == 0, rerun.stderr[-500:]
                assert_same_result(run, whole)
                assert checkpoint_files(run) == checkpoint_files(whole), checkpoint_files(run)
                trial["exact"] = True
            except AssertionError as err:
                trial["exact"], trial["why"] = False, str(err)[:500]
            trials.append(trial)
            print(json.dumps(trial), flush=True)
    done = [t for t in trials if t["killed"]]
    summary = {"exact": sum(t["exact"] for t in done), "total": len(done), "trials": trials}
    out = REPO / "bench" / "results" / "kill_resume.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"kill -9 trials exact / total: {summary['exact']} / {summary['total']} ({out})")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
