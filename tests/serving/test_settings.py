"""Settings: defaults, environment parsing, CLI overrides and messages that say how to fix a bad value."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from mcdrop.core.errors import ConfigError
from mcdrop.serving.serve import add_arguments, build_settings
from mcdrop.serving.settings import Settings, describe_errors, env_name

KEY_A = "k" * 16
KEY_B = "0123456789abcdef-xyz"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MCDROP_"):
            monkeypatch.delenv(name)


def test_defaults_are_valid_and_built_without_environment() -> None:
    settings = Settings()
    assert settings.port == 8000
    assert settings.model_dir == Path("models")
    assert settings.batching is True
    assert settings.api_keys == []


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCDROP_PORT", "9001")
    monkeypatch.setenv("MCDROP_BATCHING", "false")
    monkeypatch.setenv("MCDROP_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("MCDROP_API_KEYS", f" {KEY_A} , {KEY_B},")
    monkeypatch.setenv("MCDROP_MAX_WAIT_MS", "0.5")
    settings = Settings()
    assert (settings.port, settings.batching, settings.log_level, settings.max_wait_ms) == (9001, False, "warning", 0.5)
    assert settings.api_key_bytes == (KEY_A.encode(), KEY_B.encode())
    assert KEY_A not in repr(settings)  # keys never show up in logs


def test_keyword_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCDROP_PORT", "9001")
    assert Settings(port=9002).port == 9002


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"port": 0}, "MCDROP_PORT (--port): Input should be greater than or equal to 1"),
        (
            {"device": "tpu"},
            "MCDROP_DEVICE (--device): must be auto, cpu, cuda or cuda:N with N a GPU index (got 'tpu')",
        ),
        ({"max_wait_ms": -1}, "MCDROP_MAX_WAIT_MS (--max-wait-ms): Input should be greater than or equal to 0"),
        ({"request_timeout_s": 0}, "MCDROP_REQUEST_TIMEOUT_S (--request-timeout-s): Input should be greater than 0"),
        ({"api_keys": "short"}, "MCDROP_API_KEYS (--api-keys): each API key must be at least 16 printable"),
        (
            {"queue_limit": 10, "max_texts_per_request": 64},
            "MCDROP_QUEUE_LIMIT (10) is below MCDROP_MAX_TEXTS_PER_REQUEST (64), so a full-size request could "
            "never be queued; raise the queue limit or lower the per-request limit",
        ),
        (
            {"queue_limit_rows": 1000, "max_texts_per_request": 64, "max_n_samples": 100},
            "MCDROP_QUEUE_LIMIT_ROWS (1000) is below MCDROP_MAX_TEXTS_PER_REQUEST x MCDROP_MAX_N_SAMPLES "
            "(64 x 100 = 6400), so a full-size request could never be queued; raise it, lower those limits, "
            "or set 0 for the default",
        ),
        ({"unknown": 1}, "MCDROP_UNKNOWN"),
    ],
)
def test_invalid_values_name_the_variable_and_the_fix(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)  # type: ignore[arg-type]
    if message == "MCDROP_UNKNOWN":
        assert "Extra inputs are not permitted" in describe_errors(caught.value)
    else:
        assert message in describe_errors(caught.value)


@pytest.mark.parametrize(
    ("value", "device"),
    [("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1"), ("CUDA:0", "cuda:0")],
)
def test_device_takes_what_the_engine_takes(value: str, device: str) -> None:
    assert Settings(device=value).device == device


@pytest.mark.parametrize("value", ["tpu", "cuda:", "cuda:x", "cuda:-1", "cuda1", "cpu:0", ""])
def test_device_refuses_what_the_engine_refuses(value: str) -> None:
    with pytest.raises(ValidationError, match="must be auto, cpu, cuda or cuda:N"):
        Settings(device=value)


def test_queued_rows_default_to_64_engine_calls_and_one_full_request() -> None:
    assert Settings().queue_rows == 64 * 4096
    assert Settings(max_batch_rows=16).queue_rows == 64 * 1000  # a full-size request still fits
    assert Settings(queue_limit_rows=100_000).queue_rows == 100_000


def test_secret_keys_are_not_echoed_in_errors() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(api_keys="short-secret")  # type: ignore[arg-type]
    assert "short-secret" not in str(caught.value)
    assert "short-secret" not in describe_errors(caught.value)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_every_setting_has_a_flag_and_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCDROP_PORT", "9001")
    monkeypatch.setenv("MCDROP_MAX_WAIT_MS", "7")
    args = _parse(
        [
            "--model-dir", "/srv/models", "--port", "9100", "--no-batching", "--device", "CPU",
            "--api-keys", f"{KEY_A},{KEY_B}", "--log-level", "debug", "--max-texts-per-request", "8",
            "--queue-limit", "8",
        ]
    )  # fmt: skip
    settings = build_settings(args)
    assert settings.model_dir == Path("/srv/models")
    assert (settings.port, settings.batching, settings.device, settings.log_level) == (9100, False, "cpu", "debug")
    assert settings.max_wait_ms == 7  # not given as a flag: the environment stays in force
    assert build_settings(_parse(["--device", "cuda:1"])).device == "cuda:1"
    assert len(settings.api_keys) == 2
    help_text = argparse.ArgumentParser()
    add_arguments(help_text)
    text = help_text.format_help()
    for field in Settings.model_fields:
        assert "--" + field.replace("_", "-") in text
        assert "MCDROP_" + field.upper() in text


def test_bad_flag_value_raises_a_config_error_naming_flag_and_variable() -> None:
    with pytest.raises(ConfigError, match=r"MCDROP_MAX_N_SAMPLES \(--max-n-samples\): Input should be greater"):
        build_settings(_parse(["--max-n-samples", "0"]))


def test_every_setting_is_documented_in_the_readme_and_the_api_reference() -> None:
    root = Path(__file__).resolve().parents[2]
    for document in ("README.md", "docs/api.md"):
        text = (root / document).read_text(encoding="utf-8")
        missing = [env_name(field) for field in Settings.model_fields if f"| `{env_name(field)}` |" not in text]
        assert not missing, f"{document} has no settings row for {', '.join(missing)}"
