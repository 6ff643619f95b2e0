"""Cost of Monte Carlo inference, as ratios to one deterministic pass measured in the same process.

For each model, batch size (1, 32) and number of samples N (30, 100) it times:

* ``det``: one deterministic forward pass (dropout off),
* ``loop``: the naive way, N full forward passes with dropout sampled,
* ``replicate``: the input repeated N times through the whole model in one pass (baal's predict_on_batch),
* ``engine``: :meth:`MCEngine.predict` (prefix once, samples batched, masks per sample), statistics included.

For the GRU both dropout placements are measured on the same weights: before the recurrence (the GRU is
in the stochastic tail) and only after it (the GRU runs once per input).

    python benchmarks/bench_engine.py [--models models/rt-mlp models/rt-gru] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mcdrop.core.checkpoint import Checkpoint, load_checkpoint
from mcdrop.core.contract import ModelInput
from mcdrop.core.dropout import MaskSampler, MCDropout
from mcdrop.core.engine import MCEngine
from mcdrop.core.ensemble import DropoutEnsemble
from mcdrop.core.gru import DropoutGRU


def timeit(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest wall time of ``fn`` in seconds over ``repeats`` calls, after one warm-up (robust to noise)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def make_texts(checkpoint: Checkpoint, n: int, seed: int = 0) -> list[str]:
    """Texts of realistic length (median ~18 words) drawn from the model's vocabulary."""
    rng = random.Random(seed)
    words = [t for t in checkpoint.encoder.vocab.tokens[2:] if " " not in t][:5000]
    return [" ".join(rng.choices(words, k=max(3, int(rng.lognormvariate(2.9, 0.5))))) for _ in range(n)]


def _members(model: object) -> list[Any]:
    return list(model.members) if isinstance(model, DropoutEnsemble) else [model]


def replicated_pass(checkpoint: Checkpoint, batch: ModelInput, n_samples: int) -> torch.Tensor:
    """baal-style: every input repeated N times, the whole model run once over B×N rows with per-row masks (an
    ensemble's member k over its N/K copies)."""
    members = _members(checkpoint.model)
    outs = []
    for k, member in enumerate(members):
        ids = [batch_ids for batch_ids in _ids(batch) for _ in range(k, n_samples, len(members))]
        big = member.make_input(ids)
        member.train()  # per-row masks: the only way a plain model samples; restored below
        try:
            with torch.inference_mode():
                outs.append(torch.softmax(member(big), dim=-1))
        finally:
            member.eval()
    return torch.cat(outs)


def _ids(batch: ModelInput) -> list[list[int]]:
    if batch.offsets is not None:
        bounds = [*batch.offsets.tolist(), int(batch.ids.shape[0])]
        return [batch.ids[a:b].tolist() for a, b in itertools.pairwise(bounds)]
    assert batch.lengths is not None
    return [row[:n].tolist() for row, n in zip(batch.ids, batch.lengths.tolist(), strict=True)]


def naive_loop(checkpoint: Checkpoint, batch: ModelInput, n_samples: int) -> torch.Tensor:
    model = checkpoint.model
    outs = []
    with torch.inference_mode():
        for s in range(n_samples):
            logits = model.stochastic_tail(model.prefix(batch), MaskSampler(1, [s]))  # type: ignore[arg-type]
            outs.append(torch.softmax(logits, dim=-1))
    return torch.cat(outs)


def gru_variant(checkpoint: Checkpoint, placement: str) -> Checkpoint:
    """The same weights with dropout moved: ``before`` keeps input dropout, ``after`` only output dropout."""
    variant = copy.deepcopy(checkpoint)
    for model in _members(variant.model):
        assert isinstance(model, DropoutGRU)
        if placement == "after":
            model.word_dropout.p = model.input_dropout.p = model.weight_dropout_p = 0.0
        elif not model.stochastic_recurrence:
            model.input_dropout = MCDropout(0.25, shared_axes=(0,))
    return variant


def bench(label: str, checkpoint: Checkpoint, repeats: int) -> None:
    engine = MCEngine(checkpoint, device="cpu", max_batch_rows=4096)
    for batch_size in (1, 32):
        texts = make_texts(checkpoint, batch_size)
        batch = checkpoint.model.make_input(checkpoint.encoder.encode(texts).ids)
        det = timeit(partial(engine.predict_deterministic, texts), repeats)
        for n in (30, 100):
            loop = timeit(partial(naive_loop, checkpoint, batch, n), max(1, repeats // 2))
            rep = timeit(partial(replicated_pass, checkpoint, batch, n), max(1, repeats // 2))
            mc = timeit(partial(engine.predict, texts, n_samples=n, seed=0), repeats)
            print(
                f"{label:<26} {batch_size:>5} {n:>4} {det * 1e3:>9.2f} {loop / det:>8.1f}x {rep / det:>10.1f}x "
                f"{mc / det:>8.1f}x {loop / mc:>12.1f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["models/rt-mlp", "models/rt-gru"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print("ratios are to one deterministic pass (det) of the same batch; loop/engine is the engine's speed-up")
    header = ("model", "batch", "N", "det ms", "loop", "replicate", "engine", "loop/engine")
    print("{:<26} {:>5} {:>4} {:>9} {:>9} {:>11} {:>9} {:>13}".format(*header))
    for path in args.models:
        checkpoint = load_checkpoint(Path(path))
        if checkpoint.model.architecture == "gru":
            for placement in ("before", "after"):
                variant = gru_variant(checkpoint, placement)
                bench(f"{checkpoint.name} ({placement} GRU)", variant, args.repeats)
        else:
            bench(checkpoint.name, checkpoint, args.repeats)


if __name__ == "__main__":
    main()
