"""docker/ is kept correct by lint (no Docker engine runs here) and by what it must contain."""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def test_dockerfile_is_clean_under_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_genlab_with_its_configs_and_runs_train():
    text = DOCKERFILE.read_text()
    assert "COPY conf ./conf" in text and "COPY genlab ./genlab" in text and "COPY hydra_plugins ./hydra_plugins" in text
    assert 'ENTRYPOINT ["genlab-train"]' in text
    assert "USER 1000" in text  # not root


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative, /-separated) out of the build context: the last
    .dockerignore pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            verdict = not negate
    return verdict


def build_context(root: Path) -> list[str]:
    """The files ``docker build -f docker/Dockerfile .`` sends (the repository root is the context)."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sent = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        # a folder left out whole (no ! pattern reaches inside it) is not walked: .venv, .git
        dirnames[:] = [d for d in dirnames if not (ignored(prefix + d, patterns)
                                                   and not any(p.startswith("!" + prefix + d + "/") for p in patterns))]
        sent += [prefix + f for f in filenames if not ignored(prefix + f, patterns)]
    return sent


def test_the_build_context_holds_what_the_image_copies_and_no_venv():
    sent = build_context(REPO)
    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE.read_text(), re.MULTILINE)
    for source in " ".join(copied).split():
        assert any(f == source or f.startswith(source + "/") for f in sent), f"{source} is not in the build context"
    assert not any(f.startswith((".venv/", ".git/", "outputs/", "tests/", "bench/")) or "__pycache__" in f
                   for f in sent), [f for f in sent if not f.startswith(("genlab/", "conf/", "hydra_plugins/"))]


def test_the_dockerfile_states_the_driver_and_offers_another_cuda_line():
    text = DOCKERFILE.read_text()
    assert "driver 580" in text and "ARG TORCH_INDEX_URL" in text and '--index-url "$TORCH_INDEX_URL"' in text
    assert "--ipc=host" in text and "--shm-size" in text
    apptainer = (DOCKERFILE.parent / "genlab.def").read_text()
    assert "Bootstrap: docker-daemon" in apptainer and 'exec genlab-train "$@"' in apptainer


def test_the_image_entry_point_composes_its_default_command(tmp_path):
    """No Docker engine here: the image's /opt/genlab is built from the build context as the
    Dockerfile copies it, and its ENTRYPOINT + CMD run with its ENV (the dependencies it installs
    are pyproject.toml's pins, which this environment has)."""
    text = DOCKERFILE.read_text()
    image = tmp_path / "opt" / "genlab"
    for f in build_context(REPO):
        (image / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f, image / f)
    env_block = re.search(r"^ENV (.+?)\n\n", text, re.MULTILINE | re.DOTALL).group(1)
    image_env = dict(re.findall(r"(\w+)=(\S+)", env_block))
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.MULTILINE).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.MULTILINE).group(1))
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts[entrypoint[0]].split(":")
    (tmp_path / "runs").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", f"import genlab, {module}; print(genlab.__file__); {module}.{function}()",
         *cmd, "--cfg", "job", "--resolve"],
        cwd=tmp_path / "runs", capture_output=True, text=True, timeout=120,
        env={**os.environ, **image_env, "PYTHONPATH": str(image)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(str(image / "genlab"))  # the image's copy, not this checkout
    cfg = yaml.safe_load(result.stdout.split("\n", 1)[1])
    assert cfg["trainer"]["accelerator"] == "gpu" and cfg["hardware"]["name"] == "gpu"
    assert (cfg["paths"]["log_dir"], cfg["paths"]["data_dir"], cfg["paths"]["cache_dir"]) == ("/runs", "/data", "/cache")
