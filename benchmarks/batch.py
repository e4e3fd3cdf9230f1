"""Offline batch benchmark: `kimi-vl-batch` vs vLLM's own `run_batch` on the same input.

    python benchmarks/batch.py [--lines 256] [--image-fraction 0.5] [--max-tokens 16]
                               [--model DIR] [--json PATH]

Both run the same checkpoint (the tiny one unless --model) with the serving benchmark's engine
settings, each as a fresh process, on the same batch input (chat requests, a share of them with
a PNG as a data URL; `ignore_eos`, so both generate exactly --max-tokens per request). Each side
runs twice: on a one-line input (`start_s`: process and engine start-up) and on the full input
(`run_s`); its requests/s is lines / (run_s - start_s). Both outputs are checked: every
custom_id once, status 200, --max-tokens tokens. `ratio` = ours req/s / vLLM req/s (goal >= 1).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file (`python benchmarks/x.py`): find the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_json  # noqa: E402
from benchmarks.serve import ENGINE_FLAGS, SERVED_NAME, _png_data_url, say  # noqa: E402

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


def timed_run(argv: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "wb") as out:
        done = subprocess.run(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started


def check_output(path: Path, lines: int, max_tokens: int) -> None:
    results = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    ids = {r["custom_id"] for r in results}
    assert len(results) == lines and len(ids) == lines, f"{path}: {len(results)} lines"
    bad = [r for r in results if (r.get("response") or {}).get("status_code") != 200]
    assert not bad, f"{path}: {len(bad)} failed, e.g. {json.dumps(bad[0])[:500]}"
    tokens = {r["response"]["body"]["usage"]["completion_tokens"] for r in results}
    assert tokens == {max_tokens}, f"{path}: completion tokens {tokens}"


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=256)
    parser.add_argument("--image-fraction", type=float, default=0.5)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: a fresh tiny one)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="kimi-vl-batch-bench-"))
    model = args.model
    if model is None:
        from server.engine.checkpoint import ensure_tiny_checkpoint

        model = ensure_tiny_checkpoint(work / "tiny")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_VL_")}
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    figures: dict[str, dict[str, float]] = {}
    for name, size in (("start", 1), ("run", args.lines)):
        source = work / f"{name}.jsonl"
        source.write_text(batch_input(size, args.image_fraction, args.max_tokens))
        sides = {
            "ours": [
                sys.executable, "-m", "server.batch_cli", "-i", str(source),
                "-o", str(work / f"ours-{name}.out"), "--preset", "tiny", "--model", str(model),
                "--served-model-name", SERVED_NAME, "--state-dir", str(work / "state"),
                *ENGINE_FLAGS,
            ],
            "vllm": [
                sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(source),
                "-o", str(work / f"vllm-{name}.out"), "--model", str(model),
                "--served-model-name", SERVED_NAME, *ENGINE_FLAGS,
            ],
        }  # fmt: skip
        for side, command in sides.items():
            say(f"[{side}] {name}: {size} line(s)")
            seconds = timed_run(command, env, work / f"{side}-{name}.log")
            figures.setdefault(side, {})[f"{name}_s"] = round(seconds, 2)
            if name == "run":
                check_output(work / f"{side}-{name}.out", size, args.max_tokens)
    report: dict[str, object] = {"lines": args.lines, "image_fraction": args.image_fraction,
                                 "max_tokens": args.max_tokens, "model": str(model)}  # fmt: skip
    for side, f in figures.items():
        requests_s = max(1e-6, f["run_s"] - f["start_s"])
        f["req_per_s"] = round(args.lines / requests_s, 2)
        report[side] = f
        say(f"{side:<5} whole run {f['run_s']:.1f} s, start {f['start_s']:.1f} s, "
            f"{f['req_per_s']:.2f} req/s")  # fmt: skip
    report["ratio"] = round(figures["ours"]["req_per_s"] / figures["vllm"]["req_per_s"], 3)
    say(f"ours/vllm req/s: x{report['ratio']}")
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
