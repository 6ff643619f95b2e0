"""Service settings: one validated object built from ``MCDROP_*`` environment variables and ``mcdrop serve`` flags.

``Settings()`` reads the environment; keyword arguments (the CLI passes its flags this way) override it. Nothing is
built at import time: ``create_app`` and ``mcdrop serve`` construct it. Every value is checked at construction and a
bad one fails with a message that names the variable and says how to fix it (see ``describe_errors``)::

    settings = Settings(model_dir="models", port=8080)   # MCDROP_* variables fill in the rest
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "MCDROP_"

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
DType = Literal["float32", "float16", "bfloat16"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
# 64 texts of 256 tokens at 61 samples on a model with dropout before its recurrence: about 5 s on one CPU thread
# at the shipped GRU's 4-9 µs per unit, so a request at the limit and one queued before it both finish within the
# 30 s default deadline (docs/api.md, "Cost of a request").
DEFAULT_MAX_REQUEST_COST = 1_000_000


class Settings(BaseSettings):
    """Everything ``mcdrop serve`` can be told; see docs/api.md for the full table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, hide_input_in_errors=True
    )

    host: str = Field(default="127.0.0.1", description="Interface to listen on (0.0.0.0 for every interface).")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to listen on.")
    model_dir: Path = Field(
        default=Path("models"), description="Directory searched for checkpoints (every subdirectory with config.json)."
    )
    default_model: str | None = Field(
        default=None,
        description="Model used when a request names none. Unset: the only model, or requests must name one.",
    )
    device: str = Field(
        default="auto", description="Inference device: auto (cuda when available), cpu, cuda or cuda:N (GPU N)."
    )
    dtype: DType = Field(default="float32", description="Inference dtype: float32, float16 or bfloat16.")
    max_texts_per_request: int = Field(default=64, ge=1, le=100_000, description="Most texts one request may carry.")
    max_text_chars: int = Field(default=10_000, ge=1, description="Longest text accepted, in characters.")
    max_n_samples: int = Field(default=1000, ge=1, le=100_000, description="Largest n_samples a request may ask for.")
    max_batch_rows: int = Field(
        default=4096,
        ge=1,
        description="Rows (texts x samples) per engine call: merged batches stop growing here; also the "
        "engine's chunk size.",
    )
    max_wait_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=10_000.0,
        description="Extra time a batch waits for more requests once the engine is free (0: run what is queued; "
        "requests arriving while the engine is busy are merged anyway).",
    )
    queue_limit: int = Field(
        default=1024, ge=1, description="Texts that may wait per model; beyond it requests get 503 + Retry-After."
    )
    queue_limit_rows: int = Field(
        default=0,
        ge=0,
        description="Rows (texts x samples) that may wait per model; beyond it requests get 503 + Retry-After. "
        "0: 64 full engine calls (64 x max_batch_rows), and at least one full-size request.",
    )
    max_risk: float | None = Field(
        default=None,
        ge=0.01,
        le=0.5,
        description="Default max_risk of a request that gives none: every prediction of a calibrated model then "
        "carries an accept/abstain decision (unset: only requests that ask get one).",
    )
    coverage: float = Field(
        default=0.9, ge=0.5, le=0.99, description="Default coverage of the conformal prediction sets."
    )
    mc_tolerance: float | None = Field(
        default=None,
        ge=0.0,
        le=0.5,
        description="Default mc_tolerance of a request that gives none: adaptive sampling stops a text once every "
        "class probability's standard error is at most this (0: always n_samples; unset: each checkpoint's "
        "mc_tolerance, 0 unless it sets one).",
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0.0, description="Deadline for a prediction from arrival to answer; past it the answer is 504."
    )
    max_request_cost: int = Field(
        default=DEFAULT_MAX_REQUEST_COST,
        ge=1,
        description="Most one request may cost the engine, in cost units (texts x samples x tokens read for a model "
        "with dropout before its recurrence, texts x samples otherwise); beyond it 422 before any work.",
    )
    queue_limit_cost: int = Field(
        default=0,
        ge=0,
        description="Cost units that may be queued or running per model; beyond it requests get 503 + Retry-After. "
        "0: 2 x MCDROP_MAX_REQUEST_COST.",
    )
    shutdown_grace_s: float = Field(
        default=25.0,
        ge=1.0,
        le=3600.0,
        description="Seconds from SIGTERM to exit: /readyz answers 503 at once, queued and running work is stopped "
        "(503) 2 s before the end. Keep it below the orchestrator's kill timeout.",
    )
    require_all_models: bool = Field(
        default=False,
        description="Refuse to serve when any checkpoint fails to load (off: serve the others and report the failed "
        "ones in /readyz and mcdrop_model_load_failures_total).",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, /v1/* needs 'Authorization: Bearer <key>'.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=64, description="Largest request body accepted, in bytes.")
    max_header_bytes: int = Field(
        default=16_384,
        ge=1024,
        le=1_048_576,
        description="Largest request line plus headers, in bytes; beyond it the answer is 431 and the connection "
        "is closed.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        description="Time a connection has, from its start or from the end of its previous answer, to send "
        "complete request headers; then it is closed.",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0.0,
        description="Time a request has to send its whole body once its headers are in (not per read); past it "
        "the answer is 408.",
    )
    keep_alive_s: float = Field(
        default=5.0, gt=0.0, description="Time an idle keep-alive connection is kept open between requests."
    )
    drain_bytes: int = Field(
        default=4_194_304,
        ge=0,
        description="Request body bytes read and discarded after an early answer (413), so that the client reads "
        "the answer instead of a reset; beyond them the connection is closed.",
    )
    drain_timeout_s: float = Field(
        default=5.0, gt=0.0, description="Longest time spent discarding a request body after an early answer."
    )
    max_connections: int = Field(
        default=2048,
        ge=1,
        description="Open connections (and requests in progress) at once; a request on a connection beyond it "
        "gets 503 + Retry-After and the connection is closed.",
    )
    max_in_flight: int = Field(
        default=64,
        ge=1,
        description="Predictions being parsed, queued or run at once; beyond it POST /v1/predict gets 503 + "
        "Retry-After before its body is read.",
    )
    busy_delay_s: float = Field(
        default=1.0,
        ge=0.0,
        le=60.0,
        description="Time a prediction refused for MCDROP_MAX_IN_FLIGHT waits before its 503 is sent (0: at once), "
        "so that clients retrying at once, ignoring Retry-After, retry at most this often.",
    )
    busy_max_rate: float = Field(
        default=500.0,
        ge=0.0,
        le=1_000_000.0,
        description="Such refusals sent per second at most: while more clients wait for one than this rate times "
        "MCDROP_BUSY_DELAY_S, each is held longer (waiting clients / this rate, at most 30 s), so that a storm of "
        "them costs the same CPU however large it grows (0: no ceiling).",
    )
    batching: bool = Field(default=True, description="Merge concurrent requests into shared engine calls.")
    torch_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="Torch threads of each model's inference thread; 0: the CPU cores less one for the event loop, "
        "shared out among the models (at least one each).",
    )
    warmup_passes: int = Field(
        default=1,
        ge=0,
        le=10_000,
        description="Warm-up predictions per model, at the largest merged batch, before /readyz reports ready "
        "(0: none).",
    )
    log_level: LogLevel = Field(default="info", description="Logging level: debug, info, warning, error, critical.")
    access_log: bool = Field(default=True, description="Log one line per request with its timing breakdown.")

    @field_validator("log_level", "device", "dtype", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N with N a GPU index (got {value!r})")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            secret = key.get_secret_value()
            if len(secret) < 16 or not secret.isprintable() or " " in secret:
                raise ValueError(
                    "each API key must be at least 16 printable characters without spaces or commas; "
                    "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
        return keys

    @field_validator("default_model")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.queue_limit < self.max_texts_per_request:
            raise ValueError(
                f"MCDROP_QUEUE_LIMIT ({self.queue_limit}) is below MCDROP_MAX_TEXTS_PER_REQUEST "
                f"({self.max_texts_per_request}), so a full-size request could never be queued; "
                "raise the queue limit or lower the per-request limit"
            )
        largest = self.max_texts_per_request * self.max_n_samples
        if 0 < self.queue_limit_rows < largest:
            raise ValueError(
                f"MCDROP_QUEUE_LIMIT_ROWS ({self.queue_limit_rows}) is below MCDROP_MAX_TEXTS_PER_REQUEST x "
                f"MCDROP_MAX_N_SAMPLES ({self.max_texts_per_request} x {self.max_n_samples} = {largest}), so a "
                "full-size request could never be queued; raise it, lower those limits, or set 0 for the default"
            )
        if 0 < self.queue_limit_cost < self.max_request_cost:
            raise ValueError(
                f"MCDROP_QUEUE_LIMIT_COST ({self.queue_limit_cost}) is below MCDROP_MAX_REQUEST_COST "
                f"({self.max_request_cost}), so a request at the cost limit could never be queued; raise it, lower "
                "the request limit, or set 0 for the default"
            )
        return self

    @property
    def queue_cost(self) -> int:
        """``queue_limit_cost``, or for 0 room for two requests at the cost limit (one running, one waiting)."""
        return self.queue_limit_cost or 2 * self.max_request_cost

    @property
    def queue_rows(self) -> int:
        """``queue_limit_rows``, or for 0 room for 64 full engine calls and at least one full-size request."""
        if self.queue_limit_rows:
            return self.queue_limit_rows
        return max(64 * self.max_batch_rows, self.max_texts_per_request * self.max_n_samples)

    def inference_threads(self, n_models: int) -> int:
        """Torch threads of each model's inference thread: ``torch_threads``, or for 0 the cores this process may
        use less one for the event loop, shared out among the models (at least one each)."""
        if self.torch_threads:
            return self.torch_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, (cores - 1) // max(1, n_models))

    @property
    def api_key_bytes(self) -> tuple[bytes, ...]:
        """The configured keys as UTF-8 bytes."""
        return tuple(key.get_secret_value().encode() for key in self.api_keys)


def env_name(field: str) -> str:
    """``max_wait_ms`` -> ``MCDROP_MAX_WAIT_MS``."""
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    """``max_wait_ms`` -> ``--max-wait-ms``."""
    return "--" + field.replace("_", "-")


def describe_errors(error: ValidationError) -> str:
    """One line per invalid setting, naming its variable and flag: ``MCDROP_PORT (--port): ...``."""
    lines = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item["loc"]]
        message = str(item["msg"]).removeprefix("Value error, ")
        if loc and loc[0] in Settings.model_fields:
            lines.append(f"{env_name(loc[0])} ({flag_name(loc[0])}): {message}")
        else:
            lines.append(f"invalid settings: {message}")
    return "; ".join(lines)
