"""Accuracy of the served demo checkpoint on fresh held-out questions, through the real server.

    python benchmarks/demo_accuracy.py [--json PATH] [--n 100] [--model DIR] [--offset K]

Starts `python -m server --preset demo --model DIR --served-model-name kimi-vl-demo` (what
`kimi-vl-serve` with no arguments serves), waits for /ready, and asks every task's questions
through the `openai` SDK (temperature 0) as server/model/demo/client.py writes them: images as
PNG data URLs, videos as `video_url` data URLs of H.264 MP4s at the clip's frame rate, media
first, then the question. Seeds are held-out (odd) seeds at `--offset`, never used in training.
JSON: `tasks` (task -> {`accuracy`, `n`}), `overall`, `server_s` (seconds from launch until the
server was ready), plus `eval_s` and the run's settings. `--dtype bfloat16` serves in bf16 (the
preset serves fp32); `--agreement` adds how often the served answer equals the training
implementation's (fp32) for the same bytes: an end-to-end check of media decoding and prompt
rendering.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import free_port  # noqa: E402
from server.model.demo import CHECKPOINT_DIR  # noqa: E402
from server.model.demo.checkpoint import SERVED_MODEL_NAME  # noqa: E402
from server.model.demo.client import sample_messages  # noqa: E402
from server.model.demo.tasks import TASKS, Sample, heldout_seed, make_sample  # noqa: E402
from server.model.demo.video import decode_mp4, encode_mp4  # noqa: E402

STARTUP_TIMEOUT_S = 600
DEFAULT_OFFSET = 1000  # away from the seeds the training run's own evaluations use


def as_sent(sample: Sample) -> tuple[list[dict], Sample]:
    """The chat messages for a sample, and the sample as the server will see it (video frames
    after the MP4 round trip), for the training implementation's side of `--agreement`."""
    if not sample.frames:
        return sample_messages(sample), sample
    seen = dataclasses.replace(sample, frames=decode_mp4(encode_mp4(sample.frames, sample.fps)))
    return sample_messages(sample), seen


def start_server(
    model: Path, port: int, log_path: Path, extra: list[str]
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "server", "--preset", "demo", "--model", str(model),
        "--served-model-name", SERVED_MODEL_NAME, "--port", str(port), "--log-level", "warning",
        *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_VL_")}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(base_url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready in {STARTUP_TIMEOUT_S} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def ask(client, msgs: list[dict]) -> str:  # type: ignore[no-untyped-def]
    reply = client.chat.completions.create(
        model=SERVED_MODEL_NAME, messages=msgs, temperature=0.0, max_tokens=8
    )
    return (reply.choices[0].message.content or "").strip()


def training_impl_answers(model_dir: Path, samples: list[Sample]) -> list[str]:
    """Greedy answers of the plain-PyTorch implementation (fp32) for the same inputs."""
    from server.model.demo import checkpoint
    from server.model.demo.evaluate import generate
    from server.model.demo.train import load_builder

    builder = load_builder(model_dir)
    model = checkpoint.load(model_dir)
    end = builder.ids["<|im_end|>"]
    out: list[str] = []
    for k in range(0, len(samples), 8):
        enc = [builder.encode(s) for s in samples[k : k + 8]]
        out += [builder.answer_from(g.token_ids) for g in generate(model, enc, end, 0, 8)]
    return out


def run(
    model: Path,
    n: int,
    offset: int,
    concurrency: int,
    log_path: Path,
    agreement: bool,
    dtype: str | None = None,
) -> dict:
    from openai import OpenAI

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    extra = ["--dtype", dtype] if dtype else []
    launched = time.perf_counter()
    process = start_server(model, port, log_path, extra)
    tasks: dict[str, dict[str, float]] = {}
    agree: dict[str, float] = {}
    try:
        wait_ready(base_url, process, log_path)
        server_s = time.perf_counter() - launched
        client = OpenAI(base_url=base_url + "/v1", api_key="unused", timeout=300)
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for task in TASKS:
                samples = [make_sample(task, heldout_seed(i, offset)) for i in range(n)]
                sent = [as_sent(s) for s in samples]
                answers = list(pool.map(lambda m: ask(client, m), [m for m, _ in sent]))
                hits = [a == s.answer for a, s in zip(answers, samples, strict=True)]
                tasks[task] = {"accuracy": sum(hits) / n, "n": n}
                line = f"{task:>13}: {tasks[task]['accuracy']:.3f} (n={n})"
                if agreement:
                    mine = training_impl_answers(model, [seen for _, seen in sent])
                    agree[task] = sum(a == b for a, b in zip(answers, mine, strict=True)) / n
                    line += f", same answer as the training implementation: {agree[task]:.3f}"
                print(line, flush=True)  # noqa: T201
        eval_s = time.perf_counter() - started
    finally:
        stop(process)
    overall = sum(v["accuracy"] * v["n"] for v in tasks.values()) / sum(
        v["n"] for v in tasks.values()
    )
    result = {
        "tasks": tasks,
        "overall": overall,
        "server_s": round(server_s, 1),
        "eval_s": round(eval_s, 1),
        "model": str(model),
        "dtype": dtype or "float32",
        "seed_offset": offset,
    }
    if agreement:
        result["agreement_with_training_impl"] = agree
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    ap.add_argument("--n", type=int, default=100, help="questions per task")
    ap.add_argument("--model", type=Path, default=CHECKPOINT_DIR)
    ap.add_argument("--offset", type=int, default=DEFAULT_OFFSET, help="held-out seed offset")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument(
        "--log", type=Path, default=Path(tempfile.gettempdir()) / "demo_accuracy_server.log"
    )
    ap.add_argument(
        "--agreement",
        action="store_true",
        help="also report how often the server's answer equals the training "
        "implementation's for the same input",
    )
    ap.add_argument("--dtype", default=None, help="serve in this dtype (the preset: float32)")
    args = ap.parse_args()
    result = run(
        args.model, args.n, args.offset, args.concurrency, args.log, args.agreement, args.dtype
    )
    text = json.dumps(result, indent=2)
    print(text)  # noqa: T201
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
