"""What decisions cost: engine time with novelty, conformal sets and accept/abstain, against the same engine without.

For each shipped model and batch size (1, 32; texts from the Rotten Tomatoes validation split, the model's default
N), it times ``MCEngine.predict`` twice in the same process, alternating, on the same weights and seed:

* ``plain``: the calibration and the novelty model detached (what an uncalibrated checkpoint costs),
* ``decided``: both attached and ``max_risk`` 0.1, coverage 0.9 (every decision field computed),

and prints the overhead ``decided / plain - 1`` (the target is at most 10 %) and the novelty model's cost per text.

    python benchmarks/bench_decisions.py [--models models/rt-mlp models/rt-gru] [--repeats 20]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mcdrop.core.decisions import DecisionPolicy
from mcdrop.core.engine import MCEngine, load_engine
from mcdrop.training.data import load_rotten_tomatoes

REPO = Path(__file__).resolve().parents[1]


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(engine: MCEngine, texts: list[str], repeats: int) -> tuple[float, float]:
    """(plain, decided) median seconds per call, one call of each in turn so that machine noise hits both."""
    calibration, novelty_model = engine.calibration, engine.novelty_model
    policy = DecisionPolicy(max_risk=0.1, coverage=0.9)
    times: dict[bool, list[float]] = {False: [], True: []}
    for repeat in range(2 * repeats + 2):
        with_decisions = repeat % 4 in (1, 2)  # plain, decided, decided, plain, ...: neither always goes first
        engine.calibration, engine.novelty_model = (calibration, novelty_model) if with_decisions else (None, None)
        start = time.perf_counter()
        engine.predict(texts, seed=1, policy=policy if with_decisions else None)
        times[with_decisions].append(time.perf_counter() - start)
    engine.calibration, engine.novelty_model = calibration, novelty_model
    return statistics.median(times[False][1:]), statistics.median(times[True][1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[str(REPO / "models" / n) for n in ("rt-mlp", "rt-gru")])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = load_rotten_tomatoes(seed=0).validation.texts
    print("| model | batch | N | plain ms | decided ms | overhead | novelty µs/text |")
    print("|---|---|---|---|---|---|---|")
    for path in args.models:
        engine = load_engine(path, device="cpu")
        if engine.calibration is None or engine.novelty_model is None:
            print(f"| {engine.name} | – | – | – | – | no calibration | – |")
            continue
        gc.collect()
        gc.freeze()  # as the server does once its models are loaded
        model = engine.novelty_model
        tokens = [engine.encoder.tokens(t) for t in texts[:1000]]
        per_text = median_time(lambda: model.mean_nll_many(tokens), 5) / len(tokens)  # noqa: B023
        for batch in (1, 32):
            plain, decided = measure(engine, texts[:batch], args.repeats)
            print(
                f"| {engine.name} | {batch} | {engine.default_n_samples} | {plain * 1e3:.3f} | {decided * 1e3:.3f} "
                f"| {decided / plain - 1:+.1%} | {per_text * 1e6:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
