"""What an ensemble costs: the shipped K-member checkpoint against its first member alone, at the same N.

An ensemble spreads its N samples over its K members (sample s from member s mod K), so its cost should stay
that of N samples of one member; only the deterministic prefix runs K times. For each shipped model and
(batch, N) it times ``MCEngine.predict`` on both engines in the same process, alternating calls (real validation
sentences, seed fixed, one torch thread unless ``--threads``), and prints the median times and the ratio
ensemble / one member.

    python benchmarks/bench_ensemble.py [--models models/rt-mlp models/rt-gru] [--repeats 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import time
from pathlib import Path

import torch

from mcdrop.core.checkpoint import load_checkpoint
from mcdrop.core.engine import MCEngine
from mcdrop.core.ensemble import DropoutEnsemble
from mcdrop.training.data import load_rotten_tomatoes

REPO = Path(__file__).resolve().parents[1]
CASES = ((1, 30), (32, 30), (32, 100))


def engines(path: Path) -> tuple[MCEngine, MCEngine, int]:
    """The checkpoint's engine and one of its first member only (same encoder, temperature and calibration)."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.model, DropoutEnsemble):
        raise SystemExit(f"{path} is not an ensemble (ensemble_size 1)")
    first = dataclasses.replace(
        checkpoint, model=checkpoint.model.members[0], config=checkpoint.config | {"ensemble_size": 1}
    )
    return MCEngine(checkpoint, device="cpu"), MCEngine(first, device="cpu"), checkpoint.model.size


def call_ms(engine: MCEngine, texts: list[str], n_samples: int) -> float:
    start = time.perf_counter()
    engine.predict(texts, n_samples=n_samples, seed=0)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=[str(REPO / "models/rt-mlp"), str(REPO / "models/rt-gru")])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads: spare ones run one text's GRU members side by side"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = load_rotten_tomatoes(seed=0).validation.texts
    print("| model | K | batch | N | ensemble ms | one member ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for path in args.models:
        ensemble, single, size = engines(Path(path))
        gc.freeze()
        for batch, n_samples in CASES:
            chunk = texts[:batch]
            for engine in (ensemble, single):
                call_ms(engine, chunk, n_samples)  # warm-up
            times: dict[str, list[float]] = {"ensemble": [], "single": []}
            for _ in range(args.repeats):
                times["ensemble"].append(call_ms(ensemble, chunk, n_samples))
                times["single"].append(call_ms(single, chunk, n_samples))
            e, s = statistics.median(times["ensemble"]), statistics.median(times["single"])
            print(f"| {Path(path).name} | {size} | {batch} | {n_samples} | {e:.2f} | {s:.2f} | {e / s:.2f} |")


if __name__ == "__main__":
    main()
