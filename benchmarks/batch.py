"""Batch benchmark: `kimi-vl-batch` vs vLLM's own `run_batch` on the same input, and the TTFT
of interactive requests while the server runs a batch.

    python benchmarks/batch.py [--lines 256] [--rounds 2] [--image-fraction 0.5]
                               [--max-tokens 16] [--model DIR] [--json PATH]
                               [--ttft-batch-lines 512] [--ttft-requests 20] [--no-ttft]

Offline: both run the same checkpoint (the tiny one unless --model) with the serving
benchmark's engine settings, each as a fresh process, on the same batch input (chat requests, a
share of them with a PNG as a data URL; `ignore_eos`, so both generate exactly --max-tokens per
request). A round runs one side once; its requests/s is lines / the seconds of its batch phase
(engine started, requests run, output written), which each side prints: kimi-vl-batch itself,
vLLM's run_batch through a wrapper (VLLM_TIMED). Start-up and shutdown, which vary by seconds
from run to run, so stay out of the figure. Rounds alternate in ABBA order (ours, vLLM, vLLM,
ours, ...) so drift of the machine falls on both alike; a side's figure is the median of its
rounds. Both outputs are checked: every custom_id once, status 200,
--max-tokens tokens. `ratio` = ours req/s / vLLM req/s (goal >= 1).

Interactive TTFT (`interactive_ttft`): our server on the same checkpoint; --ttft-requests
streamed chat requests one after another on the idle server, then again while a
--ttft-batch-lines batch (Batches API) runs; the batch must still be running after the last
one. `ratio` = median TTFT under the batch / median idle TTFT (goal <= 2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a file (`python benchmarks/x.py`): find the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import workspace, write_json  # noqa: E402
from benchmarks.serve import (  # noqa: E402
    ENGINE_FLAGS,
    SERVED_NAME,
    _one,
    _png_data_url,
    launched,
    round_order,
    say,
)

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZES = [(224, 224), (320, 240), (448, 336)]


def batch_input(lines: int, image_fraction: float, max_tokens: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        content: list[dict] = [{"type": "text", "text": f"Request {i}: describe it."}]
        if rng.random() < image_fraction:
            url = _png_data_url(*rng.choice(IMAGE_SIZES), rng)
            content.insert(0, {"type": "image_url", "image_url": {"url": url}})
        body = {
            "model": SERVED_NAME,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
        }
        out.append(
            json.dumps(
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            )
        )
    return "\n".join(out) + "\n"


# vLLM's run_batch, printing the time of its batch phase (from when its serving state is built
# until the output is written: reading the input, running every request, writing the output),
# as kimi-vl-batch prints its own (from its first request until its last output line).
VLLM_TIMED = """
import runpy, sys, time
import vllm.entrypoints.launchers.run_batch as launcher
build, run = launcher.build_endpoint_registry, launcher.run_batch
started = []
async def built(*args, **kwargs):
    registry = await build(*args, **kwargs)
    started.append(time.perf_counter())
    return registry
async def timed(engine_client, args):
    await run(engine_client, args)
    sys.stderr.write(f"batch phase: {time.perf_counter() - started[0]:.3f} s\\n")
