"""Run greedy generation on a checkpoint in a fresh process and dump tokens + logprobs as JSON.

Used by the parity tests (ours vs vLLM's built-in class, TP=2 / PP=2 / Ray vs TP=1):
    python -m tests.model.generate_runner --model DIR --impl ours|builtin --dtype float32 \
        --cases CASES.json --out OUT.json [--tp 2] [--pp 2] [--backend mp|ray] \
        [--max-tokens 32] [--solo] [--compiled]
The output also lists, per worker process, the model class that worker built (asked of the
workers themselves, not the driver), its pid and its TP / PP rank.
CASES.json: [{"name", "prompt_token_ids", "images": [[w, h, seed], ...],
              "videos": [{"size": [w, h], "frames": n, "seed": s, "timestamps": [sec, ...] | null}]}].
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from benchmarks.model import BUILTIN_ARCH, register_builtin


def make_image(w: int, h: int, seed: int):  # type: ignore[no-untyped-def]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise: real-looking content that survives bicubic resizing.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) % 256)], -1
    )
    noise = rng.integers(0, 64, size=(h, w, 3))
    return Image.fromarray(((base + noise) % 256).astype("uint8"), "RGB")


def make_video(spec: dict):  # type: ignore[no-untyped-def]
    """Frames [T, H, W, 3] uint8 (frame i = make_image with seed+i), with optional timestamps."""
    import numpy as np

    w, h = spec["size"]
    frames = np.stack(
        [np.asarray(make_image(w, h, spec["seed"] + i)) for i in range(spec["frames"])]
    )
    return frames, {"timestamps": spec.get("timestamps")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--impl", choices=["ours", "builtin"], default="ours")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cases", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--backend", choices=["mp", "ray"], default=None, help="executor backend")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument(
        "--solo", action="store_true", help="one prompt per generate() call (no batching)"
    )
    ap.add_argument(
        "--compiled", action="store_true", help="vLLM's default compilation (no enforce_eager)"
    )
    args = ap.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # The workers are asked (a pickled function) which class they built.
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    world = args.tp * args.pp
    if world == 1 and args.backend is None:
        # In-process engine: the built-in reference registration must be visible to the model runner.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    else:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(i) for i in range(world)))

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from server.model.checkpoint import check_model_dir

    check_model_dir(args.model)  # what our server does before starting an engine

    overrides, compilation = None, None
    if args.impl == "builtin":
        register_builtin()
        overrides = {"architectures": [BUILTIN_ARCH]}
        # vLLM's CPU rotary kernel mangles MLA's [T, H, D] q/k (our class works around it,
        # see server/model/decoder.py); give the reference the native rope path too.
        compilation = {"custom_ops": ["all", "-rotary_embedding"]}
    cases = json.loads(open(args.cases).read())
    max_images = max(len(c["images"]) for c in cases)
    max_videos = max(len(c.get("videos", [])) for c in cases)
    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        enforce_eager=not args.compiled,
        max_model_len=4096,
        max_num_seqs=4,
        gpu_memory_utilization=0.3,
        tensor_parallel_size=args.tp,
        pipeline_parallel_size=args.pp,
        distributed_executor_backend=args.backend,
        hf_overrides=overrides,
        compilation_config=compilation,
        limit_mm_per_prompt={"image": max(max_images, 1), "video": max_videos},
        seed=0,
    )
    model_cls = llm.llm_engine.model_config.architectures[0]
    params = SamplingParams(
        temperature=0.0, max_tokens=args.max_tokens, logprobs=5, ignore_eos=True
    )
    prompts: list[TokensPrompt] = []
    for c in cases:
        p: TokensPrompt = {"prompt_token_ids": c["prompt_token_ids"]}
        mm: dict[str, Any] = {}
        if c["images"]:
            mm["image"] = [make_image(*im) for im in c["images"]]
        if c.get("videos"):
            mm["video"] = [make_video(v) for v in c["videos"]]
        if mm:
            p["multi_modal_data"] = mm
        prompts.append(p)
    if args.solo:
        outs = [llm.generate([p], params, use_tqdm=False)[0] for p in prompts]
    else:
        outs = llm.generate(prompts, params, use_tqdm=False)
    result_cases: dict[str, dict[str, Any]] = {}
    result = {"architecture": model_cls, "cases": result_cases, "workers": _workers(llm)}
    for c, o in zip(cases, outs, strict=True):
        comp = o.outputs[0]
        # Both are filled in for every finished request that asked for logprobs.
        assert o.prompt_token_ids is not None and comp.logprobs is not None
        result_cases[c["name"]] = {
            "num_prompt_tokens": len(o.prompt_token_ids),
            "token_ids": list(comp.token_ids),
            "logprobs": [{str(k): v.logprob for k, v in step.items()} for step in comp.logprobs],
        }
    with open(args.out, "w") as f:
        json.dump(result, f)


def _workers(llm: Any) -> list[dict[str, Any]]:
    """What each worker process reports about itself: the class it built, pid, ranks."""

    def report(worker: Any) -> dict[str, Any]:
        import os

        from vllm.distributed import get_pp_group, get_tp_group

        cls = type(worker.model_runner.get_model())
        return {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "pid": os.getpid(),
            "tp_rank": get_tp_group().rank_in_group,
            "pp_rank": get_pp_group().rank_in_group,
        }

    return list(llm.collective_rpc(report))


if __name__ == "__main__":
    main()
