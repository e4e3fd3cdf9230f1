"""Serving benchmark: our server vs vLLM's own OpenAI server, same checkpoint, same workload.

    python benchmarks/serve.py [--model DIR] [--requests 96] [--rounds 4] [--concurrency 8]
                               [--rate R] [--max-tokens 32] [--images 1] [--json PATH]
                               [--only ours|vllm] [--data-parallel-size N]

Both servers run the tiny checkpoint (written to a temporary folder unless --model is given)
with the same engine settings (float32, eager, max_model_len 4096, 1 GiB KV cache) and the same
model class (the project's plugin). Both are started first (one after the other, each on a quiet
machine), then the load runs in `--rounds` rounds that alternate between them in ABBA order
(ours, vLLM, vLLM, ours, ...), so slow drift of the machine falls on both sides alike. While one
side is loaded the other is idle (vLLM's engine stops polling after 1 s without work); the CPU
the idle side still uses is measured and printed. The workload is concurrent streaming chat
requests, each with PNG images as data URLs (seeded sizes) and `ignore_eos`, so both sides
generate exactly `--max-tokens` tokens per request. TTFT is the time to the first chunk that
carries text. Throughput per side is the median over its rounds; TTFT percentiles are over all
of its requests.

With --data-parallel-size N (N > 1) the two sides are both our server: one engine (`ours`) and
N data-parallel engines (`ours-dpN`, vLLM's DP: N engine processes behind one front end), and
the ratio printed is DP=N over DP=1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from PIL import Image

if __package__ in (None, ""):  # run as a file (`python benchmarks/x.py`): find the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import free_port, workspace, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERVED_NAME = "bench-model"
ENGINE_FLAGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
                "--gpu-memory-utilization", "0.3", "--max-num-seqs", "8"]  # fmt: skip
IMAGE_SIZES = [(224, 224), (320, 240), (448, 336), (640, 480), (256, 512)]


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _png_data_url(width: int, height: int, rng: random.Random) -> str:
    color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def build_workload(count: int, images: int, max_tokens: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        parts: list[dict] = [
            {
                "type": "image_url",
                "image_url": {"url": _png_data_url(*rng.choice(IMAGE_SIZES), rng)},
            }
            for _ in range(images)
        ]
        parts.append({"type": "text", "text": f"Request {i}: describe the image in detail."})
        bodies.append(
            {
                "model": SERVED_NAME,
                "messages": [{"role": "user", "content": parts}],
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
    return bodies


def _process_tree(pid: int) -> list:  # list[psutil.Process]
    """The process and all its descendants; empty if it is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_tree(process: subprocess.Popen) -> None:
    """SIGTERM the server, then kill whatever it left behind (engine core, workers).

    The servers are not started in a session of their own: on this CPU build a server in a new
    session served 2-3x slower (ours 12.8 vs 33 req/s, vLLM 22.9 vs 34 req/s, same flags).
    """
    import psutil

    children = _process_tree(process.pid)[1:]
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@dataclass
class Round:
    req_per_s: float
    output_tok_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    idle_side_cpu_s: float  # CPU the other (idle) server used meanwhile
    prompt_tokens: int  # summed over the round's requests: equal on both sides, or not comparable


@dataclass
class SideResult:
    requests: int  # per round
    rounds: list[Round]
    req_per_s: float  # median over rounds
    output_tok_per_s: float  # median over rounds
    ttft_p50_s: float  # over every request of every round
    ttft_p99_s: float
    startup_s: float


