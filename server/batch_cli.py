"""`kimi-vl-batch -i in.jsonl -o out.jsonl [server flags…]`: run a batch file offline.

The input is OpenAI's batch input format (one request per line: `custom_id`, `method`, `url`,
`body`; checked line by line before anything runs); the output is OpenAI's batch output format
(`id`, `custom_id`, `response: {status_code, request_id, body}`, `error`), one line per request,
failures included. The engine runs in this process (no HTTP), with the same request handling as
the server, `--concurrency` requests at a time (default: 4 x the engine's max_num_seqs). Every line
is appended and flushed as its request finishes, so an interrupted run loses nothing: after a
Ctrl-C (status 130) or an engine death (status 1; the requests it was running get no line and
the rest are cancelled), running the same command again skips the `custom_id`s already in the
output file. Any server flag (`--model`, `--preset`, `--max-model-len`, …) configures the
engine; with none, the built-in checkpoint is used, as with `kimi-vl-serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from server.aio import gather_or_cancel
from server.engine.contract import EngineDeadError

PROG = "kimi-vl-batch"
QUEUE_FACTOR = 4  # requests in flight per engine sequence slot (default --concurrency)
INTERRUPTED = 130  # exit status after Ctrl-C, as shells report a SIGINT death


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Other flags are the server's (kimi-vl-serve --help).",
    )
    parser.add_argument("-i", "--input", type=Path, required=True, help="batch input JSONL")
    parser.add_argument("-o", "--output", type=Path, required=True, help="batch output JSONL")
    parser.add_argument(
        "--concurrency", type=int, help="requests at once (default 4 x the engine's max_num_seqs)"
    )
    return parser.parse_known_args(argv)


def read_requests(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The input's requests (line number, parsed line), checked as the Files API checks an
    upload; a bad line stops the run with its number."""
    from server.serving.files import check_batch_file

    data = path.read_bytes()
    check_batch_file(io.BytesIO(data))
    return [
        (number, json.loads(raw))
        for number, raw in enumerate(data.splitlines(), start=1)
        if raw.strip()
    ]


def finished_ids(path: Path) -> set[str]:
    """custom_ids already in the output (a torn last line from a crash is dropped)."""
    if not path.exists():
        return set()
    done: set[str] = set()
    keep: list[bytes] = []
    for raw in path.read_bytes().splitlines(keepends=True):
        try:
            done.add(json.loads(raw)["custom_id"])
            keep.append(raw if raw.endswith(b"\n") else raw + b"\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_bytes(b"".join(keep))
    return done


async def run(args: argparse.Namespace, settings_argv: list[str]) -> int:
    from server.app import batch_services, create_app
    from server.cli import parse_settings
    from server.engine.vllm_engine import VLLMEngine
    from server.errors import APIError, EngineDead
    from server.serving.batches import ENDPOINTS, result_line

    requests = read_requests(args.input)
    done = finished_ids(args.output)
    todo = [(n, line) for n, line in requests if line["custom_id"] not in done]
    if not todo:
        sys.stderr.write(f"{PROG}: all {len(requests)} requests are already in {args.output}\n")
        return 0
    settings = parse_settings(settings_argv)
    engine = VLLMEngine(settings)
    app = create_app(settings, engine)
    services = batch_services(app.state.chat, app.state.completions, app.state.responses)
    interrupt = Interrupt(asyncio.current_task())
    failed = 0
    try:
        await engine.start()
        # More in flight than the engine runs: the next requests are prepared (template,
        # images decoded) and queued while the engine works, so it never waits for them.
        concurrency = args.concurrency or QUEUE_FACTOR * engine.model_info.max_num_seqs
        gate = asyncio.Semaphore(max(1, concurrency))
        bar = tqdm(total=len(requests), initial=len(done), unit="req", desc=PROG, file=sys.stderr)
        with open(args.output, "ab") as out:

            async def one(number: int, line: dict[str, Any]) -> None:
                nonlocal failed
                request_id = f"batch_req_{os.urandom(12).hex()}"
                async with gate:
                    try:
                        model = ENDPOINTS[line["url"]]
                        answer = await services[line["url"]](
                            model.model_validate(line["body"]), request_id
                        )
                        result = result_line(
                            request_id, line["custom_id"], 200, answer.model_dump(exclude_none=True)
                        )
                    except APIError as exc:
                        if interrupt.received:  # the engine may be dying of the same Ctrl-C
                            raise asyncio.CancelledError from exc
                        if isinstance(exc, EngineDead):  # not this request's answer: stop
                            raise EngineDeadError("the engine died") from exc
                        failed += 1
                        body = exc.envelope().model_dump()
                        result = result_line(request_id, line["custom_id"], exc.status_code, body)
                out.write(json.dumps(result).encode() + b"\n")
                out.flush()
                bar.update(1)

            started = time.perf_counter()
            await gather_or_cancel(one(n, line) for n, line in todo)
            bar.close()
        took = time.perf_counter() - started
        sys.stderr.write(
            f"{PROG}: {len(todo)} requests in {took:.1f} s ({len(todo) / took:.2f} req/s), "
            f"{failed} failed; {len(done)} were done before; output {args.output}\n"
        )
    except (asyncio.CancelledError, EngineDeadError):
        # A terminal's Ctrl-C reaches the engine's processes too: they may die of it before
        # the cancellation gets here, so an engine death after a SIGINT is the interruption.
        if not interrupt.received:
            raise
        interrupt.swallow()
        return INTERRUPTED
    finally:
        try:
            await engine.stop()
        finally:
            interrupt.restore()
    return 0


class Interrupt:
    """SIGINT while `task` runs: the first cancels it (the run stops between whole output
    lines), a second raises KeyboardInterrupt at once. The flag is set by the signal handler
    itself, before any other Python code of this thread runs."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.received = False
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._cancel: asyncio.Handle | None = None
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: object) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = True
        if self._task is not None:
            self._cancel = self._loop.call_soon_threadsafe(self._task.cancel)

    def swallow(self) -> None:
        """The interruption was handled: the task runs on normally (its clean-up awaits), and a
        cancellation not delivered yet never is."""
        if self._cancel is not None:
            self._cancel.cancel()
        if self._task is not None and self._task.cancelling():
            self._task.uncancel()

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._previous)


def main(argv: Sequence[str] | None = None) -> None:
    args, rest = parse_args(argv)
    from server.errors import APIError

    resume = (
        f"the finished requests are in {args.output}: run the same command again to do the rest"
    )
    try:
        status = asyncio.run(run(args, rest))
    except APIError as exc:  # a bad input line, a bad file
        sys.stderr.write(f"{PROG}: {args.input}: {exc.message}\n")
        status = 2
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C before or after the run
        status = INTERRUPTED
    except EngineDeadError as exc:
        sys.stderr.write(f"\n{PROG}: {exc}; {resume}\n")
        status = 1
    if status == INTERRUPTED:
        sys.stderr.write(f"\n{PROG}: interrupted; {resume}\n")
    raise SystemExit(status)


if __name__ == "__main__":
    main()
