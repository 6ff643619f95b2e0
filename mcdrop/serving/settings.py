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
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, /v1/* needs 'Authorization: Bearer <key>'.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=64, description="Largest request body accepted, in bytes.")
    batching: bool = Field(default=True, description="Merge concurrent requests into shared engine calls.")
    torch_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="Threads torch may use for inference; 0: one per CPU core, less the one the event loop needs.",
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
        return self

    @property
    def queue_rows(self) -> int:
        """``queue_limit_rows``, or for 0 room for 64 full engine calls and at least one full-size request."""
        if self.queue_limit_rows:
            return self.queue_limit_rows
        return max(64 * self.max_batch_rows, self.max_texts_per_request * self.max_n_samples)

    @property
    def inference_threads(self) -> int:
        """``torch_threads``, or for 0 the cores this process may use minus one (at least one)."""
        if self.torch_threads:
            return self.torch_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores - 1)

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
