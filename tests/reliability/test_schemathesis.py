"""Schemathesis against a live ``mcdrop serve``'s ``/openapi.json``, every check on (status codes, content types,
response schemas and headers, positive and negative data, unsupported methods, ...), bounded in examples and time.

The server runs with small limits so that every schema-valid body fits the body limit and is cheap to predict;
the schema states those limits, so the generated data follows them. A failure prints schemathesis' report.

The two Open Inference Protocol ``infer`` operations are left out: their body is read raw (JSON or the binary
tensor extension) and its rules (a shape that agrees with the data, outputs that need ``max_risk``) are not
expressible in JSON Schema, so schema-valid bodies would be refused by design. The codec's unit tests and the
real tritonclient and KServe clients (``tests/e2e/test_v2_clients.py``) cover them; every other ``/v2`` operation
is checked here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reliability_kit import server_starter, tiny_models

HERE = Path(__file__).resolve().parent
MAX_EXAMPLES = 100
LIMIT_S = 240


def test_the_live_schema_holds_under_schemathesis(tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    if not schemathesis.exists():
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'")
    start = server_starter(tiny_models(tmp_path), tmp_path)
    with start(max_texts_per_request=8, max_text_chars=200, max_n_samples=50, busy_delay_s=0) as server:
        command = [str(schemathesis), "run", server.url + "/openapi.json", "--checks", "all"]
        command += ["--max-examples", str(MAX_EXAMPLES), "--generation-deterministic", "--request-timeout", "30"]
        command += ["--exclude-path-regex", "^/v2/models/.*/infer$"]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": str(HERE)}
        env.pop("MCDROP_API_KEYS", None)
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=LIMIT_S, env=env, check=False, cwd=tmp_path
        )
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-4000:]
