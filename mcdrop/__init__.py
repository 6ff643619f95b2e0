"""mcdrop: Monte Carlo dropout uncertainty for text classifiers.

Three layers (see ``docs/architecture.md``): :mod:`mcdrop.core` (dropout, models, text, uncertainty maths,
checkpoints, the MC engine; torch only), :mod:`mcdrop.training` (data, training loop, evaluation, the shipped
models' recipe) and :mod:`mcdrop.serving` (the HTTP service). The library's public face::

    from mcdrop import load_engine, MCEngine, Prediction

    engine = load_engine("models/rt-mlp")
    [prediction] = engine.predict(["a quietly devastating film"], n_samples=50, seed=1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["MCEngine", "Prediction", "__version__", "load_engine"]

if TYPE_CHECKING:
    from mcdrop.core.engine import MCEngine, Prediction, load_engine


def __getattr__(name: str) -> Any:
    # The engine (and torch) load on first use, so `mcdrop --help` and the CLI's dispatch stay fast.
    if name in ("MCEngine", "Prediction", "load_engine"):
        from mcdrop.core import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'mcdrop' has no attribute {name!r}")
