"""Soak: our server under steady mixed load for a long time, with its memory sampled.

    python benchmarks/soak.py [--minutes 20] [--concurrency 16] [--image-fraction 0.5]
                              [--max-tokens 32] [--sample-every 10] [--model DIR] [--json PATH]
                              [-- extra server flags]

Starts the server (tiny checkpoint unless --model; the serving benchmark's engine settings),
then keeps `--concurrency` requests in flight for `--minutes`: streamed and non-streamed chat
requests, a share of them with a picture that no other request had (random size, colours and
noise, as real traffic has: nothing can be served from a cache), and a few malformed ones (a 400
is their expected answer). Every `--sample-every` seconds it records the resident memory of
every process of the server's tree. Reports requests, errors by code (unexpected ones apart),
latency and TTFT percentiles, the RSS samples, and the tree's RSS growth from minute 2 to the
end (plus over the last third, which is ~0 on a plateau).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a file (`python benchmarks/x.py`): find the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import workspace, write_json  # noqa: E402
from benchmarks.serve import ENGINE_FLAGS, SERVED_NAME, _percentile, _process_tree, launched, say  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WARM_UP_S = 120.0  # growth is measured from minute 2: start-up allocations are not a leak


def fresh_image(rng: random.Random) -> str:
    """A PNG no other request sends: random size, background, shapes and noise."""
    width, height = rng.randrange(64, 640), rng.randrange(64, 640)
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(
        0, 256, size=(height, width, 3), dtype=np.uint8
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request_body(i: int, rng: random.Random, image_fraction: float, max_tokens: int) -> dict:
    parts: list[dict[str, Any]] = []
    if rng.random() < image_fraction:
        parts.append({"type": "image_url", "image_url": {"url": fresh_image(rng)}})
    parts.append({"type": "text", "text": f"Request {i}: say something about it."})
    body: dict[str, Any] = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": i,
        "stream": rng.random() < 0.5,
    }
    if rng.random() < 0.03:  # malformed on purpose: a 400 is the right answer
        body["temperature"] = 9.0
    return body


async def one(client: httpx.AsyncClient, url: str, body: dict) -> tuple[str, float, float]:
    """(outcome: "ok" or an error code, latency s, TTFT s)."""
    start = time.perf_counter()
    ttft = 0.0
    if not body["stream"]:
        response = await client.post(url, json=body)
        took = time.perf_counter() - start
        if response.status_code != 200:
            return (
                str(response.json().get("error", {}).get("code", response.status_code)),
                took,
                took,
            )
        return "ok", took, took
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            payload = json.loads(await response.aread())
            return str(payload.get("error", {}).get("code")), time.perf_counter() - start, 0.0
        outcome = "ok"
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                outcome = str(chunk["error"].get("code"))
            elif not ttft and chunk.get("choices"):
                ttft = time.perf_counter() - start
    return outcome, time.perf_counter() - start, ttft


def rss_sample(pid: int) -> dict[str, float]:
    """Resident MiB of each process of the tree, by name (duplicates numbered)."""
    sample: dict[str, float] = {}
    for process in _process_tree(pid):
        try:
            name = process.name()
            mib = process.memory_info().rss / 2**20
        except Exception:  # the process ended meanwhile
            continue
        key, n = name, 1
        while key in sample:
            n += 1
            key = f"{name}#{n}"
        sample[key] = round(mib, 1)
    return sample


async def soak(base: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    url = base + "/v1/chat/completions"
    rng = random.Random(0)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    ttfts: list[float] = []
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    end = start + args.minutes * 60
    counter = iter(range(10**9))

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            i = next(counter)
            body = request_body(i, rng, args.image_fraction, args.max_tokens)
            malformed = body["temperature"] > 2
            try:
                outcome, took, ttft = await one(client, url, body)
            except httpx.HTTPError as exc:
                outcome, took, ttft = f"transport:{type(exc).__name__}", 0.0, 0.0
            outcomes["malformed:" + outcome if malformed else outcome] += 1
            if outcome == "ok":
                latencies.append(took)
                if ttft:
                    ttfts.append(ttft)

    async def sampler() -> None:
        while time.monotonic() < end:
            sample = rss_sample(pid)
            t = round(time.monotonic() - start, 1)
            samples.append({"t_s": t, "total_mib": round(sum(sample.values()), 1), **sample})
            say(
                f"  t={t:>6.0f}s  requests={sum(outcomes.values()):>6}  rss={samples[-1]['total_mib']:.0f} MiB"
            )
            await asyncio.sleep(args.sample_every)

    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(sampler(), *(worker(client) for _ in range(args.concurrency)))
    samples.append({"t_s": round(time.monotonic() - start, 1), **(s := rss_sample(pid)),
                    "total_mib": round(sum(s.values()), 1)})  # fmt: skip

    def total_at(seconds: float) -> float:
        return next(s["total_mib"] for s in samples if s["t_s"] >= seconds)

    last = samples[-1]["total_mib"]
    warm = total_at(min(WARM_UP_S, samples[-1]["t_s"]))
    third = total_at(samples[-1]["t_s"] * 2 / 3)
    unexpected = {k: v for k, v in outcomes.items() if k != "ok" and k != "malformed:invalid_value"}
    return {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "requests": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "unexpected_errors": unexpected,
        "latency_p50_s": round(_percentile(latencies, 0.5), 3) if latencies else None,
        "latency_p99_s": round(_percentile(latencies, 0.99), 3) if latencies else None,
        "ttft_p50_s": round(_percentile(ttfts, 0.5), 3) if ttfts else None,
        "ttft_p99_s": round(_percentile(ttfts, 0.99), 3) if ttfts else None,
        "rss_growth_pct_from_minute_2": round(100 * (last - warm) / warm, 2),
        "rss_growth_pct_last_third": round(100 * (last - third) / third, 2),
        "rss_samples": samples,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--image-fraction", type=float, default=0.5)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: a fresh tiny one)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("server_flags", nargs="*", help="extra flags for the server (after --)")
    args = parser.parse_args(argv)

    work, model, env = workspace("kimi-vl-soak-", args.model)
    server_argv = [
        sys.executable, "-m", "server", "--preset", "tiny", "--model", str(model),
        "--served-model-name", SERVED_NAME, "--log-level", "warning", *ENGINE_FLAGS,
        *args.server_flags,
    ]  # fmt: skip
    with launched("ours", server_argv, "/ready", env, work / "server.log") as server:
        say(f"server up in {server.startup_s:.0f} s; soaking {args.minutes:g} min")
        report = asyncio.run(soak(server.base, server.pid, args))
    say(
        f"{report['requests']} requests, unexpected errors {report['unexpected_errors'] or 'none'}; "
        f"latency p50 {report['latency_p50_s']} s p99 {report['latency_p99_s']} s; "
        f"RSS growth from minute 2: {report['rss_growth_pct_from_minute_2']} % "
        f"(last third: {report['rss_growth_pct_last_third']} %)"
    )
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
