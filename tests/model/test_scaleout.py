"""Scale-out through vLLM's own machinery with our plugin: pipeline parallelism (2 stages, the
`mp` executor) gives the greedy tokens of one stage, every worker process builds our class
(asked of the workers, not the driver), and loading with PP skips the other stage's tensors
but still names a tensor that is truly missing.

PP runs compiled: vLLM 0.32's CPU runner sets up the buffer between stages only in its compile
warm-up (the server refuses PP with --enforce-eager on CPU, tests/engine/test_vllm_check.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.model.test_checkpoint_loading import load, rewrite_shard

pytestmark = pytest.mark.slow

CASES = ("text", "one_image", "three_images")
OUR_CLASS = "server.model.kimi_vl.KimiVLForConditionalGeneration"


def workers_built_our_class(run: dict, world: int) -> list[dict]:
    workers = run["workers"]
    assert len(workers) == world
    assert {w["class"] for w in workers} == {OUR_CLASS}
    pids = {w["pid"] for w in workers}
    assert len(pids) == world and os.getpid() not in pids  # separate worker processes
    return workers


@pytest.mark.parametrize("case", CASES)
def test_pipeline_parallel_2_matches_one_stage(run_generate, case: str) -> None:
    pp2, pp1 = run_generate("ours", pp=2, compiled=True), run_generate("ours")
    assert pp2["cases"][case]["token_ids"] == pp1["cases"][case]["token_ids"]
    assert len(pp2["cases"][case]["token_ids"]) == 32


def test_every_pipeline_stage_runs_our_class(run_generate) -> None:
    workers = workers_built_our_class(run_generate("ours", pp=2, compiled=True), 2)
    assert sorted(w["pp_rank"] for w in workers) == [0, 1]


def test_pipeline_loading_still_names_a_missing_tensor(tiny_ckpt: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_ckpt / "config.json").read_text())
    last = config["text_config"]["num_hidden_layers"] - 1  # on the last stage
    missing = f"language_model.model.layers.{last}.self_attn.o_proj.weight"
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    rewrite_shard(broken, missing, None)
    proc = load(broken, tmp_path, "--pp", "2", "--compiled")
    assert proc.returncode != 0
    assert missing in proc.stderr + proc.stdout
