"""Settings: precedence CLI > environment > preset > defaults, presets, and the CLI surface."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from server import cli
from server.settings import (
    ENV_ONLY_FIELDS,
    InvalidSettings,
    Settings,
    available_presets,
    env_var,
    flag_spellings,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("KIMI_VL_") or name == "PROMETHEUS_MULTIPROC_DIR":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def write_preset(tmp_path: Path, text: str) -> str:
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.model is None and settings.builtin_checkpoint == "demo"
    assert settings.model_name == "kimi-vl-demo"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.limit_images_per_request == 64
    # the demo preset takes every frame of its short clips; with a model the defaults apply
    assert (settings.limit_videos_per_request, settings.video_fps, settings.max_video_fps) == (
        4,
        30.0,
        30.0,
    )
    real = load_settings({"model": "some/model"})
    assert (real.video_fps, real.max_video_fps) == (1.0, 4.0)
    assert (settings.max_video_frames, settings.max_video_tokens) == (64, 16384)
    assert settings.max_video_seconds == 3600
    assert settings.open_health_and_metrics is True
    assert settings.api_keys == []
    # No model and no preset: the demo checkpoint with the demo preset's engine settings.
    assert settings.preset == "demo" and settings.dtype == "float32" and settings.enforce_eager
    assert settings.enable_reasoning is True
    assert load_settings({"model": "some/model"}).dtype == "auto"
    tiny_preset = load_settings({"preset": "tiny"})
    assert tiny_preset.builtin_checkpoint == "tiny" and tiny_preset.model_name == "kimi-vl-tiny"
    assert load_settings({"model": "some/model"}).builtin_checkpoint is None
    tiny = settings.tiny_checkpoint_dir
    assert tiny.parent == Path(os.environ["HOME"]) / ".cache" / "kimi-vl-server"
    assert tiny.name.startswith("tiny-")
    assert not tiny.exists()  # Settings never creates it


@pytest.mark.parametrize(
    ("cli_port", "env_port", "preset_port", "want"),
    [
        ("7003", "7002", 7001, 7003),
        (None, "7002", 7001, 7002),
        (None, None, 7001, 7001),
        (None, None, None, 8000),
        ("7003", None, 7001, 7003),
        ("7003", "7002", None, 7003),
    ],
)
def test_precedence(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cli_port: str | None,
    env_port: str | None,
    preset_port: int | None,
    want: int,
) -> None:
    preset_lines = ["default_temperature: 0.5"]
    if preset_port is not None:
        preset_lines.append(f"port: {preset_port}")
    monkeypatch.setenv("KIMI_VL_PRESET", write_preset(tmp_path, "\n".join(preset_lines)))
    if env_port is not None:
        monkeypatch.setenv("KIMI_VL_PORT", env_port)
    argv = ["--port", cli_port] if cli_port else []
    settings = cli.parse_settings(argv)
    assert settings.port == want
    assert settings.default_temperature == 0.5  # untouched preset values still apply


def test_cli_preset_overrides_env_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIMI_VL_PRESET", "kimi-vl-a3b-instruct")
    assert cli.parse_settings(["--preset", "tiny"]).dtype == "float32"
    assert cli.parse_settings([]).model == "moonshotai/Kimi-VL-A3B-Instruct"


def test_bool_flags_override_preset() -> None:
    thinking = cli.parse_settings(["--preset", "kimi-vl-a3b-thinking"])
    assert thinking.enable_reasoning is True
    off = cli.parse_settings(["--preset", "kimi-vl-a3b-thinking", "--no-enable-reasoning"])
    assert off.enable_reasoning is False
    assert cli.parse_settings(["--no-open-health-and-metrics"]).open_health_and_metrics is False


def test_env_lists_and_bools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KIMI_VL_API_KEYS", "key-a, key-b,,key-c")
    monkeypatch.setenv("KIMI_VL_ALLOWED_MEDIA_HOSTS", "Localhost,127.0.0.1")
    monkeypatch.setenv("KIMI_VL_ENFORCE_EAGER", "true")
    monkeypatch.setenv("KIMI_VL_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.api_keys == ["key-a", "key-b", "key-c"]
    assert settings.allowed_media_hosts == ["localhost", "127.0.0.1"]
    assert settings.enforce_eager is True
    assert settings.log_level == "debug"
    assert settings.prometheus_multiproc_dir == str(tmp_path)


def test_repeatable_and_comma_flags() -> None:
    settings = cli.parse_settings(
        [
            "--api-key",
            "a",
            "--api-key",
            "b,c",
            "--allowed-media-hosts",
            "x.example",
            "--allowed-media-hosts",
            "y.example",
            "--cors-origins",
            "https://a.example",
        ]
    )
    assert settings.api_keys == ["a", "b", "c"]
    assert settings.allowed_media_hosts == ["x.example", "y.example"]
    assert settings.cors_origins == ["https://a.example"]


@pytest.mark.parametrize(
    "name", ["tiny", "kimi-vl-a3b-instruct", "kimi-vl-a3b-thinking", "kimi-vl-a3b-thinking-2506"]
)
def test_every_preset_loads(name: str) -> None:
    settings = load_settings({"preset": name})
    assert settings.default_max_tokens is not None


def test_preset_values() -> None:
    assert set(available_presets()) >= {
        "tiny",
        "kimi-vl-a3b-instruct",
        "kimi-vl-a3b-thinking",
        "kimi-vl-a3b-thinking-2506",
    }
    s2506 = load_settings({"preset": "kimi-vl-a3b-thinking-2506"})
    assert (s2506.model, s2506.default_temperature, s2506.default_max_tokens) == (
        "moonshotai/Kimi-VL-A3B-Thinking-2506",
        0.8,
        32768,
    )
    assert (s2506.in_token_limit, s2506.max_model_len, s2506.enable_reasoning) == (
        16384,
        131072,
        True,
    )
    instruct = load_settings({"preset": "kimi-vl-a3b-instruct"})
    assert (instruct.default_temperature, instruct.enable_reasoning) == (0.2, False)
    thinking = load_settings({"preset": "kimi-vl-a3b-thinking"})
    assert thinking.default_temperature == 0.6 and (thinking.default_max_tokens or 0) >= 2048
    tiny = load_settings({"preset": "tiny"})
    assert tiny.model is None and tiny.enforce_eager and tiny.kv_cache_space_gib == 1
    assert tiny.max_model_len == 4096 and tiny.gpu_memory_utilization == 0.3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("port: [1", "not valid YAML"),
        ("- a\n- b", "mapping"),
        ("bogus_key: 1", "bogus_key"),
        ("port: 0", "--port"),
    ],
)
def test_bad_preset_files(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(InvalidSettings, match=match):
        load_settings({"preset": write_preset(tmp_path, text)})


def test_unknown_preset_and_missing_file() -> None:
    with pytest.raises(InvalidSettings, match="unknown preset 'nope'.*tiny"):
        load_settings({"preset": "nope"})
    with pytest.raises(InvalidSettings, match="not found"):
        load_settings({"preset": "/no/such/preset.yaml"})


def test_local_media_path_must_exist(tmp_path: Path) -> None:
    assert load_settings({"allowed_local_media_path": str(tmp_path)}).allowed_local_media_path == (
        tmp_path.resolve()
    )
    with pytest.raises(InvalidSettings, match="allowed-local-media-path"):
        load_settings({"allowed_local_media_path": str(tmp_path / "missing")})


# Every flag with a value and the parsed result; the coverage assertion below fails when a field
# is added without a line here.
FLAG_CASES: dict[str, tuple[list[str], object]] = {
    "model": (["--model", "/ckpt"], "/ckpt"),
    "preset": (["--preset", "tiny"], "tiny"),
    "served_model_name": (["--served-model-name", "kimi", "kimi-alias"], ["kimi", "kimi-alias"]),
    "tiny_checkpoint_dir": (["--tiny-checkpoint-dir", "/tmp/t"], Path("/tmp/t")),
    "host": (["--host", "0.0.0.0"], "0.0.0.0"),
    "port": (["--port", "9001"], 9001),
    "api_keys": (["--api-key", "k1", "--api-key", "k2"], ["k1", "k2"]),
    "open_health_and_metrics": (["--no-open-health-and-metrics"], False),
    "cors_origins": (["--cors-origins", "https://x.example"], ["https://x.example"]),
    "max_request_body_bytes": (["--max-request-body-bytes", "2048"], 2048),
    "max_queued_requests": (["--max-queued-requests", "9"], 9),
    "log_level": (["--log-level", "WARNING"], "warning"),
    "max_model_len": (["--max-model-len", "8192"], 8192),
    "tensor_parallel_size": (["--tensor-parallel-size", "2"], 2),
    "pipeline_parallel_size": (["--pipeline-parallel-size", "2"], 2),
    "data_parallel_size": (["--data-parallel-size", "3"], 3),
    "distributed_executor_backend": (["--distributed-executor-backend", "ray"], "ray"),
    "graceful_shutdown_seconds": (["--graceful-shutdown-seconds", "120"], 120.0),
    "max_num_seqs": (["--max-num-seqs", "4"], 4),
    "dtype": (["--dtype", "bfloat16"], "bfloat16"),
    "enforce_eager": (["--enforce-eager"], True),
    "gpu_memory_utilization": (["--gpu-memory-utilization", "0.5"], 0.5),
    "kv_cache_space_gib": (["--kv-cache-space-gib", "2.5"], 2.5),
    "limit_images_per_request": (["--max-images-per-request", "512"], 512),
    "limit_videos_per_request": (["--limit-videos-per-request", "8"], 8),
    "max_video_fps": (["--max-video-fps", "40"], 40.0),  # above the demo preset's video_fps
    "video_fps": (["--video-fps", "0.5"], 0.5),
    "max_video_frames": (["--max-video-frames", "512"], 512),
    "max_video_tokens": (["--max-video-tokens", "32768"], 32768),
    "max_video_seconds": (["--max-video-seconds", "90"], 90.0),
    "max_document_pages": (["--max-document-pages", "12"], 12),
    "state_dir": (["--state-dir", "/srv/kimi"], Path("/srv/kimi")),
    "max_file_bytes": (["--max-file-bytes", "4096"], 4096),
    "batch_concurrency": (["--batch-concurrency", "3"], 3),
    "mm_processor_cache_gb": (["--mm-processor-cache-gb", "0.5"], 0.5),
    "cpu_malloc_mmap_threshold": (["--cpu-malloc-mmap-threshold", "0"], 0),
    "max_document_tokens": (["--max-document-tokens", "5000"], 5000),
    "document_page_timeout": (["--document-page-timeout", "2.5"], 2.5),
    "engine_restarts": (["--engine-restarts", "0"], 0),
    "max_header_bytes": (["--max-header-bytes", "8192"], 8192),
    "max_header_count": (["--max-header-count", "40"], 40),
    "max_connections": (["--max-connections", "64"], 64),
    "keep_alive_timeout": (["--keep-alive-timeout", "20"], 20.0),
    "max_image_pixels": (["--max-image-pixels", "1000000"], 1_000_000),
    "media_fetch_timeout": (["--media-fetch-timeout", "2.5"], 2.5),
    "max_media_bytes": (["--max-media-bytes", "1000"], 1000),
    "allowed_media_hosts": (
        ["--allowed-media-hosts", "a.example,b.example"],
        ["a.example", "b.example"],
    ),
    "allowed_local_media_path": (["--allowed-local-media-path", "/"], Path("/")),
    "enable_reasoning": (["--enable-reasoning"], True),
    "default_temperature": (["--default-temperature", "0.7"], 0.7),
    "default_top_p": (["--default-top-p", "0.9"], 0.9),
    "default_max_tokens": (["--default-max-tokens", "100"], 100),
    "in_token_limit": (["--in-token-limit", "16384"], 16384),
    "cpu_frontend_off_worker_cores": (["--no-cpu-frontend-off-worker-cores"], False),
    "cors_allow_headers": (
        ["--cors-allow-headers", "Authorization", "X-Custom"],
        ["Authorization", "X-Custom"],
    ),
    "responses_store_size": (["--responses-store-size", "5"], 5),
    "enable_prefix_caching": (["--no-enable-prefix-caching"], False),
    "scheduling_policy": (["--scheduling-policy", "priority"], "priority"),
    "json_whitespace": (["--json-whitespace"], True),
    "ui": (["--no-ui"], False),
}


def test_flag_table_covers_every_field() -> None:
    assert set(FLAG_CASES) == set(Settings.model_fields) - ENV_ONLY_FIELDS


@pytest.mark.parametrize("field", sorted(FLAG_CASES))
def test_every_flag_parsed(field: str) -> None:
    argv, want = FLAG_CASES[field]
    assert getattr(cli.parse_settings(argv), field) == want


def test_video_fps_within_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidSettings, match="--video-fps.*exceeds --max-video-fps"):
        load_settings({"video_fps": 2.0, "max_video_fps": 1.5})
    monkeypatch.setenv("KIMI_VL_MAX_VIDEO_FPS", "10")
    monkeypatch.setenv("KIMI_VL_VIDEO_FPS", "6")
    assert (load_settings().video_fps, load_settings().max_video_fps) == (6.0, 10.0)


def test_a_presets_video_fps_yields_to_an_explicit_lower_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the demo preset (no model) samples 30 fps; a lower cap from the CLI or the environment
    # lowers that default rate instead of failing
    capped = load_settings({"max_video_fps": 5.0})
    assert (capped.preset, capped.video_fps, capped.max_video_fps) == ("demo", 5.0, 5.0)
    assert load_settings({"max_video_fps": 40.0}).video_fps == 30.0  # a higher cap: unchanged
    with pytest.raises(InvalidSettings, match="--video-fps.*exceeds --max-video-fps"):
        load_settings({"max_video_fps": 5.0, "video_fps": 6.0})  # explicit rates still checked
    monkeypatch.setenv("KIMI_VL_MAX_VIDEO_FPS", "2")
    assert (load_settings().video_fps, load_settings().max_video_fps) == (2.0, 2.0)


def test_limit_images_flag_spellings() -> None:
    assert cli.parse_settings(["--limit-images-per-request", "7"]).limit_images_per_request == 7


def test_help_lists_every_flag_and_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for field in Settings.model_fields:
        if field in ENV_ONLY_FIELDS:
            continue
        for flag in flag_spellings(field):
            assert flag in text
        assert env_var(field) in text


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "0"],
        ["--port", "abc"],
        ["--port", "70000"],
        ["--max-media-bytes", "-1"],
        ["--limit-images-per-request", "513"],
        ["--limit-images-per-request", "-1"],
        ["--preset", "nope"],
        ["--dtype", "fp8"],
        ["--gpu-memory-utilization", "1.5"],
        ["--media-fetch-timeout", "0"],
        ["--tensor-parallel-size", "0"],
        ["--log-level", "loud"],
        ["--max-image-pixels", "999999999"],
        ["--max-video-frames", "513"],
        ["--max-video-tokens", "32769"],
        ["--video-fps", "40"],  # above --max-video-fps (the demo preset: 30)
        ["--max-video-fps", "0"],
        ["--limit-videos-per-request", "9"],
        ["--max-video-seconds", "0"],
        ["--no-such-flag"],
    ],
)
def test_bad_values_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_bad_env_value_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KIMI_VL_PORT", "-5")
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "KIMI_VL_PORT" in capsys.readouterr().err


def test_unknown_env_var_warned(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KIMI_VL_PROT", "9000")  # typo of KIMI_VL_PORT
    assert cli.parse_settings([]).port == 8000
    assert "KIMI_VL_PROT" in capsys.readouterr().err


def test_api_key_values_not_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidSettings) as err:
        load_settings({"api_keys": 12345, "port": "x"})
    assert "12345" not in str(err.value)


def test_main_hands_settings_to_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[Settings] = []
    fake_app = types.ModuleType("server.app")
    fake_app.run = received.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "server.app", fake_app)
    cli.main(["--preset", "tiny", "--port", "8123"])
    assert len(received) == 1 and received[0].port == 8123 and received[0].dtype == "float32"


def test_python_dash_m_server_bad_flag_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_VL_")}
    result = subprocess.run(
        [sys.executable, "-m", "server", "--port", "abc"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2
    assert "--port" in result.stderr and "Traceback" not in result.stderr
