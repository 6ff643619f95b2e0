"""What a retrained model costs per request: one checkpoint against another, at the same batch and N.

Times ``MCEngine.predict`` on both checkpoints in the same process, alternating calls (real validation
sentences, seed fixed, one torch thread unless ``--threads``), and prints the median times and the ratio
after / before for each (batch, N):

    python -m benchmarks.bench_checkpoints BEFORE AFTER [--repeats 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import statistics
from pathlib import Path

import torch

from benchmarks.bench_ensemble import CASES, call_ms
from mcdrop.core.checkpoint import load_checkpoint
from mcdrop.core.engine import MCEngine
from mcdrop.training.data import load_rotten_tomatoes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the checkpoint to compare against")
    parser.add_argument("after", type=Path, help="the checkpoint whose cost is reported as a ratio")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    torch.set_num_threads(args.threads)
    texts = load_rotten_tomatoes(seed=0).validation.texts
    engines = {
        name: MCEngine(load_checkpoint(path), device="cpu")
        for name, path in vars(args).items()
        if name in ("before", "after")
    }
    gc.freeze()
    print(f"before: {args.before}, after: {args.after}, {args.threads} thread(s), medians of {args.repeats}")
    print("| batch | N | before ms | after ms | after / before |")
    print("|---|---|---|---|---|")
    for batch, n_samples in CASES:
        chunk = texts[:batch]
        times: dict[str, list[float]] = {name: [] for name in engines}
        for engine in engines.values():
            call_ms(engine, chunk, n_samples)  # warm-up
        for _ in range(args.repeats):
            for name, engine in engines.items():
                times[name].append(call_ms(engine, chunk, n_samples))
        before, after = (statistics.median(times[name]) for name in ("before", "after"))
        print(f"| {batch} | {n_samples} | {before:.2f} | {after:.2f} | {after / before:.2f} |")


if __name__ == "__main__":
    main()
