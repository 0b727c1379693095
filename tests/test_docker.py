"""docker/ is kept correct by lint (no Docker engine runs here) and by what it must contain."""

import shutil
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "docker" / "Dockerfile"


def test_dockerfile_is_clean_under_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_genlab_with_its_configs_and_runs_train():
    text = DOCKERFILE.read_text()
    assert "COPY conf ./conf" in text and "COPY genlab ./genlab" in text
    assert 'ENTRYPOINT ["genlab-train"]' in text
    assert "USER 1000" in text  # not root
