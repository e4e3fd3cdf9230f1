"""Smoke test: benchmarks/serve.py runs both servers end to end at tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.serve import arrival_times, main, round_order


def test_rounds_alternate_abba() -> None:
    assert round_order(["ours", "vllm"], 3) == ["ours", "vllm", "vllm", "ours", "ours", "vllm"]


def test_open_loop_arrivals_are_a_seeded_poisson_process() -> None:
    assert arrival_times(5, None) == [0.0] * 5  # closed loop: the gate paces the requests
    times = arrival_times(4000, 20.0)
    assert times[0] == 0.0 and times == sorted(times) and times == arrival_times(4000, 20.0)
    assert times[-1] / (len(times) - 1) == pytest.approx(1 / 20, rel=0.05)  # mean gap 1/rate


@pytest.mark.slow
def test_serve_bench_runs_both_servers_and_writes_ratios(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    args = ["--requests", "6", "--rounds", "2", "--max-tokens", "4", "--json", str(out)]
    returned = main(args)

    report = json.loads(out.read_text())
    assert report["throughput_ratio"] == pytest.approx(returned["throughput_ratio"])
    for key in ("throughput_ratio", "ttft_p50_ratio", "ttft_p99_ratio"):
        assert report[key] > 0, key
    for side in ("ours", "vllm"):
        figures = report[side]
        assert len(figures["rounds"]) == 2 and figures["requests"] == 6
        assert figures["req_per_s"] > 0 and 0 < figures["ttft_p50_s"] <= figures["ttft_p99_s"]
        assert figures["output_tok_per_s"] == pytest.approx(figures["req_per_s"] * 4, rel=0.01)
    # both sides saw the same prompts (main raises otherwise)
    assert {r["prompt_tokens"] for s in ("ours", "vllm") for r in report[s]["rounds"]} == {
        report["ours"]["rounds"][0]["prompt_tokens"]
    }
