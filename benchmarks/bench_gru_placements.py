"""Cost of the GRU's dropout placements, as ratios measured in one run on one torch thread.

Two GRUs of the shipped size (embeddings 128 + the 4 lexicon-prior features, bidirectional, hidden 64) with the same
random weights:

* ``before``: locked input dropout before the recurrence (``input_dropout_p``): every sample runs the whole
  ``nn.GRU``, input projections included;
* ``gates``: dropout on the gate inputs (``gate_dropout_p``): the input projections run once per text in the prefix,
  each sample runs only the recurrent half (:mod:`mcdrop.core.gate_recurrence`).

For each batch size (1, 32) and number of samples N (30, 100) it times :meth:`MCEngine.predict` for both, interleaved
(fastest of ``--repeats`` rounds), and prints gates / before. It also times training steps (forward, backward and
AdamW update) over 640 texts in 10 batches of 64, bucketed by length as training batches them.

    python benchmarks/bench_gru_placements.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mcdrop.core.checkpoint import Checkpoint
from mcdrop.core.engine import MCEngine
from mcdrop.core.gru import DropoutGRU
from mcdrop.core.text import TextEncoder

VOCAB = 20000
PRIOR_DIM = 4


def make_texts(n: int, seed: int) -> list[str]:
    """Texts of realistic length (median ~18 words), as bench_engine.py draws them."""
    rng = random.Random(seed)
    lengths = [max(3, int(rng.lognormvariate(2.9, 0.5))) for _ in range(n)]
    return [" ".join(f"w{rng.randrange(VOCAB)}" for _ in range(length)) for length in lengths]


def make_engines() -> dict[str, MCEngine]:
    encoder = TextEncoder.fit([f"w{i}" for i in range(VOCAB)], max_size=VOCAB + 2)
    size: dict[str, Any] = {"embed_dim": 128, "hidden_dim": 64, "prior_dim": PRIOR_DIM, "output_dropout_p": 0.5}
    torch.manual_seed(0)
    before = DropoutGRU(len(encoder.vocab), 2, input_dropout_p=0.6, **size)
    gates = DropoutGRU(len(encoder.vocab), 2, gate_dropout_p=0.3, **size)
    gates.load_state_dict(before.state_dict())
    engines = {}
    for name, model in (("before", before), ("gates", gates)):
        config = {"name": name, "version": "1", "labels": ["negative", "positive"]}
        engines[name] = MCEngine(Checkpoint(Path(name), config, model.eval(), encoder), device="cpu")
    return engines


def fastest(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Fastest wall time of each function over ``repeats`` interleaved rounds, after one warm-up each."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def train_steps(engine: MCEngine, texts: list[str], batch_size: int = 64) -> Callable[[], None]:
    """Training steps over ``texts`` sorted by length, ``batch_size`` at a time (the training loop's buckets)."""
    model = engine.model
    assert isinstance(model, DropoutGRU)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = sorted(engine.encoder.encode(texts).ids, key=len)
    batches = [model.make_input(ids[s : s + batch_size]) for s in range(0, len(ids), batch_size)]
    labels = torch.randint(0, 2, (batch_size,), generator=torch.Generator().manual_seed(0))

    def steps() -> None:
        model.train()
        model.requires_grad_(True)
        for batch in batches:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(batch), labels[: len(batch)])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        model.eval()

    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    engines = make_engines()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, CPU; same random weights in both")
    print(f"{'batch':>5} {'N':>4} {'before ms':>10} {'gates ms':>9} {'gates/before':>13}")
    for batch_size in (1, 32):
        texts = make_texts(batch_size, seed=batch_size)
        for n in (30, 100):
            times = fastest(
                {k: partial(e.predict, texts, n_samples=n, seed=0) for k, e in engines.items()}, args.repeats
            )
            print(
                f"{batch_size:>5} {n:>4} {times['before'] * 1e3:>10.1f} {times['gates'] * 1e3:>9.1f} "
                f"{times['gates'] / times['before']:>12.2f}x"
            )
    texts = make_texts(640, seed=640)
    times = fastest({k: train_steps(e, texts) for k, e in engines.items()}, max(1, args.repeats // 2))
    print(
        f"training, 10 bucketed batches of 64: before {times['before'] * 1e3:.0f} ms, gates "
        f"{times['gates'] * 1e3:.0f} ms, gates/before {times['gates'] / times['before']:.2f}x"
    )


if __name__ == "__main__":
    main()
