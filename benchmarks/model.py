"""Model benchmark: our Kimi-VL class vs vLLM's built-in one, same checkpoint, same engine.

    python benchmarks/model.py [--model DIR] [--json PATH] [--rounds 1] [--dtype float32]
                               [--decode-tokens 64]

Both sides run vLLM's offline engine (`vllm.LLM`, in-process) on the same checkpoint (a fresh
mid-size one, `python -m server.model.tiny --size mid`, unless --model) with the same settings,
in vLLM's default compilation mode (no enforce_eager: vLLM compiles what its decorators mark).
The built-in class is fed our multimodal processor (it otherwise needs Hugging Face remote code)
and vLLM's native rotary path (its CPU rotary kernel mangles MLA's q/k layout; ours works around
it the same way). Each side is a fresh process; with --rounds R the sides alternate in ABBA
order (ours, built-in, built-in, ours, ...); within a round each workload runs 3 times and
its best run counts, and a side's figure is the median of its rounds.

Workloads: decode tok/s with 1, 16 and 64 concurrent sequences (short text prompts,
--decode-tokens each, `ignore_eos`), and prefill images/s with 1 and 4 images (448x336) per
request (one output token). JSON: `rows` = [{workload, ours, builtin, ratio}] (ratio = ours /
builtin, > 1: ours is faster), `device`, `dtype`, `compile_s` per side (engine start-up,
compilation included, median over rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (`python benchmarks/x.py`): find the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_model, write_json  # noqa: E402
from benchmarks.serve import round_order, say  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUILTIN_ARCH = "KimiVLBuiltinReference"
DECODE_CONCURRENCY = (1, 16, 64)
PREFILL_IMAGES = (1, 4)
PREFILL_REQUESTS = 8
REPEATS = 3  # each workload's figure is its best run of these, within a round
IMAGE_SIZE = (448, 336)


def register_builtin() -> None:
    """vLLM's built-in Kimi-VL class under its own architecture name, fed our processor."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.kimi_vl import KimiVLForConditionalGeneration as Builtin
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from server.model.processing import (
        KimiVLDummyInputsBuilder,
        KimiVLMultiModalProcessor,
        KimiVLProcessingInfo,
    )

    @MULTIMODAL_REGISTRY.register_processor(
        KimiVLMultiModalProcessor, info=KimiVLProcessingInfo, dummy_inputs=KimiVLDummyInputsBuilder
    )
    class KimiVLBuiltinReference(Builtin):
        def embed_multimodal(self, **kwargs):  # type: ignore[no-untyped-def]
            pv = kwargs.get("pixel_values")  # ours hands fp32 pixels; it expects the model dtype
            if pv is not None:
                dtype = self.multi_modal_projector.linear_1.weight.dtype
                kwargs["pixel_values"] = (
                    [p.to(dtype) for p in pv] if isinstance(pv, list) else pv.to(dtype)
                )
            return super().embed_multimodal(**kwargs)

    ModelRegistry.register_model(BUILTIN_ARCH, KimiVLBuiltinReference)


