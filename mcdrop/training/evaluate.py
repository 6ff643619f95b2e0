"""``mcdrop eval CHECKPOINT_DIR``: run a checkpoint through the MC engine and report how it scores.

Prints the JSON report of :func:`mcdrop.training.report.evaluate_engine` on the checkpoint's own test split (or
on ``--data``); with ``--out`` also writes ``eval_report.json``, a reliability diagram and, for a calibrated
checkpoint, the risk-coverage plot.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mcdrop.core.engine import load_engine
from mcdrop.core.errors import ConfigError, DatasetError
from mcdrop.training.data import RT_NAME, Dataset, load_checked_splits, read_labelled_file
from mcdrop.training.plots import plot_reliability_diagram, plot_risk_coverage
from mcdrop.training.report import evaluate_engine

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mcdrop eval``."""
    parser.add_argument("checkpoint", help="checkpoint directory (e.g. models/rt-mlp)")
    parser.add_argument(
        "--data",
        default=None,
        help="'rt' (the test split, split seed from the checkpoint) or a labelled CSV/TSV/JSONL file evaluated "
        "whole; default: the test split of the checkpoint's own training data",
    )
    parser.add_argument("--text-column", default=None, help="text column of --data FILE (default: text)")
    parser.add_argument("--label-column", default=None, help="label column of --data FILE (default: label)")
    parser.add_argument("--n-samples", type=int, default=None, help="MC samples (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MC masks")
    parser.add_argument("--out", default=None, help="directory for eval_report.json and reliability.png")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda")


def _eval_data(
    args: argparse.Namespace, training: Mapping[str, Any], labels: Sequence[str]
) -> tuple[Dataset, list[str]]:
    """The evaluation set and OOD texts chosen by ``--data`` (or the checkpoint's own training data)."""
    data = args.data or training.get("dataset")
    text_column = args.text_column or training.get("text_column", "text")
    label_column = args.label_column or training.get("label_column", "label")
    if data is None:
        raise DatasetError("the checkpoint does not name its training data; pass --data rt or --data FILE")
    if args.data is not None and data != RT_NAME:
        return read_labelled_file(data, text_column, label_column, labels), []
    splits = load_checked_splits(str(data), text_column, label_column, int(training.get("split_seed", 0)), labels)
    return splits.test, splits.ood_texts


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mcdrop eval``: prints the JSON report; with ``--out`` also writes it and the diagram."""
    if args.n_samples is not None and args.n_samples < 1:
        raise ConfigError(f"--n-samples must be at least 1 (got {args.n_samples})")
    engine = load_engine(args.checkpoint, device=args.device, max_batch_rows=32768)
    dataset, ood_texts = _eval_data(args, engine.config.get("training", {}), engine.labels)
    n_samples = args.n_samples or engine.default_n_samples
    result = evaluate_engine(engine, dataset, ood_texts, n_samples, args.seed)
    report = {"name": engine.name, "version": engine.version, "data": args.data or "training test split"}
    report |= result.report
    text = json.dumps(report, indent=2)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_report.json").write_text(text + "\n", encoding="utf-8")
        curves = {"deterministic": result.deterministic, "MC mean": result.samples.mean(dim=0)}
        plot_reliability_diagram(curves, dataset.labels, out / "reliability.png", title=f"{engine.name}")
        if result.risk_curve is not None:
            plot_risk_coverage(result.risk_curve, out / "risk_coverage.png", title=f"{engine.name}")
        logger.info("wrote %s and the plots to %s", out / "eval_report.json", out)
    print(text)
    return 0
