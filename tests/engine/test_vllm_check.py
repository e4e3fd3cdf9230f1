"""The vLLM adapter's pre-flight check: what the engine would refuse is refused before a response
starts (a 400 instead of an error event in a stream)."""

from __future__ import annotations

import pytest

from server.engine.contract import (
    GenerateRequest,
    OutputConstraint,
    RequestRejectedError,
    SamplingOptions,
)
from server.engine.vllm_engine import VLLMEngine, sampling_params
from server.settings import load_settings


def request(constraint: OutputConstraint | None = None, priority: int = 0) -> GenerateRequest:
    return GenerateRequest("r", [1, 2], SamplingOptions(constraint=constraint), priority=priority)


@pytest.mark.parametrize(
    "constraint",
    [
        OutputConstraint("regex", "(unclosed"),
        OutputConstraint("grammar", "root ::= ("),
        OutputConstraint("json", {"type": "array", "uniqueItems": True}),
        OutputConstraint("structural_tag", "{not json"),
    ],
)
def test_constraints_that_do_not_compile_are_refused(constraint: OutputConstraint) -> None:
    with pytest.raises(RequestRejectedError):
        VLLMEngine(load_settings({})).check(request(constraint))


def test_valid_constraints_pass() -> None:
    engine = VLLMEngine(load_settings({}))
    for constraint in (
        OutputConstraint("regex", "[a-z]+"),
        OutputConstraint("choice", ("a", "b")),
        OutputConstraint("json", {"type": "object"}),
        OutputConstraint("json_object", True),
        OutputConstraint("grammar", 'root ::= "x"'),
    ):
        engine.check(request(constraint))


def test_priority_needs_priority_scheduling() -> None:
    with pytest.raises(RequestRejectedError) as info:
        VLLMEngine(load_settings({})).check(request(priority=3))
    assert info.value.param == "priority"
    VLLMEngine(load_settings({"scheduling_policy": "priority"})).check(request(priority=3))


def test_sampling_params_carry_the_extras() -> None:
    options = SamplingOptions(
        constraint=OutputConstraint("structural_tag", {"type": "structural_tag"}),
        skip_special_tokens=False,
        spaces_between_special_tokens=False,
        include_stop_str_in_output=True,
    )
    params = sampling_params(options, [7])
    assert not params.skip_special_tokens and not params.spaces_between_special_tokens
    assert params.include_stop_str_in_output
    assert params.structured_outputs.structural_tag == '{"type": "structural_tag"}'


def test_engine_args_follow_the_settings() -> None:
    from server.engine.vllm_engine import engine_args

    default = engine_args(load_settings({"served_model_name": ["a", "b"]}), "/ckpt")
    assert default.served_model_name == ["a", "b"] and default.scheduling_policy == "fcfs"
    assert default.structured_outputs_config.disable_any_whitespace  # compact JSON by default
    assert default.enable_prefix_caching is None  # vLLM's default unless set
    assert default.mm_processor_cache_gb == 1.0  # bounded below vLLM's 4 GiB
    assert default.limit_mm_per_prompt == {"image": 64 + 100, "video": 4}  # images + PDF pages
    chosen = engine_args(
        load_settings(
            {
                "enable_prefix_caching": False,
                "scheduling_policy": "priority",
                "json_whitespace": True,
                "mm_processor_cache_gb": 0,
            }
        ),
        "/ckpt",
    )
    assert chosen.enable_prefix_caching is False and chosen.scheduling_policy == "priority"
    assert not chosen.structured_outputs_config.disable_any_whitespace
    assert chosen.mm_processor_cache_gb == 0


def test_pipeline_parallel_on_cpu_is_refused_eager_with_the_way_out() -> None:
    from server.engine.vllm_engine import engine_args

    args = engine_args(
        load_settings({"pipeline_parallel_size": 2, "enforce_eager": False}), "/ckpt"
    )
    assert args.pipeline_parallel_size == 2 and not args.enforce_eager
    with pytest.raises(ValueError, match="without --enforce-eager"):
        engine_args(load_settings({"pipeline_parallel_size": 2, "enforce_eager": True}), "/ckpt")
