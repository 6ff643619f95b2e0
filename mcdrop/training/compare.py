"""``mcdrop compare BEFORE AFTER``: is one checkpoint better than another on the same texts, beyond noise?

Both checkpoints predict every text (MC, each with its default N unless ``--n-samples``, the same mask seed); the
per-text negative log-likelihoods of the true label are paired, and the report gives for each set the mean
difference AFTER − BEFORE (negative: AFTER is better) with a 95 % percentile-bootstrap interval over texts, and
the accuracy of each. Pairing removes what the texts themselves contribute, so a difference the interval keeps
away from zero is one that another sample of such texts would most likely show too; the interval assumes the
texts are independent draws, and says nothing of texts unlike them.

The sets: a labelled file of your own (``--data FILE``, compared whole), or by default the validation split of the
checkpoints' training data and its stand-in shift sets (:mod:`mcdrop.training.shift_check`); ``--test`` adds the
test split, which should be read only to report on final models, never to choose between them.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mcdrop.core.engine import MCEngine, load_engine
from mcdrop.core.errors import ConfigError, DatasetError
from mcdrop.training.data import Dataset, load_checked_splits, read_labelled_file
from mcdrop.training.shift_check import standin_sets

CONFIDENCE = 0.95


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mcdrop compare``."""
    parser.add_argument("before", help="the checkpoint compared against (e.g. the one in service)")
    parser.add_argument("after", help="the candidate checkpoint")
    parser.add_argument("--data", default=None, help="a labelled CSV/TSV/JSONL file, compared whole")
    parser.add_argument("--text-column", default="text", help="text column of --data (default: text)")
    parser.add_argument("--label-column", default="label", help="label column of --data (default: label)")
    parser.add_argument("--test", action="store_true", help="also the test split of the training data")
    parser.add_argument("--n-samples", type=int, default=None, help="MC samples for both (default: each model's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MC masks and of the bootstrap")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (at least 100)")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda")


def paired_difference(before: np.ndarray, after: np.ndarray, resamples: int, seed: int) -> dict[str, float]:
    """Mean of ``after − before`` with its percentile-bootstrap interval at :data:`CONFIDENCE` (texts resampled
    with replacement, ``resamples`` times, seeded)."""
    difference = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = difference[rng.integers(0, len(difference), (resamples, len(difference)))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"mean": float(difference.mean()), "low": float(low), "high": float(high)}


def _text_nll(engine: MCEngine, dataset: Dataset, n_samples: int | None, seed: int) -> tuple[np.ndarray, float]:
    """Each text's MC negative log-likelihood of its label, and the accuracy."""
    predictions = engine.predict(list(dataset.texts), n_samples=n_samples or engine.default_n_samples, seed=seed)
    names = [engine.labels[y] for y in dataset.labels]
    nll = np.array([-math.log(max(p.probs[name], 1e-12)) for p, name in zip(predictions, names, strict=True)])
    accuracy = float(np.mean([p.label == name for p, name in zip(predictions, names, strict=True)]))
    return nll, accuracy


def _training_data(engines: Sequence[MCEngine]) -> Mapping[str, Any]:
    """The training data both checkpoints name (the same data set and split seed), or a one-line error."""
    named = [{k: e.config.get("training", {}).get(k) for k in ("dataset", "split_seed")} for e in engines]
    if named[0]["dataset"] is None or named[0] != named[1]:
        raise DatasetError(
            f"the checkpoints were not trained on the same split ({named[0]} vs {named[1]}): pass --data FILE"
        )
    training: Mapping[str, Any] = engines[0].config["training"]
    return training


def comparison_sets(args: argparse.Namespace, engines: Sequence[MCEngine]) -> dict[str, Dataset]:
    """The labelled sets to compare on, by name."""
    labels = engines[0].labels
    if args.data is not None:
        return {"data": read_labelled_file(args.data, args.text_column, args.label_column, labels)}
    training = _training_data(engines)
    text_column, label_column = training.get("text_column", "text"), training.get("label_column", "label")
    seed = int(training.get("split_seed", 0))
    splits = load_checked_splits(str(training["dataset"]), text_column, label_column, seed, labels)
    sets = standin_sets(splits.validation, splits.train.texts, seed=0)
    return sets | ({"test": splits.test} if args.test else {})


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mcdrop compare``: prints one JSON object per set."""
    if args.n_samples is not None and args.n_samples < 1:
        raise ConfigError(f"--n-samples must be at least 1 (got {args.n_samples})")
    if args.resamples < 100:
        raise ConfigError(f"--resamples must be at least 100 (got {args.resamples})")
    engines = [load_engine(path, device=args.device, max_batch_rows=32768) for path in (args.before, args.after)]
    if engines[0].labels != engines[1].labels:
        raise ConfigError(f"the checkpoints' labels differ: {engines[0].labels} vs {engines[1].labels}")
    for name, dataset in comparison_sets(args, engines).items():
        (before, before_acc), (after, after_acc) = (_text_nll(e, dataset, args.n_samples, args.seed) for e in engines)
        difference = paired_difference(before, after, args.resamples, args.seed)
        row = {"set": name, "texts": len(dataset), "nll_before": float(before.mean()), "nll_after": float(after.mean())}
        row |= {f"nll_difference_{k}": v for k, v in difference.items()}
        row |= {"accuracy_before": before_acc, "accuracy_after": after_acc}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return 0
