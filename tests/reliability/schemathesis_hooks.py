"""Schemathesis hooks for ``test_schemathesis.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

JSON Schema counts ``518.0`` as an integer; the API refuses it for ``n_samples`` and ``seed`` on purpose (no silent
conversion of a float, documented and tested), and no schema keyword can say so. Generated whole floats in those
fields are therefore sent as integers; everything else is sent as generated.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict):
        for name in ("n_samples", "seed"):
            value = body.get(name)
            if isinstance(value, float) and value.is_integer():
                body[name] = int(value)
    return body
