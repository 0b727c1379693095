"""Sweeps: multirun and Optuna through the real command line, failed jobs, W&B groups, genlab-report."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from genlab.report import NotASweep, fid_bpd_points, main as report_main, read_sweep

from conftest import REPO, compose_cfg

TINY = ["trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "callbacks.bpd.max_examples=100",
        "model.iw_samples=2", "callbacks.samples.n=4", "trainer.enable_progress_bar=false"]


def sweep_cli(sweep_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m genlab.train -m ...`` into ``sweep_dir``; returns the finished process."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "genlab.train", "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)


def report_rows(sweep_dir: Path, out: Path) -> list[dict]:
    assert report_main([str(sweep_dir), "--out", str(out)]) == 0
    with (out / "report.csv").open() as f:
        return list(csv.DictReader(f))


def wandb_run_groups(job_dir: Path) -> list[str]:
    from wandb_records import read_records

    return [r.run.run_group for f in job_dir.glob("wandb/offline-run-*/run-*.wandb")
            for r in read_records(f) if r.WhichOneof("record_type") == "run"]


# ----- through the command line -----------------------------------------------------------------


@pytest.mark.slow
def test_grid_sweep_runs_every_combination_with_one_wandb_group(tmp_path):
    sweep = tmp_path / "grid-sweep"
    result = sweep_cli(sweep, "model=vae,cvae", "seed=0,1", "logger=wandb", "callbacks.fid.num_samples=100", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["status"] == "completed"

    rows = report_rows(sweep, tmp_path / "report")
    assert len(rows) == 4
    assert {(r["model"], r["seed"]) for r in rows} == {("vae", "0"), ("vae", "1"), ("cvae", "0"), ("cvae", "1")}
    for row, job in zip(rows, jobs):
        best = json.loads((job / "metrics.json").read_text())["best"]
        assert float(row["objective value"]) == pytest.approx(best["val/bpd"])
        assert row["status"] == "completed" and math.isfinite(float(row["test/fid_classifier (final)"]))
    assert "trainer.max_epochs" not in rows[0]  # the same in every job: not a column
    plots = {p.name for p in (tmp_path / "report").glob("*.png")}
    # Curves of what was measured more than once: the training loss (every 10 steps), not val/bpd (one epoch).
    assert plots == {"objective_by_model.png", "objective_by_seed.png", "fid_classifier_vs_bpd.png",
                     "precision_recall_classifier.png", "curve_train_loss.png"}
    # Learning curves from each run's history.json: a validation row per epoch, the best as in metrics.json.
    for job in jobs:
        history = json.loads((job / "history.json").read_text())
        validations = [row for row in history if "val/bpd" in row]
        assert [row["epoch"] for row in validations] == [0]
        assert min(row["val/bpd"] for row in validations) == json.loads((job / "metrics.json").read_text())["best"]["val/bpd"]
        assert [row["step"] for row in history if "train/loss" in row] == [10, 20, 23]  # and the epoch's last
        assert any("test/bpd" in row for row in history)
    with (tmp_path / "report" / "report_seeds.csv").open() as f:
        seeds = {r["model"]: r for r in csv.DictReader(f)}
    for model in ("vae", "cvae"):
        values = [float(r["objective value"]) for r in rows if r["model"] == model]
        mean, sd = (float(v) for v in seeds[model]["objective value"].split(" ± "))
        assert mean == pytest.approx(sum(values) / 2) and sd == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    html = (tmp_path / "report" / "dashboard" / "index.html").read_text()
    assert html.count('<img src="runs/') == 4  # each job's newest sample grid

    # Each job has its own W&B run; all four share the group named after the sweep directory.
    groups = [wandb_run_groups(job) for job in jobs]
    assert groups == [["grid-sweep"]] * 4


@pytest.mark.slow
def test_failed_jobs_are_recorded_and_the_sweep_runs_on(tmp_path):
    sweep = tmp_path / "sweep"
    # Job 0 fails inside fit (its learning-rate schedule of one step is stepped past its end: torch's
    # ValueError, not a genlab error), after its W&B run started; jobs 2 and 3 fail at the start
    # (genlab's ConfigError for an objective nothing measures).
    one_cycle = "model.scheduler={_target_:torch.optim.lr_scheduler.OneCycleLR,_partial_:true,max_lr:0.002}"
    result = sweep_cli(sweep, "objective=val/bpd,val/nope", one_cycle, "+model.scheduler.total_steps=1,1000",
                       "logger=wandb", "callbacks.fid=null", *TINY)
    assert result.returncode == 1  # the sweep ran to the end, and says that jobs failed
    output = result.stdout + result.stderr
    assert "3 of 4 jobs of the sweep failed" in output
    assert "job 0 failed: ValueError: Tried to step 2 times" in output

    done = json.loads((sweep / "1" / "metrics.json").read_text())
    assert done["status"] == "completed" and math.isfinite(done["final"]["test/bpd"])
    failed = {job: json.loads((sweep / job / "FAILED.json").read_text()) for job in ("0", "2", "3")}
    assert failed["0"]["error"] == "ValueError" and "Tried to step 2 times" in failed["0"]["message"]
    assert failed["2"]["error"] == failed["3"]["error"] == "ConfigError"
    assert "objective=val/nope" in failed["2"]["message"]
    assert not (sweep / "1" / "FAILED.json").exists()

    # The failed job's W&B run was closed: the next job logged into a run of its own.
    from wandb_records import history, read_records

    for job in ("0", "1"):
        assert len(list((sweep / job / "wandb").glob("offline-run-*"))) == 1
    def logged(job: str) -> set[str]:
        return {key for row in history(read_records(next((sweep / job).glob("wandb/offline-run-*/run-*.wandb"))))
                for key in row}

    assert "val/bpd" in logged("1") and "val/bpd" not in logged("0")

    rows = {r["job"]: r for r in report_rows(sweep, tmp_path / "report")}
    assert [rows[j]["status"] for j in "0123"] == ["failed", "completed", "failed", "failed"]
    assert rows["0"]["error"].startswith("ValueError: Tried to step 2 times")
    assert rows["2"]["error"].startswith("ConfigError: objective=val/nope is not measured")
    assert rows["1"]["error"] == "" and float(rows["1"]["objective value"]) == done["best"]["val/bpd"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "4 jobs: 1 completed, 3 failed" in markdown and "## Failed jobs" in markdown


@pytest.mark.slow
def test_optuna_sweep_returns_the_best_objective_and_records_every_trial(tmp_path):
    sweep = tmp_path / "optuna"
    result = sweep_cli(sweep, "hparams_search=vae_digits_optuna", "hydra.sweeper.n_trials=3", "logger=none",
                       "callbacks.fid=null", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Directions: ['minimize']" in result.stdout + result.stderr
    objectives = {}
    for job in ("0", "1", "2"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        objectives[job] = metrics["best"]["val/bpd"]
        sampled = [o for o in OmegaConf.load(sweep / job / ".hydra" / "overrides.yaml")
                   if o.startswith(("model.latent_dim=", "model.optimizer.lr=", "model.beta="))]
        assert len(sampled) == 3
    assert len(set(objectives.values())) == 3  # three different trials
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(objectives.values()))
    best_job = min(objectives, key=objectives.get)

    rows = report_rows(sweep, tmp_path / "report")
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert {"model.latent_dim", "model.optimizer.lr", "model.beta"} <= set(rows[0])
    assert f"(job {best_job})" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow
def test_report_command_refuses_a_folder_without_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "genlab.report", str(tmp_path / "empty")], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("genlab-report: error:") and "is not a sweep or run directory" in result.stderr
    assert not list(tmp_path.rglob("report.*")) and not list(tmp_path.rglob("dashboard"))


# ----- the report on synthetic sweep directories -----------------------------------------------


def make_job(sweep: Path, name: str, overrides: list[str], model: str = "vae", metrics: dict | None = None,
             failed: dict | None = None, objective: str = "val/bpd") -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"objective": objective, "objective_mode": "min", "paths": {"output_dir": "${hydra:runtime.output_dir}"}}))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"model": model}}}}))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if failed is not None:
        (job / "FAILED.json").write_text(json.dumps(failed))
    return job


def completed(val_bpd: list[float], fid: float | None = None, **extra) -> dict:
    final = {"val/bpd": val_bpd[-1], "test/bpd": val_bpd[-1] + 0.1, **extra}
    if fid is not None:
        final["test/fid_classifier"] = fid
    return {"status": "completed", "final": final, "best": {**final, "val/bpd": min(val_bpd)}}


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    make_job(root, "0", ["model=vae", "seed=0", "trainer.max_epochs=2"], "vae", completed([3.0, 2.5], fid=40.0))
    make_job(root, "1", ["model=gan", "seed=0", "trainer.max_epochs=2"], "gan",
             {"status": "completed", "final": {"test/fid_classifier": 20.0}, "best": {"test/fid_classifier": 20.0},
              "not_applicable": {"bpd": "the gan family has no likelihood"}})
    make_job(root, "2", ["model=vae", "seed=1", "trainer.max_epochs=2"], "vae",
             {"status": "failed", "final": {"train/loss": 9.0}, "best": {"train/loss": 9.0}},
             failed={"status": "failed", "error": "TrainingDiverged", "message": "loss is nan at step 7 | recon=nan"})
    make_job(root, "10", ["model=cvae", "seed=1", "trainer.max_epochs=2"], "cvae", completed([2.6, 2.8], fid=30.0))
    return root


def test_report_tabulates_every_job_with_the_overrides_that_differ(sweep, tmp_path):
    rows = report_rows(sweep, tmp_path / "out")
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"]  # job order, not string order
    assert list(rows[0])[:5] == ["job", "model", "seed", "status", "objective value"]
    assert [r["status"] for r in rows] == ["completed", "completed", "failed", "completed"]
    assert float(rows[0]["objective value"]) == 2.5  # the best val/bpd, what genlab-train returned
    assert float(rows[3]["val/bpd (final)"]) == 2.8 and float(rows[3]["val/bpd (best)"]) == 2.6
    assert rows[1]["test/bpd (final)"] == "n/a" and rows[1]["objective value"] == ""
    assert rows[2]["error"] == "TrainingDiverged: loss is nan at step 7 | recon=nan"
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "4 jobs: 3 completed, 1 failed" in markdown and "Best job: 0, val/bpd = 2.5" in markdown
    assert "- 2: TrainingDiverged: loss is nan at step 7 \\| recon=nan" in markdown  # escaped for the table syntax
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {
        "objective_by_model.png", "objective_by_seed.png", "fid_classifier_vs_bpd.png"}


def test_fid_against_bpd_takes_the_families_that_have_both(sweep):
    points = fid_bpd_points(read_sweep(sweep))
    assert points == {"classifier": [("vae", pytest.approx(2.6), 40.0), ("cvae", pytest.approx(2.9), 30.0)]}  # no GAN point: it has no bits/dim


def test_report_traces_a_stage_outside_the_report_and_says_a_damaged_record(tmp_path):
    """(The trace to a stage-1 job of the same report: tests/test_vqvae.py, on real runs.)"""
    root = tmp_path / "sweep"
    ckpt = tmp_path / "elsewhere" / "checkpoints" / "last.ckpt"
    # the checkpoint's key as genlab wrote it until 2026-12-06 ("vqvae_ckpt", now "ckpt") is still read
    record = {"vqvae_ckpt": str(ckpt), "run_dir": str(ckpt.parent.parent), "sha256": "ab" * 32}
    make_job(root, "0", ["seed=0"], metrics={**completed([3.0]), "stands_on": {"stage1": record}})
    make_job(root, "1", ["seed=1"], metrics={**completed([3.1]), "stands_on": ["not", "a", "record"]})
    rows = report_rows(root, tmp_path / "out")
    assert rows[0]["stands on"] == f"stage1: run {ckpt.parent.parent}, last.ckpt sha256 {'ab' * 6} (the file is gone)"
    assert rows[1]["stands on"] == "" and "stands_on is not a record per earlier stage" in rows[1]["error"]


def test_report_names_a_damaged_stands_on_field_and_never_waits_on_a_file_that_is_not_a_checkpoint(tmp_path):
    """metrics.json is data: a NUL byte in a path or a malformed hash is said, not a crash; a FIFO
    (opening or reading one would wait forever) or a /proc file is never read to its end."""
    import hashlib

    import genlab.report as report

    root = tmp_path / "sweep"
    fifo = tmp_path / "fifo.ckpt"
    os.mkfifo(fifo)
    records = {
        "0": {"ckpt": str(tmp_path / "x.ckpt"), "run_dir": "/a\0b", "sha256": "not hex"},
        "1": {"ckpt": str(fifo), "run_dir": str(tmp_path), "sha256": "ab" * 32},
        "2": {"ckpt": "/proc/self/status", "run_dir": "/proc/self", "sha256": "ab" * 32},  # says size 0
        "3": {"ckpt": 7, "run_dir": ["x"]},
    }
    for name, record in records.items():
        make_job(root, name, [f"seed={name}"], metrics={**completed([3.0]), "stands_on": {"stage1": record}})
    rows = report_rows(root, tmp_path / "out")
    assert rows[0]["stands on"] == "stage1: run (not recorded), x.ckpt"
    assert "stands_on.stage1.run_dir is not a path: ignored" in rows[0]["error"]
    assert "stands_on.stage1.sha256 is not a SHA-256 (64 hex digits): ignored" in rows[0]["error"]
    assert rows[1]["stands on"].endswith("(the file there cannot be read: IsADirectoryError: "
                                         f"{fifo} is not a regular file)")
    assert rows[2]["stands on"].endswith("(the file there has changed since: not the one this run stands on)")
    assert report.checkpoint_sha256(Path("/proc/self/status")) == hashlib.sha256(b"").hexdigest()  # none of it read
    assert rows[3]["stands on"] == "stage1: run (not recorded)"
    assert "stands_on.stage1.ckpt is not a path" in rows[3]["error"] and "stands_on.stage1.run_dir" in rows[3]["error"]


def test_report_follows_a_copied_output_tree_and_hashes_a_shared_checkpoint_once(tmp_path):
    """Reports are often made on a copy (cluster -> laptop): the stage-1 run recorded at the old
    absolute path is found where the tree now is; five jobs on one checkpoint read it once."""
    import shutil

    import genlab.report as report
    from genlab.utils import file_sha256

    old = tmp_path / "cluster" / "sweep"
    vq = make_job(old, "vq", ["seed=0"], metrics=completed([3.0]))
    ckpt = vq / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(os.urandom(3000))
    record = {"ckpt": str(ckpt), "run_dir": str(vq), "sha256": file_sha256(ckpt)}
    for i in range(5):
        make_job(old, f"prior{i}", [f"seed={i + 1}"], metrics={**completed([2.0]), "stands_on": {"stage1": record}})
    new = tmp_path / "laptop" / "sweep"
    shutil.copytree(old, new)
    shutil.rmtree(tmp_path / "cluster")
    report._HASHES.clear()
    rows = report_rows(new, tmp_path / "out")
    expected = f"stage1: job vq, last.ckpt sha256 {record['sha256'][:12]}"
    assert [row["stands on"] for row in rows if row["job"].startswith("prior")] == [expected] * 5
    assert [key[0] for key in report._HASHES] == [str(new / "vq" / "checkpoints" / "last.ckpt")]
    # the copy of the checkpoint is the one checked: changed there, it is said
    (new / "vq" / "checkpoints" / "last.ckpt").write_bytes(b"other weights")
    assert report_rows(new, tmp_path / "out2")[1]["stands on"].endswith("(the file there has changed since: not the one this run stands on)")
    # a run directory that is not in the copy is not guessed from a shorter tail of its path
    shutil.rmtree(new / "vq")
    assert report_rows(new, tmp_path / "out3")[0]["stands on"] == f"stage1: run {vq}, last.ckpt sha256 {record['sha256'][:12]} (the file is gone)"


def test_report_on_a_partial_sweep(tmp_path, capsys):
    root = tmp_path / "sweep"
    (root).mkdir()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    assert report_main([str(root)]) == 0  # started, no job yet
    assert "0 jobs" in (root / "report.md").read_text()
    make_job(root, "0", ["seed=0"], metrics=completed([3.0]))
    make_job(root, "1", ["seed=1"], metrics={"status": "running", "final": {"train/loss": 4.0}, "best": {"train/loss": 4.0}})
    make_job(root, "2", ["seed=2"])  # started, nothing measured yet
    assert report_main([str(root)]) == 0
    assert "3 jobs: 1 completed, 2 running" in capsys.readouterr().out
    with (root / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["seed"], r["status"]) for r in rows] == [("0", "completed"), ("1", "running"), ("2", "running")]


def test_report_on_a_sweep_with_half_written_jobs(tmp_path, capsys):
    """Files cut short (a copy, a full disk, a job killed as it started): one clear line per job,
    the rest of the report as usual, no traceback."""
    root = tmp_path / "sweep"
    make_job(root, "0", ["seed=0"], metrics=completed([3.0]))
    (make_job(root, "1", ["seed=1"]) / "metrics.json").write_text('{"status": "runn')  # cut short
    (make_job(root, "2", ["seed=2"]) / ".hydra" / "overrides.yaml").write_text("- seed=2\n- model: [")
    (make_job(root, "3", ["seed=3"]) / "metrics.json").write_text('["not", "an", "object"]')
    (make_job(root, "4", ["seed=4"], metrics={"status": "completed", "final": 3.0}))
    (make_job(root, "5", ["seed=5"], metrics=completed([2.0])) / "FAILED.json").write_text("")
    (root / "6" / ".hydra").mkdir(parents=True)  # killed before Hydra wrote its files
    assert report_main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "7 jobs: 1 completed, 1 failed, 2 running, 3 unreadable" in out
    lines = [line.strip() for line in out.splitlines()[1:]]
    assert lines[0].startswith("unreadable: 1: metrics.json cannot be read (JSONDecodeError: Unterminated string")
    assert lines[0].endswith("the job was cut short or its files were damaged")
    assert lines[1].startswith("running: 2: overrides.yaml cannot be read")
    assert lines[2].startswith("unreadable: 3: metrics.json does not hold a JSON object")
    assert lines[3].startswith("unreadable: 4: metrics.json does not hold genlab's status, final and best values")
    assert lines[4].startswith("failed: 5: FAILED.json cannot be read")
    assert len(lines) == 5
    with (root / "report.csv").open() as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert float(rows["0"]["objective value"]) == 3.0 and rows["0"]["error"] == ""
    assert rows["6"]["status"] == "running" and rows["6"]["error"] == ""
    assert "## Unreadable jobs" in (root / "report.md").read_text()


def test_report_includes_the_optuna_result(tmp_path):
    root = tmp_path / "sweep"
    make_job(root, "0", ["model.optimizer.lr=0.001", "hparams_search=x"], metrics=completed([3.0]))
    make_job(root, "1", ["model.optimizer.lr=0.0031622776601683794", "hparams_search=x"], metrics=completed([2.0]))
    OmegaConf.save({"name": "optuna", "best_params": {"model.optimizer.lr": 0.0031622776601683794}, "best_value": 2.0},
                   root / "optimization_results.yaml")
    assert report_main([str(root)]) == 0
    markdown = (root / "report.md").read_text()
    assert "Optuna best value: 2 with model.optimizer.lr=0.0031622776601683794 (job 1)." in markdown
    assert "| 1 | 0.003162 | completed | 2 |" in markdown


def test_report_refuses_what_is_not_a_sweep(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotASweep, match="no job directories .* and no multirun.yaml"):
        read_sweep(tmp_path / "empty")
    with pytest.raises(NotASweep, match="is not a directory"):
        read_sweep(tmp_path / "missing")
    (tmp_path / "sweep" / "3" / ".hydra").mkdir(parents=True)
    assert report_main([str(tmp_path / "sweep"), str(tmp_path / "empty")]) == 2  # several, and no --out
    err = capsys.readouterr().err
    assert err.startswith("genlab-report: error: 2 directories given and no --out: pass --out DIR")
    assert report_main([str(tmp_path / "sweep"), str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'empty'} is not a sweep or run directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


# ----- configs and the sweeper contract -----------------------------------------------------------


@pytest.mark.parametrize("mode, direction", [("min", "minimize"), ("max", "maximize")])
def test_optuna_direction_follows_objective_mode(mode, direction):
    from hydra import compose, initialize_config_dir

    from genlab.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=vae_digits_optuna", f"objective_mode={mode}",
                                          "objective=val/fid_classifier"], return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == direction
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.sampler.seed == cfg.seed
    assert cfg.objective == "val/fid_classifier"  # the command line wins over the search config


def test_a_bad_objective_mode_is_named_when_the_sweeper_is_built():
    from hydra import compose, initialize_config_dir
    from omegaconf.errors import InterpolationResolutionError

    from genlab.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=vae_digits_optuna", "objective_mode=lowest"],
                      return_hydra_config=True)
    with pytest.raises(InterpolationResolutionError, match="objective_mode='lowest': use min or max"):
        cfg.hydra.sweeper.direction


def test_wandb_group_is_the_sweep_directory_in_a_multirun_job_only(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from genlab.config import CONF_DIR

    def group(*overrides: str):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"hydra.sweep.dir={tmp_path / 'my-sweep'}", *overrides],
                          return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        try:
            return cfg.logger.wandb.group
        finally:
            HydraConfig.instance().cfg = None

    assert group("hydra.mode=MULTIRUN") == "my-sweep"
    assert group("hydra.mode=RUN") is None
    assert group("hydra.mode=MULTIRUN", "logger.wandb.group=mine") == "mine"  # the user's choice wins
    assert compose_cfg().logger.wandb.group is None  # no Hydra job at all


def test_optuna_sweeper_records_a_failed_job_and_goes_on(tmp_path):
    """Why a failed job returns None: Optuna's sweeper marks that trial FAIL and the study goes on;
    a NaN would crash the study (optuna 2.10 refuses to tell a NaN trial as failed)."""
    import optuna
    from hydra.core.utils import JobReturn, JobStatus
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    def study(values: list) -> optuna.Study:
        returns = iter(values)

        class Launcher:  # stands in for Hydra's launcher: one job per trial, returning the next value
            def launch(self, overrides, initial_job_idx):
                return [JobReturn(status=JobStatus.COMPLETED, _return_value=next(returns)) for _ in overrides]

        sweeper = OptunaSweeperImpl(optuna.samplers.TPESampler(seed=0), "minimize", None, "s", len(values), 1, 1.0,
                                    None, None, OmegaConf.create({"x": "interval(0, 1)"}))
        sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
        sweeper.launcher, sweeper.hydra_context, sweeper.job_idx = Launcher(), object(), 0
        sweeper.sweep([])
        return yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())

    assert study([3.0, None, 2.0])["best_value"] == 2.0
    with pytest.raises(ValueError, match="Values cannot be specified when state is TrialState.PRUNED or TrialState.FAIL"):
        study([3.0, float("nan"), 2.0])


def test_a_sweep_that_ran_to_its_end_drops_the_record_of_an_earlier_interruption(tmp_path):
    from genlab.report import INTERRUPTED, SweepSummary

    root = tmp_path / "sweep"
    make_job(root, "0", ["seed=0"], metrics=completed([3.0]))
    make_job(root, "1", ["seed=1"], metrics=completed([2.0]))  # the job the signal kept from running, run since
    (root / INTERRUPTED).write_text(json.dumps({"status": "interrupted", "signal": "SIGTERM", "interrupted_job": "0",
                                                "not_run": [{"job": "1", "overrides": ["seed=1"]}, {"job": "2", "overrides": ["seed=2"]}]}))
    assert [(job.name, job.status) for job in read_sweep(root)] == [("0", "completed"), ("1", "completed"), ("2", "not run")]
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(root)}}}))
    assert not (root / INTERRUPTED).exists()
    assert [job.name for job in read_sweep(root)] == ["0", "1"]
