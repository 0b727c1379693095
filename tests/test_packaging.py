"""A regular (non-editable) install carries the configs and finds them."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_every_config_and_uses_them(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"), str(REPO)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "whl").glob("genlab-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, capture_output=True)
    shipped = {p.relative_to(tmp_path / "site" / "genlab" / "conf") for p in
               (tmp_path / "site" / "genlab" / "conf").rglob("*.yaml")}
    assert shipped == {p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml")}
    assert (tmp_path / "site" / "genlab" / "templates" / "dashboard.html.j2").is_file()  # genlab-report's page
    code = ("import genlab.config as c; from hydra import compose, initialize_config_dir\n"
            "with initialize_config_dir(str(c.CONF_DIR), version_base='1.3'):\n"
            "    cfg = compose('train', overrides=['model=cvae'])\n"
            "print(c.CONF_DIR, cfg.model.conditional, c.compatible_samplers('vae'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert out.split() == [str(tmp_path / "site" / "genlab" / "conf"), "True", "['prior']"]
