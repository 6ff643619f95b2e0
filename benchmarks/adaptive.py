"""Adaptive Monte Carlo on real sentences: samples used, cost, and quality against fixed N.

For each shipped model it predicts the Rotten Tomatoes validation split (never the test split) in batches of 32
texts, with fixed N (``mc_tolerance`` 0) and with each tolerance, over several seeds, and prints per setting:

* the mean samples used per text and the time relative to fixed N (on the first ``--timed-batches`` batches,
  the settings taking turns on each batch, the fastest of ``--repeats`` each),
* accuracy, NLL, ECE and the AUROCs with which entropy, mutual information and 1 - max p separate wrong
  predictions from right ones: mean over seeds, and the difference from fixed N in units of fixed N's own
  seed-to-seed standard deviation (its Monte Carlo error); |Δ/sd| ≤ 2 is within Monte Carlo error.

``--schedule fixed10`` replaces the doubling rounds (10, 20, 40, 80, N) with rounds of 10 samples, to compare.

    python benchmarks/adaptive.py [--models models/rt-mlp models/rt-gru] [--n-samples 100]
                                  [--tolerances 0.005,0.01,0.02,0.05] [--seeds 5] [--schedule doubling]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from mcdrop.core import adaptive
from mcdrop.core.engine import MCEngine, Prediction, load_engine
from mcdrop.training.data import load_rotten_tomatoes
from mcdrop.training.metrics import auroc, classification_metrics

BATCH = 32
METRICS = ("accuracy", "nll", "ece", "auroc_entropy", "auroc_mi", "auroc_maxprob")


def fixed_rounds(n_samples: int, first: int = adaptive.FIRST_ROUND) -> list[int]:
    """Rounds of ``first`` samples each (the alternative to doubling)."""
    return [*range(first, n_samples, first), n_samples]


def run(engine: MCEngine, texts: Sequence[str], n: int, seed: int, tolerance: float) -> list[Prediction]:
    """Predictions for ``texts`` in batches of ``BATCH``."""
    out: list[Prediction] = []
    for i in range(0, len(texts), BATCH):
        out += engine.predict(texts[i : i + BATCH], n_samples=n, seed=seed + i, mc_tolerance=tolerance)
    return out


def costs(engine: MCEngine, texts: Sequence[str], n: int, settings: list[float], repeats: int) -> dict[float, float]:
    """Time of each tolerance relative to fixed N: per batch, the settings take turns ``repeats`` times and the
    fastest of each counts (slow drifts in the machine's load hit every setting alike)."""
    total = dict.fromkeys(settings, 0.0)
    for i in range(0, len(texts), BATCH):
        batch = texts[i : i + BATCH]
        best = dict.fromkeys(settings, float("inf"))
        for round_ in range(repeats):
            shift = round_ % len(settings)
            for tolerance in settings[shift:] + settings[:shift]:
                start = time.perf_counter()
                engine.predict(batch, n_samples=n, seed=i, mc_tolerance=tolerance)
                best[tolerance] = min(best[tolerance], time.perf_counter() - start)
        for tolerance in settings:
            total[tolerance] += best[tolerance]
    return {tolerance: total[tolerance] / total[0.0] for tolerance in settings}


def quality(engine: MCEngine, predictions: Sequence[Prediction], labels: Sequence[int]) -> dict[str, float]:
    probs = torch.tensor([[p.probs[label] for label in engine.labels] for p in predictions], dtype=torch.float64)
    metrics = classification_metrics(probs, labels)
    wrong = probs.argmax(dim=-1) != torch.tensor(labels)
    scores = {
        "auroc_entropy": [p.entropy for p in predictions],
        "auroc_mi": [p.mutual_information for p in predictions],
        "auroc_maxprob": [1.0 - max(p.probs.values()) for p in predictions],
    }
    return {**metrics, **{name: auroc(values, wrong) for name, values in scores.items()}}


def bench(path: Path, n: int, tolerances: list[float], seeds: int, repeats: int, timed_batches: int) -> None:
    engine = load_engine(str(path), device="cpu")
    data = load_rotten_tomatoes().validation
    texts, labels = data.texts, data.labels
    settings = [0.0, *tolerances]
    results: dict[float, list[dict[str, float]]] = {t: [] for t in settings}
    used: dict[float, list[float]] = {t: [] for t in settings}
    for seed in range(seeds):
        for tolerance in settings:
            predictions = run(engine, texts, n, 1000 * seed, tolerance)
            results[tolerance].append(quality(engine, predictions, labels))
            used[tolerance].append(statistics.fmean(p.n_samples_used for p in predictions))
    cost = costs(engine, texts[: BATCH * timed_batches], n, settings, repeats)
    print(f"\n{engine.name}: {len(texts)} validation texts, N = {n}, {seeds} seeds, batches of {BATCH}")
    print(f"{'tau':>6} {'samples':>8} {'cost':>6} " + " ".join(f"{m:>22}" for m in METRICS))
    fixed = results[0.0]
    sd = {m: statistics.stdev(r[m] for r in fixed) if seeds > 1 else float("nan") for m in METRICS}
    for tolerance in settings:
        cells = []
        for metric in METRICS:
            mean = statistics.fmean(r[metric] for r in results[tolerance])
            delta = mean - statistics.fmean(r[metric] for r in fixed)
            ratio = delta / sd[metric] if sd[metric] > 0 else 0.0
            cells.append(f"{mean:>9.4f} (Δ/sd {ratio:>+5.1f})")
        print(f"{tolerance:>6g} {statistics.fmean(used[tolerance]):>8.1f} {cost[tolerance]:>5.2f}x " + " ".join(cells))
    print("fixed-N Monte Carlo error (sd over seeds): " + ", ".join(f"{m} {sd[m]:.4f}" for m in METRICS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, default=[Path("models/rt-mlp"), Path("models/rt-gru")])
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--tolerances", default="0.005,0.01,0.02,0.05")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds per batch")
    parser.add_argument("--timed-batches", type=int, default=10, help="batches of 32 texts timed")
    parser.add_argument("--schedule", choices=["doubling", "fixed10"], default="doubling")
    args = parser.parse_args()
    if args.schedule == "fixed10":
        adaptive.round_ends = fixed_rounds  # the engine reads the schedule from the module at every call
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; rounds: {args.schedule}")
    tolerances = [float(t) for t in args.tolerances.split(",")]
    for path in args.models:
        bench(path, args.n_samples, tolerances, args.seeds, args.repeats, args.timed_batches)


if __name__ == "__main__":
    main()
