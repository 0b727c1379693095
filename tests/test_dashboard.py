"""genlab-report's HTML dashboard, opened from disk in a real headless Chromium, and its plots."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from genlab.modalities.image import ImageModality
from genlab.report import main as report_main, read_runs, seed_table

from test_sweeps import completed, make_job

CHROMIUM = shutil.which("chromium")


def add_run_files(job: Path, history: list[dict], grid_seed: int | None = None) -> None:
    """What a genlab run writes besides its metrics: history.json and a sample grid."""
    (job / "history.json").write_text(json.dumps(history))
    if grid_seed is not None:
        (job / "samples").mkdir()
        images = torch.randint(0, 256, (16, 1, 8, 8), generator=torch.Generator().manual_seed(grid_seed)).byte()
        modality = ImageModality([1, 8, 8])
        modality.save(images * 0, job / "samples" / "epoch000-step000010")  # an older, black grid
        modality.save(images, job / "samples" / "epoch001-step000020")
        os.utime(job / "samples" / "epoch000-step000010.png", (1, 1))  # older by its time too


def val_history(values: list[float]) -> list[dict]:
    rows = []
    for epoch, value in enumerate(values):
        rows += [{"step": 10 * (epoch + 1), "epoch": epoch, "train/loss": value + 0.3},
                 {"step": 10 * (epoch + 1), "epoch": epoch, "val/bpd": value}]
    return rows


#: the best val/bpd of the grid sweep's completed runs: (model, seed) -> value
OBJECTIVES = {("vae", "0"): 2.5, ("vae", "1"): 3.1, ("pixelcnn", "0"): 1.9, ("pixelcnn", "1"): 2.0}


@pytest.fixture
def sweeps(tmp_path) -> tuple[Path, Path]:
    """A grid sweep of two families x two seeds plus one failed job, and an Optuna study with a
    job still running, laid out the way genlab writes them."""
    grid = tmp_path / "grid"
    for num, ((model, seed), best) in enumerate(OBJECTIVES.items()):
        job = make_job(grid, str(num), [f"model={model}", f"seed={seed}"], model,
                       completed([best + 0.4, best], fid=10.0 * best))
        add_run_files(job, val_history([best + 0.4, best]), grid_seed=num)
    failed = make_job(grid, "4", ["model=vae", "seed=2"], "vae", {"status": "failed", "final": {}, "best": {}},
                      failed={"status": "failed", "error": "TrainingDiverged", "message": "loss is nan at step 7"})
    add_run_files(failed, [{"step": 5, "epoch": 0, "train/loss": 9.0}])
    with wave.open(str(grid / "0" / "samples" / "sound #0 of step 20.wav"), "wb") as sound:  # an odd name
        sound.setnchannels(1), sound.setsampwidth(2), sound.setframerate(8000)
        sound.writeframes((np.sin(np.arange(4000) * 0.3) * 8000).astype("<i2").tobytes())  # half a second

    study = tmp_path / "study"
    for num, (lr, best) in enumerate([("0.001", 2.7), ("0.0031622776601683794", 2.2)]):
        job = make_job(study, str(num), [f"model.optimizer.lr={lr}", "hparams_search=vae_digits_optuna"],
                       metrics=completed([best + 0.2, best]))
        add_run_files(job, val_history([best + 0.2, best]), grid_seed=10 + num)
    make_job(study, "2", ["model.optimizer.lr=0.01", "hparams_search=vae_digits_optuna"])  # just started
    (study / "optimization_results.yaml").write_text(yaml.safe_dump(
        {"name": "optuna", "best_params": {"model.optimizer.lr": 0.0031622776601683794}, "best_value": 2.2}))
    return grid, study


def test_seed_aggregate_is_the_mean_and_sample_sd_over_seeds(sweeps):
    header, rows = seed_table(read_runs(sweeps[:1]), ["val/bpd"])
    assert header == ["model", "seeds", "objective value", "val/bpd"]
    by_model = {row[0]: row for row in rows}
    assert set(by_model) == {"vae", "pixelcnn"}  # the failed vae seed 2 is not averaged in
    mean, sd, n = by_model["vae"][2]
    assert by_model["vae"][1] == "0,1" and n == 2
    assert mean == pytest.approx((2.5 + 3.1) / 2)
    assert sd == pytest.approx(math.sqrt(((2.5 - 2.8) ** 2 + (3.1 - 2.8) ** 2) / (2 - 1)))


def test_a_single_run_gets_a_report_and_a_dashboard(sweeps, capsys):
    run = sweeps[0] / "1"
    assert report_main([str(run)]) == 0
    assert "1 job: 1 completed" in capsys.readouterr().out
    with (run / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], float(r["objective value"])) for r in rows] == [("1", 3.1)]
    assert {p.name for p in run.glob("*.png")} == {"curve_val_bpd.png", "curve_train_loss.png",
                                                   "fid_classifier_vs_bpd.png"}
    html = (run / "dashboard" / "index.html").read_text()
    assert "Run 1" in html and "runs/000_1/00_epoch001-step000020.png" in html  # the newest grid


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="no chromium on PATH: `make browser` (apt-get install chromium) installs it")
def test_dashboard_in_headless_chromium(sweeps, tmp_path):
    from playwright.sync_api import sync_playwright

    out = tmp_path / "report"
    assert report_main([*map(str, sweeps), "--out", str(out)]) == 0
    shutil.rmtree(sweeps[0].parent / "grid")  # the dashboard folder holds everything it shows
    with (out / "report_seeds.csv").open() as f:
        seeds = {r["model"]: r for r in csv.DictReader(f)}
    assert float(seeds["pixelcnn"]["objective value"].split(" ± ")[0]) == pytest.approx(1.95)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems = []
        page.on("console", lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None)
        page.on("pageerror", lambda err: problems.append(str(err)))
        page.on("requestfailed", lambda request: problems.append(f"{request.url}: {request.failure}")
                if request.resource_type != "media" else None)  # a player stops its fetch once it has enough
        page.goto((out / "dashboard" / "index.html").as_uri(), wait_until="load")

        # The table: every job of both sweeps, named by sweep, with its status.
        cells = page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))")
        columns = page.eval_on_selector_all("#runs th", "ths => ths.map(th => th.innerText.trim())")
        job, status, objective = (columns.index(name) for name in ("job", "status", "objective value"))
        assert [(row[job], row[status]) for row in cells] == [
            ("grid/0", "completed"), ("grid/1", "completed"), ("grid/2", "completed"), ("grid/3", "completed"),
            ("grid/4", "failed"), ("study/0", "completed"), ("study/1", "completed"), ("study/2", "running")]
        # Sorting by the objective puts the best first and the runs that measured none last.
        page.click(f"#runs th:nth-child({objective + 1})")
        order = page.eval_on_selector_all(f"#runs tbody td:nth-child({job + 1})", "tds => tds.map(td => td.innerText)")
        assert order[:6] == ["grid/2", "grid/3", "study/1", "grid/0", "study/0", "grid/1"]

        # The seed aggregate, as computed by hand: vae seeds 0 and 1 scored 2.5 and 3.1.
        mean = (2.5 + 3.1) / 2
        sd = math.sqrt(((2.5 - mean) ** 2 + (3.1 - mean) ** 2) / (2 - 1))
        seed_columns = page.eval_on_selector_all("#seeds th", "ths => ths.map(th => th.innerText.trim())")
        assert seed_columns == ["model", "seeds", "objective value", "val/bpd", "test/bpd", "test/fid_classifier"]
        vae = page.locator("#seeds tbody tr", has_text="vae").locator("td")
        assert vae.nth(2).inner_text() == f"{mean:.4g} ± {sd:.2g}" == "2.8 ± 0.42"

        # Every image loads; a learning curve and a sample grid really show pixels.
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert images and all(width > 0 for _, width in images), images
        sources = [src for src, _ in images]
        assert any("curve_val_bpd" in src for src in sources) and any("objective_by_seed" in src for src in sources)
        assert sum(src.startswith("runs/") for src in sources) == 6  # each run with samples, its newest grid
        curve = pixels(page.locator("img[src*='curve_val_bpd']").screenshot())
        assert len(np.unique(curve.reshape(-1, 3), axis=0)) > 20 and (curve < 128).any()  # lines, text, colours
        grid = pixels(page.locator("img[src^='runs/']").first.screenshot())
        assert ((grid > 10) & (grid < 245)).mean() > 0.5  # random grey levels, not the older black grid

        # The audio run's sound plays: its length is read from the copied file.
        duration = page.eval_on_selector("audio", """a => new Promise(done => {
            a.onloadedmetadata = () => done(a.duration); a.onerror = () => done(-1);
            a.preload = 'metadata'; a.load(); })""")
        assert duration == pytest.approx(0.5, abs=0.01)
        full = pixels(page.screenshot(full_page=True))
        assert full.std() > 10
        browser.close()
    assert problems == []


def test_seeds_sizes_and_names_are_categories_and_fractions_a_numeric_axis():
    from genlab.report import _categorical

    assert _categorical(["0", "1", "2"], "seed") and _categorical(["0.5", "1.5"], "seed")
    assert _categorical(["vae", "pixelcnn"], "model") and _categorical(["8", "16", "32"], "model.latent_dim")
    assert not _categorical(["0.001", "0.0031622776601683794"], "model.optimizer.lr")
    assert not _categorical(["1e-3", "1"], "model.beta")


def test_precision_against_recall_is_drawn_where_measured(sweeps, tmp_path):
    from genlab.report import pair_points

    grid = sweeps[0]
    for job, (precision, recall) in zip(("0", "2"), [(0.6, 0.4), (0.7, 0.5)]):
        metrics = json.loads((grid / job / "metrics.json").read_text())
        metrics["final"].update({"val/precision_classifier": precision, "val/recall_classifier": recall})
        (grid / job / "metrics.json").write_text(json.dumps(metrics))
    jobs = read_runs([grid])
    assert pair_points(jobs, "precision_{ext}", "recall_{ext}") == {
        "classifier": [("vae", 0.6, 0.4), ("pixelcnn", 0.7, 0.5)]}
    assert report_main([str(grid), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "precision_recall_classifier.png").is_file()


def test_the_dashboard_never_replaces_a_folder_it_did_not_write(sweeps, capsys):
    grid = sweeps[0]
    (grid / "dashboard").mkdir()
    (grid / "dashboard" / "notes.txt").write_text("mine")
    assert report_main([str(grid)]) == 2
    assert "dashboard exists and is not a dashboard written by genlab-report" in capsys.readouterr().err
    assert (grid / "dashboard" / "notes.txt").read_text() == "mine" and not (grid / "report.md").exists()
    (grid / "dashboard" / "notes.txt").unlink()
    (grid / "dashboard").rmdir()
    assert report_main([str(grid)]) == 0 and report_main([str(grid)]) == 0  # its own: written again


def test_links_in_a_run_folder_put_nothing_they_lead_to_into_the_dashboard(sweeps, tmp_path):
    """A run folder is data: a symbolic link among its samples (to a private file, to another
    folder) is not followed into the dashboard, which is made to be shared."""
    secret = tmp_path / "private"
    secret.mkdir()
    (secret / "key.wav").write_bytes(b"PRIVATE KEY")
    (secret / "photo.png").write_bytes(b"PRIVATE PHOTO")
    run = sweeps[0] / "1"
    (run / "samples" / "zz-newest.png").symlink_to(secret / "photo.png")
    os.utime(run / "samples" / "zz-newest.png", follow_symlinks=False)
    (run / "samples" / "stolen.wav").symlink_to(secret / "key.wav")
    other = sweeps[0] / "2"
    shutil.rmtree(other / "samples")
    (other / "samples").symlink_to(secret)
    assert report_main([str(sweeps[0]), "--out", str(tmp_path / "out")]) == 0
    copied = [p.read_bytes() for p in (tmp_path / "out" / "dashboard").rglob("*") if p.is_file()]
    assert not any(b"PRIVATE" in data for data in copied)
    html = (tmp_path / "out" / "dashboard" / "index.html").read_text()
    assert "00_epoch001-step000020.png" in html  # the run's own newest grid is still shown


def test_a_run_folder_cannot_put_the_readers_environment_into_the_report(tmp_path, monkeypatch):
    """Values of a run folder's YAML that call a resolver (oc.env) are data, not resolved: the
    report shows nothing of the environment of whoever runs genlab-report; an override is shown as typed."""
    monkeypatch.setenv("GENLAB_TEST_SECRET", "hunter2")
    job = make_job(tmp_path / "sweep", "0", ["model=vae", "+note=${oc.env:GENLAB_TEST_SECRET}"], "vae",
                   completed([3.0, 2.5]), objective="${oc.env:GENLAB_TEST_SECRET}")
    (job / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"model": "${oc.env:GENLAB_TEST_SECRET,x}"}}}}))
    make_job(tmp_path / "sweep", "1", ["model=vae", "+note=plain"], "vae", completed([3.1, 2.6]))
    assert report_main([str(tmp_path / "sweep")]) == 0
    written = [p.read_text() for p in [tmp_path / "sweep" / "report.md", tmp_path / "sweep" / "report.csv",
                                       tmp_path / "sweep" / "dashboard" / "index.html"]]
    assert not any("hunter2" in text for text in written)
    assert "${oc.env:GENLAB_TEST_SECRET}" in written[1]  # the override, as typed
    assert read_runs([tmp_path / "sweep"])[1].objective == "val/bpd"  # plain values are read as before
