"""mcdrop's engine against the MC dropout libraries a user would otherwise use, on the shipped weights.

For each shipped model, batch size B and number of samples N, on real sentences (the Rotten Tomatoes validation
split, never the test split), it times in one process, interleaved round by round so that load from other
processes hits every contender alike:

* ``mcdrop``: :meth:`MCEngine.predict` from the texts: tokenizing, sampling and every statistic per text,
* ``baal``, ``torch-uncertainty``, ``loop``: the same weights as plain torch modules (``benchmarks/peers.py``),
  from an already padded id tensor to the ``(N, B, C)`` probabilities; no tokenizing, no statistics.

The peers are given the easier job, so ``x min`` / ``x median`` (best peer's time over mcdrop's, fastest and
median of the repeats) above 1 is a lower bound on mcdrop's advantage. ``x same work`` adds to the best peer what
it skipped, timed alongside: tokenizing the texts into its padded tensor (``prep``) and mcdrop's statistics of its
samples (``stats``), so both sides go from texts to the same numbers. It first checks that the plain modules'
deterministic outputs equal mcdrop's.

    python -m benchmarks.bench_peers [--models models/rt-mlp models/rt-gru] [--batch-sizes 1,32,256]
                                     [--n-samples 30,100] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.peers import check_equivalent, padded_ids, peer_runners, plain_models
from mcdrop.core.checkpoint import load_checkpoint
from mcdrop.core.engine import MCEngine
from mcdrop.core.uncertainty import summary_arrays
from mcdrop.training.data import load_rotten_tomatoes


def validation_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` reviews drawn from the Rotten Tomatoes validation split."""
    texts = load_rotten_tomatoes().validation.texts
    return random.Random(seed).sample(texts, n) if n <= len(texts) else random.Random(seed).choices(texts, k=n)


def interleaved(contenders: dict[str, Callable[[], Any]], repeats: int, budget_s: float) -> dict[str, list[float]]:
    """Wall times of each contender, one call each per round after a warm-up; at most ``repeats`` rounds and
    (after the first) about ``budget_s`` seconds.

    The order rotates every round: a call right after a heavy one runs slower (evicted caches, torch's worker
    threads still spinning), and a fixed order would always hand that cost to the same contender.
    """
    for fn in contenders.values():
        fn()
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    began = time.perf_counter()
    for round_ in range(repeats):
        if round_ and time.perf_counter() - began > budget_s:
            break
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def bench_model(path: Path, batch_sizes: list[int], n_samples: list[int], repeats: int, budget_s: float) -> None:
    checkpoint = load_checkpoint(path)
    engine = MCEngine(checkpoint, device="cpu")
    plain = plain_models(checkpoint)
    sentences = validation_sentences(max(batch_sizes))
    gap = check_equivalent(checkpoint, plain, sentences[:64])
    print(f"\n{checkpoint.name}: plain module vs mcdrop, deterministic logits, max |diff| = {gap:.2e}")
    if gap > 1e-4:
        raise SystemExit(f"{checkpoint.name}: the plain module does not compute what the checkpoint does")
    runners = peer_runners(plain, checkpoint.temperature)
    peers = (f"{name} ms" for name in runners)
    header = ("B", "N", "mcdrop ms", *peers, "best peer", "x min", "x median", "x same work")
    print("{:>5} {:>4} {:>10} {:>8} {:>20} {:>8} {:>18} {:>7} {:>9} {:>12}".format(*header))
    for batch_size in batch_sizes:
        texts = sentences[:batch_size]
        ids = padded_ids(checkpoint, texts)
        for n in n_samples:
            contenders: dict[str, Callable[[], Any]] = {"mcdrop": partial(engine.predict, texts, n, seed=0)}
            for name, run in runners.items():
                contenders[name] = partial(run, ids, n)
            contenders["prep"] = partial(padded_ids, checkpoint, texts)
            contenders["stats"] = partial(summary_arrays, runners["baal"](ids, n))
            times = interleaved(contenders, repeats, budget_s)
            fastest = {name: min(t) for name, t in times.items()}
            median = {name: statistics.median(t) for name, t in times.items()}
            best = min(runners, key=fastest.__getitem__)
            best_median = min(median[name] for name in runners)
            cells = " ".join(f"{fastest[name] * 1e3:>{max(8, len(name) + 3)}.2f}" for name in runners)
            print(
                f"{batch_size:>5} {n:>4} {fastest['mcdrop'] * 1e3:>10.2f} {cells} {best:>18} "
                f"{fastest[best] / fastest['mcdrop']:>6.1f}x {best_median / median['mcdrop']:>8.1f}x "
                f"{(fastest[best] + fastest['prep'] + fastest['stats']) / fastest['mcdrop']:>11.1f}x",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, default=[Path("models/rt-mlp"), Path("models/rt-gru")])
    parser.add_argument("--batch-sizes", default="1,32,256")
    parser.add_argument("--n-samples", default="30,100")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget-seconds", type=float, default=20.0, help="time per cell, after the first round")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; times are the fastest of the repeats;")
    print("x = best peer's time / mcdrop's (fastest of each, and medians): above 1, mcdrop is faster")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    n_samples = [int(n) for n in args.n_samples.split(",")]
    for path in args.models:
        bench_model(path, batch_sizes, n_samples, args.repeats, args.budget_seconds)


if __name__ == "__main__":
    main()