def _image(seed: int) -> Any:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def run_side(side: str, model: str, dtype: str, decode_tokens: int) -> dict[str, Any]:
    """One side's figures, in this process (the engine in-process, so the built-in class
    registered here is the one the model runner builds)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    overrides, compilation = None, None
    if side == "builtin":
        register_builtin()
        overrides = {"architectures": [BUILTIN_ARCH]}
        compilation = {"custom_ops": ["all", "-rotary_embedding"]}
    started = time.perf_counter()
    llm = LLM(
        model=model,
        dtype=dtype,  # type: ignore[arg-type]
        max_model_len=4096,
        max_num_seqs=max(DECODE_CONCURRENCY),
        gpu_memory_utilization=0.3,
        hf_overrides=overrides,
        compilation_config=compilation,
        # Video 0: the built-in class takes no video (vLLM would profile with one).
        limit_mm_per_prompt={"image": max(PREFILL_IMAGES), "video": 0},
        seed=0,
    )
    compile_s = time.perf_counter() - started
    loaded = llm.llm_engine.model_config.architectures[0]
    tokenizer = llm.get_tokenizer()
    figures: dict[str, float] = {}

    def timed(
        make: Callable[[int], list[TokensPrompt]], params: SamplingParams, repeats: int = REPEATS
    ) -> tuple[float, int]:
        """Best of `repeats` runs of make(run)'s prompts (noise on a shared machine only ever
        adds time), and the tokens one run made."""
        best, tokens = float("inf"), 0
        for run in range(repeats):
            prompts = make(run)
            t = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            best = min(best, time.perf_counter() - t)
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        return best, tokens

    text = tokenizer.encode("Describe the weather in a few words.")
    decode = SamplingParams(temperature=0.0, max_tokens=decode_tokens, ignore_eos=True)
    timed(lambda _: [TokensPrompt(prompt_token_ids=text)], decode, 1)  # warm-up
    for n in DECODE_CONCURRENCY:

        def sequences(run: int, n: int = n) -> list[TokensPrompt]:
            return [TokensPrompt(prompt_token_ids=text)] * n

        seconds, tokens = timed(sequences, decode)
        assert tokens == n * decode_tokens, tokens
        figures[f"decode tok/s, {n} seq"] = tokens / seconds
    pad = tokenizer.encode("<|media_start|>image<|media_content|><|media_pad|><|media_end|>")
    one_token = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    for k in PREFILL_IMAGES:

        def requests(run: int, k: int = k) -> list[TokensPrompt]:
            # Fresh pictures every run: vLLM caches processed images across requests.
            return [
                TokensPrompt(
                    prompt_token_ids=pad * k + text,
                    multi_modal_data={
                        "image": [_image(1000 * run + 100 * r + i) for i in range(k)]
                    },
                )
                for r in range(PREFILL_REQUESTS)
            ]

        timed(lambda _: requests(REPEATS)[:1], one_token, 1)  # warm-up
        seconds, _ = timed(requests, one_token)
        figures[f"prefill images/s, {k} per request"] = PREFILL_REQUESTS * k / seconds
    return {"side": side, "class": loaded, "compile_s": compile_s, "figures": figures}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: a fresh mid one)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--rounds", type=int, default=1, help="runs per side (ABBA order)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--side", choices=["ours", "builtin"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.side is not None:  # one side, in this process (started by the driver below)
        result = run_side(args.side, str(args.model), args.dtype, args.decode_tokens)
        args.out.write_text(json.dumps(result))
        return result

    work = Path(tempfile.mkdtemp(prefix="kimi-vl-model-bench-"))
    model = args.model
    if model is None:
        from server.model.tiny import write_checkpoint

        say("writing a mid-size checkpoint")
        model = write_checkpoint(work / "mid", size="mid")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_VL_")}
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "builtin": []}
    for number, side in enumerate(round_order(["ours", "builtin"], args.rounds), start=1):
        out = work / f"r{number}-{side}.json"
        command = [
            sys.executable, str(Path(__file__).resolve()), "--side", side, "--model", str(model),
            "--dtype", args.dtype, "--decode-tokens", str(args.decode_tokens), "--out", str(out),
        ]  # fmt: skip
        log = work / f"r{number}-{side}.log"
        with open(log, "wb") as sink:
            done = subprocess.run(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{side} failed:\n{log.read_text()[-3000:]}")
        result = json.loads(out.read_text())
        runs[side].append(result)
        shown = ", ".join(f"{k}: {v:.1f}" for k, v in result["figures"].items())
        say(f"  round {number} {side:<7} ({result['class']}) start {result['compile_s']:.0f} s; "
            f"{shown}")  # fmt: skip
    rows = []
    for workload in runs["ours"][0]["figures"]:
        ours = statistics.median(r["figures"][workload] for r in runs["ours"])
        builtin = statistics.median(r["figures"][workload] for r in runs["builtin"])
        rows.append({"workload": workload, "ours": round(ours, 2), "builtin": round(builtin, 2),
                     "ratio": round(ours / builtin, 3)})  # fmt: skip
    report = {
        "model": str(model),
        "device": f"cpu ({cpu_model()})",
        "dtype": args.dtype,
        "compile_s": {
            side: round(statistics.median(r["compile_s"] for r in results), 1)
            for side, results in runs.items()
        },
        "rows": rows,
    }
    say(f"{'workload':<36} {'ours':>9} {'builtin':>9} {'ratio':>7}")
    for row in rows:
        say(f"{row['workload']:<36} {row['ours']:>9.1f} {row['builtin']:>9.1f} "
            f"{row['ratio']:>7.3f}")  # fmt: skip
    say(f"start-up (compilation included): {report['compile_s']}")
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