@dataclass
class Server:
    name: str
    base: str
    pid: int
    startup_s: float


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and all its descendants."""
    import psutil

    total = 0.0
    for proc in _process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


@contextmanager
def launched(
    name: str, argv: list[str], ready_path: str, env: dict[str, str], log: Path
) -> Iterator[Server]:
    """Start a server, wait until `ready_path` answers 200, yield it; stop it on exit."""
    port = free_port()
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*argv, "--port", str(port)], cwd=REPO, env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} server exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(base + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 600:
                raise RuntimeError(f"{name} server did not become ready in 600 s")
            time.sleep(0.5)
        yield Server(name, base, process.pid, time.monotonic() - started)
    finally:
        stop_tree(process)


async def _one(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, int, int]:
    """(TTFT seconds, prompt tokens, completion tokens) of one streamed request."""
    start = time.perf_counter()
    ttft: float | None = None
    prompt = tokens = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if chunk.get("usage"):
                prompt = chunk["usage"]["prompt_tokens"]
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if ttft is None and choice["delta"].get("content"):
                    ttft = time.perf_counter() - start
    return (ttft if ttft is not None else time.perf_counter() - start), prompt, tokens


def arrival_times(count: int, rate: float | None, seed: int = 1) -> list[float]:
    """Send offsets in seconds: all 0 (closed loop), or a seeded Poisson process at `rate`/s."""
    times = [0.0] * count
    if rate is not None:
        gaps = random.Random(seed)
        for i in range(1, count):
            times[i] = times[i - 1] + gaps.expovariate(rate)
    return times


async def run_load(
    base: str, bodies: list[dict], concurrency: int, rate: float | None = None
) -> tuple[float, list[float], int, int]:
    """(seconds, TTFT of each request, prompt tokens, completion tokens).

    Closed loop (`rate` None): `concurrency` requests in flight at all times. Open loop: request
    i is sent at a seeded Poisson arrival time (`rate` per second), at most `concurrency` in
    flight; TTFT counts from when a request is sent.
    """
    url = base + "/v1/chat/completions"
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    arrivals = arrival_times(len(bodies), rate)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        for body in bodies[:2]:  # warm-up, not measured
            await _one(client, url, body)
        start = time.perf_counter()

        async def one(i: int, body: dict) -> tuple[float, int, int]:
            await asyncio.sleep(max(0.0, start + arrivals[i] - time.perf_counter()))
            async with gate:
                return await _one(client, url, body)

        results = await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
        elapsed = time.perf_counter() - start
    ttfts = [t for t, _, _ in results]
    return elapsed, ttfts, sum(p for _, p, _ in results), sum(n for _, _, n in results)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def round_order(names: list[str], rounds: int) -> list[str]:
    """ABBA order over `rounds` rounds per side: [a, b, b, a, a, b, ...]."""
    order: list[str] = []
    for r in range(rounds):
        order += names if r % 2 == 0 else names[::-1]
    return order


def summarize(requests: int, rounds: list[Round], ttfts: list[float], startup: float) -> SideResult:
    return SideResult(
        requests=requests,
        rounds=rounds,
        req_per_s=statistics.median(r.req_per_s for r in rounds),
        output_tok_per_s=statistics.median(r.output_tok_per_s for r in rounds),
        ttft_p50_s=statistics.median(ttfts),
        ttft_p99_s=_percentile(ttfts, 0.99),
        startup_s=startup,
    )


def compare(results: dict[str, SideResult], other: str = "vllm") -> dict[str, float]:
    """`ours` over `other` (throughput > 1: ours is faster; TTFT < 1: ours answers sooner)."""
    ours, theirs = results["ours"], results[other]
    return {
        "throughput_ratio": ours.req_per_s / theirs.req_per_s,
        "output_tok_per_s_ratio": ours.output_tok_per_s / theirs.output_tok_per_s,
        "ttft_p50_ratio": ours.ttft_p50_s / theirs.ttft_p50_s,
        "ttft_p99_ratio": ours.ttft_p99_s / theirs.ttft_p99_s,
    }


def benchmark(servers: list[Server], bodies: list[dict], concurrency: int, rounds: int,
              rate: float | None = None) -> dict[str, SideResult]:  # fmt: skip
    by_name = {s.name: s for s in servers}
    per_side: dict[str, list[Round]] = {s.name: [] for s in servers}
    ttfts: dict[str, list[float]] = {s.name: [] for s in servers}
    for i, name in enumerate(round_order(list(by_name), rounds)):
        time.sleep(2)  # let the other side's engine leave its busy-poll (1 s) before we start
        others = [s for s in servers if s.name != name]
        idle_before = sum(_tree_cpu_seconds(s.pid) for s in others)
        run = asyncio.run(run_load(by_name[name].base, bodies, concurrency, rate))
        elapsed, times, prompt_tokens, tokens = run
        idle_cpu = sum(_tree_cpu_seconds(s.pid) for s in others) - idle_before
        result = Round(
            req_per_s=len(bodies) / elapsed,
            output_tok_per_s=tokens / elapsed,
            ttft_p50_s=statistics.median(times),
            ttft_p99_s=_percentile(times, 0.99),
            idle_side_cpu_s=idle_cpu,
            prompt_tokens=prompt_tokens,
        )
        per_side[name].append(result)
        ttfts[name] += times
        say(
            f"  round {i + 1:>2} {name:<5} {result.req_per_s:7.2f} req/s  TTFT p50 "
            f"{result.ttft_p50_s * 1000:5.0f} ms  p99 {result.ttft_p99_s * 1000:5.0f} ms  "
            f"(idle side used {idle_cpu:.2f} CPU-s)"
        )
    prompts = {rounds[0].prompt_tokens for rounds in per_side.values()}
    if len(prompts) > 1:
        raise RuntimeError(f"the sides saw different prompts (prompt tokens {sorted(prompts)})")
    return {
        name: summarize(len(bodies), per_side[name], ttfts[name], by_name[name].startup_s)
        for name in by_name
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: a fresh tiny one)")
    parser.add_argument("--requests", type=int, default=96, help="requests per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per side (ABBA order)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (max)")
    parser.add_argument(
        "--rate", type=float, help="open loop: Poisson arrivals at this many requests/s"
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--only", choices=["ours", "vllm"], help="run one side only")
    parser.add_argument(
        "--data-parallel-size", type=int, default=1, help="N > 1: our server at DP=N vs DP=1"
    )
    args = parser.parse_args(argv)

    work, model, env = workspace("kimi-vl-bench-", args.model)
    bodies = build_workload(args.requests, args.images, args.max_tokens)
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"  # vLLM's server reads it; ours sets it from the preset
    sides = {
        "ours": (
            [sys.executable, "-m", "server", "--preset", "tiny", "--model", str(model),
             "--served-model-name", SERVED_NAME, "--log-level", "warning", *ENGINE_FLAGS,
             "--limit-images-per-request", str(max(args.images, 1))],
            "/ready",
        ),
        "vllm": (
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--served-model-name", SERVED_NAME, *ENGINE_FLAGS,
             "--limit-mm-per-prompt", json.dumps({"image": max(args.images, 1)})],
            "/health",
        ),
    }  # fmt: skip
    dp = args.data_parallel_size
    if dp > 1:
        sides = {
            "ours": sides["ours"],
            f"ours-dp{dp}": ([*sides["ours"][0], "--data-parallel-size", str(dp)], "/ready"),
        }
    with contextlib.ExitStack() as stack:
        servers = []
        for name, (argv, ready) in sides.items():
            if args.only in (None, name):
                say(f"[{name}] starting: {' '.join(argv[:4])} …")
                servers.append(
                    stack.enter_context(launched(name, argv, ready, env, work / f"{name}.log"))
                )
        results = benchmark(servers, bodies, args.concurrency, args.rounds, args.rate)

    say(
        f"\n{args.rounds} rounds x {args.requests} streaming chat requests, {args.images} "
        f"image(s) each, {args.max_tokens} output tokens, concurrency {args.concurrency}"
        f"{f', Poisson arrivals at {args.rate}/s' if args.rate else ''}, "
        f"model {model}"
    )
    say(f"{'server':<8}{'req/s':>9}{'out tok/s':>11}{'TTFT p50':>11}{'TTFT p99':>11}{'start s':>9}")
    for name, r in results.items():
        say(
            f"{name:<8}{r.req_per_s:>9.2f}{r.output_tok_per_s:>11.1f}"
            f"{r.ttft_p50_s * 1000:>9.0f}ms{r.ttft_p99_s * 1000:>9.0f}ms{r.startup_s:>9.1f}"
        )
    report: dict[str, object] = {name: asdict(r) for name, r in results.items()}
    report["workload"] = {
        "requests_per_round": args.requests, "rounds": args.rounds, "images": args.images,
        "max_tokens": args.max_tokens, "concurrency": args.concurrency, "rate": args.rate,
    }  # fmt: skip
    if len(results) == 2 and dp > 1:  # DP=N over DP=1: "ours" is then the one-engine side
        ratios = {k: 1 / v for k, v in compare(results, f"ours-dp{dp}").items()}
        report.update({f"dp{dp}_over_dp1_{k}": v for k, v in ratios.items()})
        say(
            f"DP={dp}/DP=1: throughput x{ratios['throughput_ratio']:.2f}, "
            f"TTFT p50 x{ratios['ttft_p50_ratio']:.2f}, p99 x{ratios['ttft_p99_ratio']:.2f}"
        )
    elif len(results) == 2:
        ratios = compare(results)
        report.update(ratios)
        say(
            f"ours/vllm: throughput x{ratios['throughput_ratio']:.2f}, "
            f"TTFT p50 x{ratios['ttft_p50_ratio']:.2f}, p99 x{ratios['ttft_p99_ratio']:.2f}"
        )
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
