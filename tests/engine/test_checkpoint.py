"""The tiny checkpoint is written once, atomically, even when two servers start together."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from server.engine import checkpoint
from server.model.demo import CHECKPOINT_DIR as DEMO_CHECKPOINT_DIR
from server.settings import load_settings


def _slow_writer(calls: list[Path]):  # type: ignore[no-untyped-def]
    def write(out: Path, *, seed: int = 0) -> Path:
        calls.append(out)
        time.sleep(0.3)  # long enough for the second starter to arrive mid-write
        (out / "config.json").write_text("{}")
        (out / "generation_config.json").write_text("{}")
        return out

    return write


def test_two_concurrent_starts_write_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr("server.model.tiny.write_checkpoint", _slow_writer(calls))
    target = tmp_path / "cache" / "tiny"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(checkpoint.ensure_tiny_checkpoint(target)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and calls[0] != target  # written beside, then renamed into place
    assert results == [target, target] and (target / "generation_config.json").is_file()
    assert [p.name for p in target.parent.iterdir() if ".tmp-" in p.name] == []


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(out: Path, *, seed: int = 0) -> Path:
        (out / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr("server.model.tiny.write_checkpoint", broken)
    target = tmp_path / "tiny"
    with pytest.raises(OSError):
        checkpoint.ensure_tiny_checkpoint(target)
    assert not target.exists() and [p for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_resolve_model_prefers_the_setting(tmp_path: Path) -> None:
    assert checkpoint.resolve_model(load_settings({"model": "org/model"})) == "org/model"
    existing = tmp_path / "tiny"
    existing.mkdir()
    (existing / "generation_config.json").write_text("{}")
    settings = load_settings({"preset": "tiny", "tiny_checkpoint_dir": str(existing)})
    assert checkpoint.resolve_model(settings) == str(existing)
    # no model and no preset: the demo checkpoint shipped in the package
    default = load_settings({"tiny_checkpoint_dir": str(existing)})
    assert checkpoint.resolve_model(default) == str(DEMO_CHECKPOINT_DIR)
    assert (DEMO_CHECKPOINT_DIR / "config.json").is_file()
