"""A wheel (non-editable install) carries the presets, and Settings finds them there, and the
demo checkpoint the server serves by default."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("kimi_vl_server-*.whl")
    return built


def test_wheel_carries_the_presets(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(
        n.rsplit("/", 1)[1] for n in names if "/data/share/kimi-vl-server/configs/" in n
    )
    assert PRESETS and shipped == PRESETS


def test_wheel_carries_the_demo_checkpoint(wheel: Path) -> None:
    """Every file of the shipped demo checkpoint, byte for byte as its manifest records them."""
    prefix = "server/model/demo/weights/"
    with zipfile.ZipFile(wheel) as z:
        shipped = {n[len(prefix) :]: z.read(n) for n in z.namelist() if n.startswith(prefix)}
    manifest = json.loads(shipped.pop("manifest.json"))
    assert manifest["files"] and sorted(shipped) == sorted(manifest["files"])
    for name, digest in manifest["files"].items():
        assert hashlib.sha256(shipped[name]).hexdigest() == digest, name


def test_installed_wheel_loads_a_preset(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # Dependencies from this environment's site-packages (on PYTHONPATH, so its editable
    # hook for this checkout is not loaded); run outside the checkout.
    code = (
        f"import server.settings as s; assert s.__file__.startswith({str(env_dir)!r}), "
        "s.__file__; print(s.CONFIGS_DIR); "
        "print(s.load_preset('kimi-vl-a3b-thinking-2506')['model'])"
    )
    out = subprocess.run(
        [str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    configs_dir, model = out.stdout.split()
    assert Path(configs_dir) == env_dir / "share" / "kimi-vl-server" / "configs"
    assert model == "moonshotai/Kimi-VL-A3B-Thinking-2506"