launcher.build_endpoint_registry, launcher.run_batch = built, timed
sys.argv[0] = "run_batch"
runpy.run_module("vllm.entrypoints.openai.run_batch", run_name="__main__")
"""
_PHASE = {
    "ours": re.compile(r"requests in ([0-9.]+) s"),
    "vllm": re.compile(r"batch phase: ([0-9.]+) s"),
}


def timed_run(side: str, argv: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(whole process seconds, batch phase seconds) of one run."""
    started = time.perf_counter()
    with open(log, "wb") as out:
        done = subprocess.run(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    phase = _PHASE[side].search(text)
    if done.returncode != 0 or phase is None:
        raise RuntimeError(f"{side} failed:\n{text[-3000:]}")
    return wall, float(phase.group(1))


def check_output(path: Path, lines: int, max_tokens: int) -> None:
    results = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    ids = {r["custom_id"] for r in results}
    assert len(results) == lines and len(ids) == lines, f"{path}: {len(results)} lines"
    bad = [r for r in results if (r.get("response") or {}).get("status_code") != 200]
    assert not bad, f"{path}: {len(bad)} failed, e.g. {json.dumps(bad[0])[:500]}"
    tokens = {r["response"]["body"]["usage"]["completion_tokens"] for r in results}
    assert tokens == {max_tokens}, f"{path}: completion tokens {tokens}"


def offline_commands(source: Path, out: Path, model: Path, state: Path) -> dict[str, list[str]]:
    return {
        "ours": [
            sys.executable, "-m", "server.batch_cli", "-i", str(source), "-o", str(out) + ".ours",
            "--preset", "tiny", "--model", str(model), "--served-model-name", SERVED_NAME,
            "--state-dir", str(state), *ENGINE_FLAGS,
        ],
        "vllm": [
            sys.executable, "-c", VLLM_TIMED, "-i", str(source),
            "-o", str(out) + ".vllm", "--model", str(model), "--served-model-name", SERVED_NAME,
            *ENGINE_FLAGS,
        ],
    }  # fmt: skip


def offline(args: argparse.Namespace, model: Path, work: Path, env: dict[str, str]) -> dict:
    """Per side: the median over its rounds of lines / batch phase seconds."""
    source = work / "run.jsonl"
    source.write_text(batch_input(args.lines, args.image_fraction, args.max_tokens))
    rounds: dict[str, list[dict[str, float]]] = {"ours": [], "vllm": []}
    for number, side in enumerate(round_order(["ours", "vllm"], args.rounds), start=1):
        out = work / f"r{number}.out"
        command = offline_commands(source, out, model, work / f"state-{number}")[side]
        wall, phase = timed_run(side, command, env, work / f"r{number}-{side}.log")
        check_output(Path(f"{out}.{side}"), args.lines, args.max_tokens)
        per_s = args.lines / phase
        rounds[side].append({"process_s": round(wall, 2), "batch_s": round(phase, 2),
                             "req_per_s": round(per_s, 2)})  # fmt: skip
        say(f"  round {number} {side:<5} batch {phase:.2f} s ({per_s:.2f} req/s), whole "
            f"process {wall:.1f} s")  # fmt: skip
    report: dict[str, object] = {}
    for side, figures in rounds.items():
        report[side] = {"req_per_s": statistics.median(f["req_per_s"] for f in figures),
                        "rounds": figures}  # fmt: skip
    ours, theirs = (report[s]["req_per_s"] for s in ("ours", "vllm"))  # type: ignore[index]
    report["ratio"] = round(ours / theirs, 3)
    say(f"offline: ours {ours:.2f} req/s, vLLM {theirs:.2f} req/s: x{report['ratio']}")
    return report


async def _ttfts(base: str, count: int, still_running: str | None = None) -> list[float]:
    """TTFTs of `count` streamed chat requests sent one after another (0.2 s apart)."""
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    url = base + "/v1/chat/completions"
    out = []
    async with httpx.AsyncClient(timeout=120) as client:
        await _one(client, url, body)  # warm-up
        for _ in range(count):
            ttft, _, tokens = await _one(client, url, body)
            assert tokens == 8, tokens
            out.append(ttft)
            await asyncio.sleep(0.2)
        if still_running is not None:
            batch = (await client.get(f"{base}/v1/batches/{still_running}")).json()
            if batch["status"] != "in_progress":
                raise RuntimeError(f"the batch ended before the last request: {batch}")
    return out


def interactive_ttft(
    args: argparse.Namespace, model: Path, work: Path, env: dict[str, str]
) -> dict:
    argv = [
        sys.executable, "-m", "server", "--preset", "tiny", "--model", str(model),
        "--served-model-name", SERVED_NAME, "--state-dir", str(work / "ttft-state"),
        "--log-level", "warning", *ENGINE_FLAGS,
    ]  # fmt: skip
    batch = batch_input(args.ttft_batch_lines, args.image_fraction, 4 * args.max_tokens, seed=7)
    with launched("ours", argv, "/ready", env, work / "ttft-server.log") as server:
        idle = asyncio.run(_ttfts(server.base, args.ttft_requests))
        with httpx.Client(base_url=server.base, timeout=60) as client:
            upload = client.post("/v1/files", data={"purpose": "batch"},
                                 files={"file": ("in.jsonl", batch.encode())})  # fmt: skip
            upload.raise_for_status()
            created = client.post("/v1/batches", json={
                "input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"})  # fmt: skip
            created.raise_for_status()
            batch_id = created.json()["id"]
            while True:  # measure once the batch keeps the engine busy
                state = client.get(f"/v1/batches/{batch_id}").json()
                if state["request_counts"]["completed"] >= 4:
                    break
                time.sleep(0.2)
        loaded = asyncio.run(_ttfts(server.base, args.ttft_requests, still_running=batch_id))
    idle_ms, loaded_ms = statistics.median(idle) * 1000, statistics.median(loaded) * 1000
    report = {
        "idle_ttft_p50_ms": round(idle_ms, 1),
        "under_batch_ttft_p50_ms": round(loaded_ms, 1),
        "under_batch_ttft_max_ms": round(max(loaded) * 1000, 1),
        "ratio": round(loaded_ms / idle_ms, 3),
        "batch_lines": args.ttft_batch_lines,
        "requests": args.ttft_requests,
    }
    say(f"interactive TTFT p50: idle {idle_ms:.0f} ms, under a batch {loaded_ms:.0f} ms "
        f"(max {report['under_batch_ttft_max_ms']:.0f} ms): x{report['ratio']}")  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="offline rounds per side (ABBA)")
    parser.add_argument("--image-fraction", type=float, default=0.5)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: a fresh tiny one)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--ttft-batch-lines", type=int, default=512)
    parser.add_argument("--ttft-requests", type=int, default=20)
    parser.add_argument("--no-ttft", action="store_true", help="skip the interactive TTFT part")
    parser.add_argument("--no-offline", action="store_true", help="skip the offline comparison")
    args = parser.parse_args(argv)

    work, model, env = workspace("kimi-vl-batch-bench-", args.model)
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    report: dict[str, object] = {"lines": args.lines, "image_fraction": args.image_fraction,
                                 "max_tokens": args.max_tokens, "model": str(model)}  # fmt: skip
    if not args.no_offline:
        report.update(offline(args, model, work, env))
    if not args.no_ttft:
        report["interactive_ttft"] = interactive_ttft(args, model, work, env)
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
