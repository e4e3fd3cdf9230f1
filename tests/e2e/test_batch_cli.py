"""`kimi-vl-batch` end to end on the tiny checkpoint: every custom_id answered once in OpenAI's
output format (failures too), a rerun after losing lines does only what is missing, a finished
file needs no engine, a bad input line stops the run with its number, and neither a Ctrl-C nor
an engine death leaves a line for a request it cut short."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import REPO

pytestmark = pytest.mark.slow


def line(custom_id: str, **body: object) -> str:
    request = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": f"Say {custom_id}"}], "max_tokens": 3,
                 **body},
    }  # fmt: skip
    return json.dumps(request) + "\n"


def command(tmp: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    argv = [
        sys.executable, "-m", "server.batch_cli", *args,
        "--preset", "tiny", "--tiny-checkpoint-dir", str(tmp / "tiny"),
        "--state-dir", str(tmp / "state"), "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_VL_")}
    return argv, env


def run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv, env = command(tmp, *args)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def outputs(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_offline_batch_runs_resumes_and_checks_its_input(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(line(f"r{i}") for i in range(4)) + line("bad", model="nope"))
    first = run(tmp_path, "-i", str(source), "-o", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    results = outputs(out)
    assert sorted(r["custom_id"] for r in results) == ["bad", "r0", "r1", "r2", "r3"]  # type: ignore[type-var]
    by_id = {r["custom_id"]: r["response"] for r in results}
    for i in range(4):
        response = by_id[f"r{i}"]
        assert response["status_code"] == 200  # type: ignore[index]
        assert response["body"]["usage"]["completion_tokens"] == 3  # type: ignore[index]
    assert by_id["bad"]["status_code"] == 404  # type: ignore[index]
    assert by_id["bad"]["body"]["error"]["code"] == "model_not_found"  # type: ignore[index]
    assert "5 requests in" in first.stderr and "1 failed" in first.stderr

    kept = out.read_text().splitlines(keepends=True)[:3]  # two lines lost, one half-written
    out.write_text("".join(kept) + '{"id": "batch_req_x", "custom_id": "r')
    second = run(tmp_path, "-i", str(source), "-o", str(out))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 requests in" in second.stderr and "3 were done before" in second.stderr
    ids = [r["custom_id"] for r in outputs(out)]
    assert sorted(ids) == ["bad", "r0", "r1", "r2", "r3"]  # type: ignore[type-var]

    third = run(tmp_path, "-i", str(source), "-o", str(out))
    assert third.returncode == 0 and "already in" in third.stderr

    source.write_text(line("a") + "{not json}\n")
    bad = run(tmp_path, "-i", str(source), "-o", str(tmp_path / "other.jsonl"))
    assert bad.returncode == 2 and "Line 2 of the batch file is invalid" in bad.stderr


def start_and_wait_for_lines(
    tmp: Path, source: Path, out: Path, lines: int
) -> tuple[subprocess.Popen[bytes], Path]:
    """The runner, in a session of its own, once `lines` lines are in `out`; and its log."""
    argv, env = command(tmp, "-i", str(source), "-o", str(out), "--concurrency", "4")
    log = tmp / "first.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while not out.exists() or out.read_text().count("\n") < lines:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    return process, log


def test_an_engine_death_stops_the_run_without_recording_its_victims(tmp_path: Path) -> None:
    """The engine core killed mid-run: the runner exits 1 at once, says how to go on, and has
    written only real answers (a 503 line for a request the dying engine failed would make
    the rerun skip it); the same command then does the rest."""
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    total = 60
    source.write_text("".join(line(f"r{i}", max_tokens=8) for i in range(total)))
    process, log = start_and_wait_for_lines(tmp_path, source, out, 5)
    try:
        (core,) = [
            p for p in psutil.Process(process.pid).children(recursive=True)
            if "EngineCore" in p.name()
        ]  # fmt: skip
        core.kill()
        assert process.wait(timeout=60) == 1, log.read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert "the engine died" in log.read_text() and "run the same command again" in log.read_text()
    before = outputs(out)
    assert 5 <= len(before) < total
    assert [r["response"]["status_code"] for r in before] == [200] * len(before)  # type: ignore[index]

    second = run(tmp_path, "-i", str(source), "-o", str(out))
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{len(before)} were done before" in second.stderr and "0 failed" in second.stderr
    ids = [r["custom_id"] for r in outputs(out)]
    assert len(ids) == total and set(ids) == {f"r{i}" for i in range(total)}


def test_ctrl_c_then_rerun_answers_each_request_once(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) mid-run: the runner
    stops with status 130 and whole lines only; the same command then does just the rest."""
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    total = 60
    source.write_text("".join(line(f"r{i}", max_tokens=8) for i in range(total)))
    process, log = start_and_wait_for_lines(tmp_path, source, out, 5)
    try:
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 130, log.read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert "interrupted" in log.read_text()
    assert out.read_text().endswith("\n")
    before = [r["custom_id"] for r in outputs(out)]
    assert 5 <= len(before) < total and len(set(before)) == len(before)

    second = run(tmp_path, "-i", str(source), "-o", str(out))
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{len(before)} were done before" in second.stderr
    ids = [r["custom_id"] for r in outputs(out)]
    assert len(ids) == total and set(ids) == {f"r{i}" for i in range(total)}
