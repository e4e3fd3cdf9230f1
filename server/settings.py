"""The one Settings object: CLI > environment (`KIMI_VL_*`) > preset file > defaults.

This is the only module that reads `os.environ`. Everything downstream (app, engine adapter,
media limits) receives a `Settings` instance. Preset files are flat YAML maps whose keys are the
field names below; a preset is named by `preset` (CLI or `KIMI_VL_PRESET`).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from server.model.media_format import MAX_VIDEO_TOKENS

ENV_PREFIX = "KIMI_VL_"


def _configs_dir() -> Path:
    """The presets: the checkout's configs/ (editable install), else the wheel's copy."""
    checkout = Path(__file__).resolve().parent.parent / "configs"
    installed = Path(sys.prefix) / "share" / "kimi-vl-server" / "configs"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


CONFIGS_DIR = _configs_dir()
TINY_MODEL_NAME = "kimi-vl-tiny"
TINY_PRESET = "tiny"  # no model: the tiny random checkpoint, written on first use
DEMO_MODEL_NAME = "kimi-vl-demo"
DEMO_PRESET = "demo"  # applies when neither a model nor a preset is given: the demo checkpoint
# Pillow refuses images above 2 * Image.MAX_IMAGE_PIXELS before we can apply our own cap, so a
# larger setting could never take effect; keep the limit honest instead of silently ignoring it.
PILLOW_HARD_PIXEL_LIMIT = 2 * 89_478_485
MAX_VIDEO_FRAMES_CAP = 512
MAX_VIDEO_FPS_CAP = 60.0

# Fields with no CLI flag (environment only).
ENV_ONLY_FIELDS = frozenset({"prometheus_multiproc_dir"})
# Fields whose flag is not simply `--field-name`; the first spelling is the canonical one.
FLAG_SPELLINGS: dict[str, tuple[str, ...]] = {
    "api_keys": ("--api-key",),
    "limit_images_per_request": ("--limit-images-per-request", "--max-images-per-request"),
}


class InvalidSettings(ValueError):
    """A setting from any source (CLI, environment, preset) is invalid; the message says which."""


def _package_version() -> str:
    try:
        return importlib.metadata.version("kimi-vl-server")
    except importlib.metadata.PackageNotFoundError:  # running from a bare source tree
        return "dev"


def _default_tiny_dir() -> Path:
    return Path.home() / ".cache" / "kimi-vl-server" / f"tiny-{_package_version()}"


def _default_state_dir() -> Path:
    return Path.home() / ".cache" / "kimi-vl-server" / "state"


def resolve_preset_path(preset: str) -> Path:
    """Map a preset name (`tiny`, `kimi-vl-a3b-thinking`) or a YAML path to an existing file."""
    candidate = Path(preset).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
        if candidate.is_file():
            return candidate
        raise InvalidSettings(f"preset file not found: {preset}")
    named = CONFIGS_DIR / f"{preset}.yaml"
    if named.is_file():
        return named
    known = ", ".join(available_presets()) or "none"
    raise InvalidSettings(f"unknown preset {preset!r} (available: {known}; or give a YAML path)")


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def load_preset(preset: str) -> dict[str, Any]:
    """Read a preset file; its keys must be Settings field names."""
    path = resolve_preset_path(preset)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InvalidSettings(f"preset {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidSettings(f"preset {path} must be a mapping of setting names to values")
    unknown = sorted(set(data) - set(Settings.model_fields) - {"preset"})
    if unknown:
        raise InvalidSettings(f"preset {path} has unknown keys: {', '.join(unknown)}")
    data.pop("preset", None)  # a preset cannot chain to another preset
    return data


class _PresetSource(PydanticBaseSettingsSource):
    """Lowest-priority source above the defaults: values from the preset file.

    It runs after the CLI (init kwargs) and environment sources, so `current_state` already holds
    the preset name chosen by either of them. With neither a model nor a preset, the server
    serves the trained demo checkpoint shipped in the package: the `demo` preset applies
    (CPU-friendly engine settings) and becomes the `preset` setting. A preset's `video_fps`
    above a `max_video_fps` given by the CLI or the environment is lowered to that cap: the
    explicit cap wins over the preset's default rate (an explicit `video_fps` above it is
    still an error).
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        state = self.current_state
        preset = state.get("preset")
        if not preset and state.get("model") is None:
            values = {**load_preset(DEMO_PRESET), "preset": DEMO_PRESET}
        else:
            values = load_preset(str(preset)) if preset else {}
        cap, rate = state.get("max_video_fps"), values.get("video_fps")
        if cap is not None and rate is not None and "video_fps" not in state:
            try:
                values["video_fps"] = min(float(rate), float(cap))
            except (TypeError, ValueError):
                pass  # not numbers: the fields' own validation reports them
        return values


