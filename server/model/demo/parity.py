"""Parity of the served model (vLLM with our class) and the training implementation.

`python -m server.model.demo.parity --model DIR [--n 300] [--dtype float32|bfloat16] [--json OUT]`

Held-out questions go to vLLM's offline engine as the server sends them (prompt ids with one
pad per image block or one video block, plus the media; frames with their timestamps), and to
the training model as the already expanded sequence. Reported: prompt ids identical after the
processor's expansion, greedy answers identical, the largest difference of first-token
log-probabilities over vLLM's top-5 tokens (and over the chosen tokens alone), and the question
where the top-5 differ most. Runs vLLM in this process (call it in a fresh one).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from server.model.demo import checkpoint
from server.model.demo.evaluate import generate, heldout_samples
from server.model.demo.prompt import Encoded, PromptBuilder
from server.model.demo.tasks import Sample
from server.model.image_processing import ImageProcessorConfig
from server.model.tokenizer import TikTokenTokenizer

PARITY_OFFSET = 2  # held-out seeds of their own
MAX_NEW_TOKENS = 8


def engine_prompt(sample: Sample, raw: Encoded) -> dict:
    mm: dict = (
        {
            "video": [
                (
                    np.stack([np.asarray(f) for f in sample.frames]),
                    {"timestamps": [i / sample.fps for i in range(len(sample.frames))]},
                )
            ]
        }
        if sample.frames
        else {"image": list(sample.images)}
    )
    return {"prompt_token_ids": raw.prompt_ids, "multi_modal_data": mm}


def run(model_dir: Path, n: int, dtype: str, threads: int = 2) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams

    tokenizer = TikTokenTokenizer.from_pretrained(str(model_dir))
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    builder = PromptBuilder(tokenizer, ImageProcessorConfig.from_dict(pre))
    samples = heldout_samples(-(-n // 7), offset=PARITY_OFFSET)[:n]
    full = [builder.encode(s) for s in samples]
    raw = [builder.encode(s, expand=False) for s in samples]

    llm = LLM(
        model=str(model_dir),
        dtype=dtype,  # type: ignore[arg-type]
        enforce_eager=True,
        max_model_len=4096,
        max_num_seqs=8,
        gpu_memory_utilization=0.3,
        limit_mm_per_prompt={"image": 4, "video": 1},
        seed=0,
    )
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, logprobs=5)
    prompts: list = [engine_prompt(s, r) for s, r in zip(samples, raw, strict=True)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    del llm

    torch.set_num_threads(threads)
    model = checkpoint.load(model_dir)
    end = builder.ids["<|im_end|>"]
    mine = []
    for k in range(0, len(full), 8):
        mine += generate(model, full[k : k + 8], end, 0, MAX_NEW_TOKENS)

    same_prompt = same_answer = correct_engine = correct_ours = 0
    worst = chosen = 0.0
    worst_at: dict = {}
    mismatches = []
    for i, (s, f, o, g) in enumerate(zip(samples, full, outs, mine, strict=True)):
        same_prompt += list(o.prompt_token_ids or []) == f.prompt_ids
        engine_answer = builder.answer_from(list(o.outputs[0].token_ids))
        our_answer = builder.answer_from(g.token_ids)
        same_answer += engine_answer == our_answer
        correct_engine += engine_answer == s.answer
        correct_ours += our_answer == s.answer
        if engine_answer != our_answer:
            mismatches.append({"task": s.task, "engine": engine_answer, "ours": our_answer})
        first_step = o.outputs[0].logprobs[0]  # type: ignore[index]
        for tok, lp in first_step.items():
            diff = abs(lp.logprob - float(g.first_logprobs[tok]))
            if tok == o.outputs[0].token_ids[0]:
                chosen = max(chosen, diff)
            if diff >= worst:
                worst = diff
                worst_at = {"index": i, "task": s.task, "rank": lp.rank, "logprob": lp.logprob}
    return {
        "n": len(samples),
        "dtype": dtype,
        "prompt_ids_identical": same_prompt / len(samples),
        "answers_agree": same_answer / len(samples),
        "engine_accuracy": correct_engine / len(samples),
        "training_impl_accuracy": correct_ours / len(samples),
        "max_first_token_logprob_diff": worst,
        "max_chosen_token_logprob_diff": chosen,
        "worst_first_token": worst_at,
        "mismatches": mismatches[:20],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m server.model.demo.parity", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--model", type=Path, default=None, help="checkpoint dir (default: the shipped demo)"
    )
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from server.model.demo import CHECKPOINT_DIR

    result = run(args.model or CHECKPOINT_DIR, args.n, args.dtype)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)  # noqa: T201


if __name__ == "__main__":
    main()
