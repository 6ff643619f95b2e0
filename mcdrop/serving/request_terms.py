"""What a request asks of its model, with the server's defaults and limits applied: the decisions wanted, the Monte
Carlo tolerance, and the cost admitted. Shared by ``/v1/predict`` and the ``/v2`` infer route; each raises
:class:`~mcdrop.core.errors.InputError` (422) naming the field for what the model or the limits cannot take."""

from __future__ import annotations

from collections.abc import Sequence

from mcdrop.core.decisions import DecisionPolicy
from mcdrop.core.errors import InputError
from mcdrop.serving.registry import ServedModel
from mcdrop.serving.settings import Settings


def decision_policy(
    settings: Settings, served: ServedModel, max_risk: float | None, coverage: float | None, max_novelty: float | None
) -> DecisionPolicy:
    """What a request wants decided, with the server's defaults filled in; :class:`InputError` when it asks an
    uncalibrated model for a decision, a conformal set or a novelty limit."""
    calibration = served.engine.calibration
    if calibration is None:
        fields = (("max_risk", max_risk), ("coverage", coverage), ("max_novelty", max_novelty))
        asked = [name for name, value in fields if value is not None]
        if asked:
            raise InputError(
                f"{asked[0]}: model {served.engine.name} has no calibration, so it cannot decide; calibrate it "
                "with `mcdrop calibrate CHECKPOINT --data FILE --out DIR` (a labelled sample of your traffic, "
                "at least 200 texts)"
            )
        return DecisionPolicy()
    return DecisionPolicy(
        max_risk=settings.max_risk if max_risk is None else max_risk,
        coverage=settings.coverage if coverage is None else coverage,
        max_novelty=calibration.max_novelty if max_novelty is None else max_novelty,
    )


def admissible_cost(settings: Settings, served: ServedModel, texts: Sequence[str], n_samples: int) -> int:
    """A request's cost in engine units; :class:`InputError` (422) over ``MCDROP_MAX_REQUEST_COST``."""
    limit = settings.max_request_cost
    cost, terms, complete = served.engine.costed(texts, n_samples, limit)  # counting stops once over it
    if cost > limit:
        raise InputError(
            f"request: costs {'' if complete else 'at least '}{cost} units ({terms} by {served.engine.name}), "
            f"more than MCDROP_MAX_REQUEST_COST ({limit}); send fewer or shorter texts, or fewer samples"
        )
    return cost


def mc_tolerance(settings: Settings, served: ServedModel, requested: float | None) -> float:
    """A request's tolerance: its own, else the server's MCDROP_MC_TOLERANCE, else the checkpoint's."""
    if requested is not None:
        return float(requested)
    if settings.mc_tolerance is not None:
        return settings.mc_tolerance
    return served.engine.default_mc_tolerance