def _split_list(value: Any) -> Any:
    """Accept `a,b` (environment) as well as lists (CLI, YAML); drop empty items."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, list | tuple):
        return [str(v).strip() for v in items if str(v).strip()]
    return items


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every knob of the server. Field `x_y` has flag `--x-y` and variable `KIMI_VL_X_Y`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
    )

    # -- model and preset ---------------------------------------------------------------------
    model: str | None = Field(
        default=None,
        description="HF model id or local checkpoint dir; unset = the tiny CPU checkpoint",
    )
    preset: str | None = Field(
        default=None, description="preset name in configs/ or a YAML file path"
    )
    served_model_name: CommaList = Field(
        default_factory=list,
        description="model names clients may send; /v1/models lists all, responses carry the first",
    )
    tiny_checkpoint_dir: Path = Field(
        default_factory=_default_tiny_dir, description="cache folder of the tiny checkpoint"
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="durable state: uploaded files (Files API) and their SQLite database",
    )
    batch_concurrency: int = Field(
        default=2,
        ge=1,
        le=256,
        description="batch requests running at once (they start only while the engine has a "
        "free sequence slot)",
    )
    max_file_bytes: int = Field(
        default=200 * 2**20, ge=1024, description="largest file /v1/files accepts"
    )

    # -- HTTP ---------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", min_length=1, description="address to bind")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to bind")
    api_keys: CommaList = Field(
        default_factory=list, description="accepted Bearer keys (repeatable); none = no auth"
    )
    open_health_and_metrics: bool = Field(
        default=True, description="serve /health and /metrics without an API key"
    )
    ui: bool = Field(
        default=True, description="serve the web playground at / (chat with images and videos)"
    )
    cors_origins: CommaList = Field(default_factory=list, description="allowed CORS origins")
    cors_allow_headers: CommaList = Field(
        default_factory=lambda: ["*"],
        description="request headers a CORS preflight may ask for (with --cors-origins)",
    )
    responses_store_size: int = Field(
        default=1000, ge=0, description="responses kept for /v1/responses retrieval (LRU)"
    )
    max_request_body_bytes: int = Field(default=64 * 2**20, ge=1024, description="request body cap")
    engine_restarts: int = Field(
        default=3,
        ge=0,
        le=100,
        description="restarts of a dead engine before the server exits non-zero (0: exit at once)",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="request line and headers size cap, counted as they arrive (431 above it)",
    )
    max_header_count: int = Field(
        default=100, ge=8, description="request header count cap (431 above it)"
    )
    max_connections: int | None = Field(
        default=None, ge=1, description="open connections and requests at once (503 above it)"
    )
    keep_alive_timeout: float = Field(
        default=5.0, gt=0, le=3600, description="seconds an idle keep-alive connection stays open"
    )
    graceful_shutdown_seconds: float = Field(
        default=30.0,
        ge=0,
        description="on SIGTERM, how long in-flight requests may finish (the k8s manifest's "
        "terminationGracePeriodSeconds leaves room for it and the engine's stop)",
    )
    max_queued_requests: int = Field(
        default=256, ge=1, description="requests waiting for the engine before 503"
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", description="log level"
    )

    # -- engine ---------------------------------------------------------------------------------
    max_model_len: int | None = Field(
        default=None, ge=16, description="context length (prompt + output)"
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="tensor-parallel ranks")
    pipeline_parallel_size: int = Field(default=1, ge=1, description="pipeline-parallel stages")
    data_parallel_size: int = Field(default=1, ge=1, description="data-parallel engine replicas")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        default=None,
        description="vLLM's executor for TP/PP workers: mp (one node) or ray (several nodes); unset = vLLM picks",
    )
    max_num_seqs: int | None = Field(
        default=None, ge=1, description="max sequences per engine step"
    )
    cpu_frontend_off_worker_cores: bool = Field(
        default=True,
        description="CPU engine: keep the HTTP front end and vLLM's engine core off the cores "
        "the model workers are bound to",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="weight/activation dtype"
    )
    enforce_eager: bool = Field(default=False, description="disable CUDA graphs / compilation")
    enable_prefix_caching: bool | None = Field(
        default=None,
        description="reuse the KV cache of shared prompt prefixes; unset = vLLM's default",
    )
    scheduling_policy: Literal["fcfs", "priority"] = Field(
        default="fcfs", description="engine queue order; priority honours the request field"
    )
    json_whitespace: bool = Field(
        default=False,
        description="let constrained JSON outputs (response_format, structured_outputs.json, "
        "tool arguments) contain free whitespace; off = compact JSON as OpenAI returns",
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0.0, le=1.0, description="fraction of accelerator memory vLLM may use"
    )
    kv_cache_space_gib: float | None = Field(
        default=None, gt=0.0, description="KV cache size in GiB on CPU (VLLM_CPU_KVCACHE_SPACE)"
    )
    prometheus_multiproc_dir: str | None = Field(
        default=None,
        validation_alias=AliasChoices("prometheus_multiproc_dir", "PROMETHEUS_MULTIPROC_DIR"),
        description="prometheus_client multiprocess folder (set by vLLM with several API servers)",
    )

    # -- media ----------------------------------------------------------------------------------
    limit_images_per_request: int = Field(
        default=64, ge=0, le=512, description="max images per request (video frames apart)"
    )
    limit_videos_per_request: int = Field(
        default=4, ge=0, le=8, description="max videos per request"
    )
    max_video_fps: float = Field(
        default=4.0, gt=0.0, le=MAX_VIDEO_FPS_CAP, description="largest video.fps a request may ask"
    )
    video_fps: float = Field(
        default=1.0,
        gt=0.0,
        le=MAX_VIDEO_FPS_CAP,
        description="frames sampled per second of video when a request sets no video.fps",
    )
    max_video_frames: int = Field(
        default=64,
        ge=1,
        le=MAX_VIDEO_FRAMES_CAP,
        description="frames per video (default and largest video.max_frames)",
    )
    max_video_tokens: int = Field(
        default=16384,
        ge=1,
        le=MAX_VIDEO_TOKENS,  # vLLM sizes its encoder cache from it
        description="image tokens of one video's frames (default and largest video.max_tokens)",
    )
    max_video_seconds: float = Field(
        default=3600.0, gt=0.0, le=86400.0, description="longest video accepted, in seconds"
    )
    max_document_pages: int = Field(
        default=100,
        ge=1,
        le=1000,
        description="PDF pages read per request, all its documents together (largest "
        "document.max_pages)",
    )
    max_document_tokens: int = Field(
        default=65536,
        ge=1,
        description="image tokens of a request's document pages (default and largest "
        "document.max_tokens)",
    )
    document_page_timeout: float = Field(
        default=10.0,
        gt=0.0,
        le=600.0,
        description="seconds PDFium may take to open a document or to render one page",
    )
    cpu_malloc_mmap_threshold: int = Field(
        default=1 << 20,
        ge=0,
        description="CPU engine: allocations of at least this many bytes are mmapped and given "
        "back when freed (glibc MALLOC_MMAP_THRESHOLD_; 0 = glibc's own moving threshold)",
    )
    mm_processor_cache_gb: float = Field(
        default=1.0,
        ge=0.0,
        le=64.0,
        description="GiB of processed images kept for re-use (multi-turn chats resend them), in "
        "the API process and each engine core; 0 = none",
    )
    max_image_pixels: int = Field(
        default=50_000_000,
        ge=1,
        le=PILLOW_HARD_PIXEL_LIMIT,
        description="max decoded width*height of one image (checked before decoding)",
    )
    media_fetch_timeout: float = Field(
        default=10.0, gt=0.0, le=600.0, description="seconds to fetch one media URL"
    )
    max_media_bytes: int = Field(
        default=20 * 2**20, ge=1, description="max bytes of one media item"
    )
    allowed_media_hosts: CommaList = Field(
        default_factory=list,
        description="host names fetched even when they resolve to private addresses",
    )
    allowed_local_media_path: Path | None = Field(
        default=None, description="directory whose files may be used as file:// media"
    )

    # -- generation defaults (from the preset) ---------------------------------------------------
    enable_reasoning: bool | None = Field(
        default=None, description="split ◁think▷…◁/think▷ into reasoning_content; unset = preset"
    )
    default_temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, description="temperature when a request has none"
    )
    default_top_p: float | None = Field(
        default=None, gt=0.0, le=1.0, description="top_p when a request has none"
    )
    default_max_tokens: int | None = Field(
        default=None, ge=1, description="max_tokens when a request has none"
    )
    in_token_limit: int | None = Field(
        default=None, ge=1, description="override the image processor's in_token_limit"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first. No dotenv / secrets files: one place for configuration.
        return (init_settings, env_settings, _PresetSource(settings_cls))

    @field_validator(
        "api_keys",
        "cors_origins",
        "cors_allow_headers",
        "allowed_media_hosts",
        "served_model_name",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_media_hosts")
    @classmethod
    def _hosts_lowercase(cls, value: list[str]) -> list[str]:
        return [h.lower().rstrip(".").strip("[]") for h in value]

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("model", "preset", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("allowed_local_media_path")
    @classmethod
    def _existing_dir(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        resolved = Path(value).expanduser().resolve()
        if not resolved.is_dir():
            raise ValueError(f"{value} is not an existing directory")
        return resolved

    @field_validator("tiny_checkpoint_dir", "state_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return Path(value).expanduser()

    @field_validator("video_fps")
    @classmethod
    def _video_fps_within_cap(cls, value: float, info: ValidationInfo) -> float:
        cap = info.data.get("max_video_fps")  # declared above video_fps, so validated first
        if cap is not None and value > cap:
            raise ValueError(f"exceeds --max-video-fps ({cap:g})")
        return value

    @property
    def builtin_checkpoint(self) -> Literal["tiny", "demo"] | None:
        """No model given: with the `tiny` preset the tiny random checkpoint (written to
        `tiny_checkpoint_dir` on first use), otherwise the trained demo checkpoint."""
        if self.model is not None:
            return None
        return "tiny" if self.preset == TINY_PRESET else "demo"

    @property
    def model_name(self) -> str:
        """The name responses carry (the first served name)."""
        return self.model_names[0]

    @property
    def model_names(self) -> list[str]:
        """Every name clients may send in `model`; `/v1/models` lists them all."""
        builtin = TINY_MODEL_NAME if self.builtin_checkpoint == "tiny" else DEMO_MODEL_NAME
        return self.served_model_name or [self.model or builtin]


def flag_spellings(field_name: str) -> tuple[str, ...]:
    return FLAG_SPELLINGS.get(field_name, ("--" + field_name.replace("_", "-"),))


def env_var(field_name: str) -> str:
    if field_name == "prometheus_multiproc_dir":
        return "PROMETHEUS_MULTIPROC_DIR"
    return ENV_PREFIX + field_name.upper()


def _describe_error(err: Mapping[str, Any]) -> str:
    loc = err.get("loc") or ()
    name = str(loc[0]) if loc else ""
    if name in Settings.model_fields:
        where = f"{flag_spellings(name)[0]} / {env_var(name)} / preset key {name!r}"
    else:
        where = name or "settings"
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if name != "api_keys" and err.get("type") != "missing" and "input" in err:
        msg = f"{msg} (got {err['input']!r})"
    return f"{where}: {msg}"


def unknown_environment_variables() -> list[str]:
    """`KIMI_VL_*` variables that match no setting (most likely typos; they are ignored)."""
    known = {env_var(name) for name in Settings.model_fields}
    return sorted(
        k for k in os.environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known
    )


def load_settings(cli_overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build Settings from CLI values (highest priority), the environment and the preset file.

    Raises InvalidSettings with a message naming the flag and variable of each bad value.
    """
    try:
        return Settings(**dict(cli_overrides or {}))
    except ValidationError as exc:
        raise InvalidSettings("; ".join(_describe_error(e) for e in exc.errors())) from None
    except SettingsError as exc:  # e.g. a malformed environment value pydantic-settings parses
        raise InvalidSettings(str(exc)) from None
