"""Evaluation: calibration, selective-prediction and out-of-distribution metrics, and ``mcdrop eval``.

The metric functions are pure: they take a ``(B, C)`` tensor (or array) of class probabilities and ``(B,)``
integer labels and return plain floats, so training, the CLI and tests share them. Conventions:

* NLL: mean of ``-log p_y`` (natural log; probabilities clamped at 1e-12).
* Brier: mean over inputs of ``Σ_c (p_c - 1[c = y])²`` (the multi-class form; 0 is perfect, 2 the worst).
* ECE: top-label expected calibration error with 15 equal-width confidence bins ``(k/15, (k+1)/15]``
  (Guo et al., 2017): ``Σ_bins (n_bin / n) |accuracy_bin - mean confidence_bin|``.
* AUROC: probability that a random positive scores higher than a random negative, ties counting one half
  (Mann-Whitney U from average ranks).
* Selective prediction: inputs ranked by an uncertainty score (least uncertain first); accuracy on the most
  confident 50/80/90 % and the area under the risk-coverage curve (AURC, lower is better).

``mcdrop eval CHECKPOINT_DIR`` runs a checkpoint through the Monte Carlo engine and writes ``eval_report.json``
and a reliability diagram; see :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from mcdrop.uncertainty import mutual_information, predictive_entropy

if TYPE_CHECKING:
    from mcdrop.data import Dataset
    from mcdrop.engine import MCEngine

logger = logging.getLogger(__name__)

ArrayLike: TypeAlias = Tensor | npt.NDArray[Any] | Sequence[float] | Sequence[int]

N_BINS = 15
COVERAGES = (0.5, 0.8, 0.9)
_EPS = 1e-12


def _probs(probs: ArrayLike) -> Tensor:
    tensor = torch.as_tensor(probs, dtype=torch.float64)
    if tensor.dim() != 2:
        raise ValueError(f"expected probabilities of shape (B, C), got {tuple(tensor.shape)}")
    return tensor


def _labels(labels: ArrayLike, n: int) -> Tensor:
    tensor = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if tensor.numel() != n:
        raise ValueError(f"{tensor.numel()} labels for {n} predictions")
    return tensor


def _scores(scores: ArrayLike) -> Tensor:
    return torch.as_tensor(scores, dtype=torch.float64).reshape(-1)


# ------------------------------------------------------------------------------------------------- core metrics


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Share of inputs whose most probable class is the label."""
    p = _probs(probs)
    y = _labels(labels, p.shape[0])
    return float((p.argmax(dim=1) == y).double().mean())


def negative_log_likelihood(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean ``-log p_y`` over inputs."""
    p = _probs(probs)
    y = _labels(labels, p.shape[0])
    return float(-p.gather(1, y[:, None]).clamp_min(_EPS).log().mean())


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean over inputs of the squared distance between ``p`` and the one-hot label."""
    p = _probs(probs)
    y = _labels(labels, p.shape[0])
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).double()
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def reliability_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = N_BINS) -> list[dict[str, float]]:
    """Per confidence bin: lower/upper edge, count, mean confidence and accuracy (0 for empty bins)."""
    p = _probs(probs)
    y = _labels(labels, p.shape[0])
    confidence, predicted = p.max(dim=1)
    correct = (predicted == y).double()
    # Bin k holds confidences in (k/n, (k+1)/n]; confidence 0 cannot be a top label but goes to bin 0.
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    bins = []
    for k in range(n_bins):
        members = index == k
        count = int(members.sum())
        bins.append(
            {
                "lower": k / n_bins,
                "upper": (k + 1) / n_bins,
                "count": float(count),
                "confidence": float(confidence[members].mean()) if count else 0.0,
                "accuracy": float(correct[members].mean()) if count else 0.0,
            }
        )
    return bins


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = N_BINS) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins."""
    bins = reliability_bins(probs, labels, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins))


def classification_metrics(probs: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Accuracy, NLL, Brier score and ECE in one dictionary."""
    return {
        "accuracy": accuracy(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
        "ece": expected_calibration_error(probs, labels),
    }


def auroc(scores: ArrayLike, is_positive: ArrayLike) -> float:
    """Area under the ROC curve for ``scores`` separating positives (True) from negatives; ties count 1/2."""
    s = _scores(scores)
    pos = torch.as_tensor(is_positive, dtype=torch.bool).reshape(-1)
    if pos.numel() != s.numel():
        raise ValueError(f"{pos.numel()} flags for {s.numel()} scores")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    ranks = _average_ranks(s)
    u_statistic = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u_statistic / (n_pos * n_neg))


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks with tied values sharing their average rank."""
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    # Start of each run of equal values, and the run each position belongs to.
    new_run = torch.ones_like(sorted_values, dtype=torch.bool)
    new_run[1:] = sorted_values[1:] != sorted_values[:-1]
    run_id = torch.cumsum(new_run.long(), dim=0) - 1
    positions = torch.arange(1, values.numel() + 1, dtype=torch.float64)
    run_sum = torch.zeros(int(run_id[-1]) + 1, dtype=torch.float64).index_add_(0, run_id, positions)
    run_len = torch.zeros_like(run_sum).index_add_(0, run_id, torch.ones_like(positions))
    ranks = torch.empty_like(positions)
    ranks[order] = (run_sum / run_len)[run_id]
    return ranks


def ood_auroc(in_domain_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """AUROC of a score (higher = more unusual) for telling out-of-distribution inputs from in-domain ones."""
    a, b = _scores(in_domain_scores), _scores(ood_scores)
    flags = torch.cat([torch.zeros(a.numel(), dtype=torch.bool), torch.ones(b.numel(), dtype=torch.bool)])
    return auroc(torch.cat([a, b]), flags)


def selective_prediction(
    probs: ArrayLike, labels: ArrayLike, uncertainty: ArrayLike, coverages: Sequence[float] = COVERAGES
) -> dict[str, float]:
    """Accuracy when only the ``coverage`` least uncertain inputs are answered, and the AURC."""
    p = _probs(probs)
    y = _labels(labels, p.shape[0])
    u = _scores(uncertainty)
    if u.numel() != p.shape[0]:
        raise ValueError(f"{u.numel()} uncertainty scores for {p.shape[0]} predictions")
    correct = (p.argmax(dim=1) == y).double()[torch.argsort(u, stable=True)]
    n = correct.numel()
    answered = torch.arange(1, n + 1, dtype=torch.float64)
    risk = torch.cumsum(1.0 - correct, dim=0) / answered  # risk after answering the k most confident
    result = {}
    for coverage in coverages:
        k = max(1, round(coverage * n))
        result[f"accuracy_at_{round(coverage * 100)}"] = float(correct[:k].mean())
    result["aurc"] = float(risk.mean())
    return result


def mc_uncertainties(samples: Tensor) -> dict[str, Tensor]:
    """Predictive entropy and mutual information of ``(S, B, C)`` samples, each ``(B,)``."""
    return {"entropy": predictive_entropy(samples), "mutual_information": mutual_information(samples)}


def oov_fractions(n_tokens: Sequence[int], n_known: Sequence[int]) -> Tensor:
    """Share of unknown tokens per text (1.0 for a text with no tokens)."""
    total = torch.as_tensor(n_tokens, dtype=torch.float64)
    known = torch.as_tensor(n_known, dtype=torch.float64)
    return torch.where(total > 0, 1.0 - known / total.clamp_min(1.0), torch.ones_like(total))


# ---------------------------------------------------------------------------------------------------- plotting


def plot_reliability_diagram(
    curves: Mapping[str, ArrayLike], labels: ArrayLike, path: str | Path, n_bins: int = N_BINS, title: str = ""
) -> Path:
    """Write a reliability diagram (accuracy vs confidence per bin) for each named set of probabilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for name, probs in curves.items():
        bins = [b for b in reliability_bins(probs, labels, n_bins) if b["count"] > 0]
        ece = expected_calibration_error(probs, labels, n_bins)
        axis.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            label=f"{name} (ECE {ece:.3f})",
        )
    axis.set_xlabel("confidence (top-label probability)")
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(title or f"Reliability diagram ({n_bins} bins)")
    axis.legend(loc="upper left")
    figure.tight_layout()
    out = Path(path)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


# ------------------------------------------------------------------------------------------ temperature scaling


def apply_temperature(samples: Tensor, temperature: float) -> Tensor:
    """Re-temper ``(S, B, C)`` probabilities: ``softmax(log p / T)`` equals ``softmax(logits / T)``."""
    if temperature == 1.0:
        return samples
    log_p = samples.double().clamp_min(1e-300).log()
    return torch.softmax(log_p / temperature, dim=-1).to(samples.dtype)


def _mc_nll(log_p: Tensor, labels: Tensor, temperature: float) -> float:
    mean = torch.softmax(log_p / temperature, dim=-1).mean(dim=0)  # (S, B, C) -> (B, C)
    return float(-mean.gather(1, labels[:, None]).clamp_min(_EPS).log().mean())


def fit_temperature(
    samples: Tensor, labels: ArrayLike, bounds: tuple[float, float] = (0.2, 5.0)
) -> tuple[float, float, float]:
    """Temperature minimising the NLL of the MC mean; returns (T, NLL at T=1, NLL at T).

    A coarse log-spaced grid then golden-section search on log T: NLL(T) is smooth and unimodal in practice.
    """
    log_p = samples.double().clamp_min(1e-300).log()
    y = _labels(labels, samples.shape[1])
    grid = torch.linspace(np.log(bounds[0]), np.log(bounds[1]), 25).tolist()
    values = [_mc_nll(log_p, y, float(np.exp(g))) for g in grid]
    best = int(np.argmin(values))
    lo, hi = grid[max(0, best - 1)], grid[min(len(grid) - 1, best + 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if _mc_nll(log_p, y, float(np.exp(a))) < _mc_nll(log_p, y, float(np.exp(b))):
            hi = b
        else:
            lo = a
    temperature = float(np.exp((lo + hi) / 2.0))
    return temperature, _mc_nll(log_p, y, 1.0), _mc_nll(log_p, y, temperature)


def uncertainty_baseline(
    validation_samples: Tensor, test_samples: Tensor, validation_oov: Sequence[float] = ()
) -> dict[str, float]:
    """Drift reference: validation mean entropy and MI, the 95th percentile of validation MI as the
    high-uncertainty threshold, the share of test predictions above it, and (given the validation texts'
    out-of-vocabulary shares) the mean OOV share, the input-novelty reference."""
    val_mi = mutual_information(validation_samples).double()
    threshold = float(torch.quantile(val_mi, 0.95))
    baseline = {
        "mean_entropy": _r(predictive_entropy(validation_samples).double().mean()),
        "mean_mutual_information": _r(val_mi.mean()),
        "mutual_information_threshold": _r(threshold),
        "high_mi_share": _r((mutual_information(test_samples) > threshold).double().mean()),
    }
    if validation_oov:
        baseline["mean_oov_fraction"] = _r(sum(validation_oov) / len(validation_oov))
    return baseline


def _r(value: float | Tensor, digits: int = 6) -> float:
    return round(float(value), digits)


# -------------------------------------------------------------------------------------- evaluating an engine


@dataclass
class EvalResult:
    """Probabilities on the evaluation set and the JSON report built from them."""

    deterministic: Tensor  # (B, C)
    samples: Tensor  # (S, B, C)
    report: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """Headline figures (stored in the checkpoint's ``metrics``)."""
        return dict(self.report["summary"])


def _rounded(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: _r(v, 4) for k, v in metrics.items()}


def _timed_predictions(
    engine: MCEngine, texts: Sequence[str], n_samples: int, seed: int
) -> tuple[Tensor, Tensor, dict[str, float]]:
    start = time.perf_counter()
    deterministic = engine.predict_deterministic(texts)
    middle = time.perf_counter()
    samples = engine.predict_samples(texts, n_samples, seed)
    end = time.perf_counter()
    return deterministic, samples, {"deterministic": _r(middle - start, 3), "mc": _r(end - middle, 3)}


def _ood_report(
    engine: MCEngine, in_samples: Tensor, in_oov: Tensor, ood_texts: Sequence[str], n_samples: int, seed: int
) -> dict[str, Any]:
    ood_samples = engine.predict_samples(ood_texts, n_samples, seed)
    encoded = engine.encoder.encode(ood_texts)
    ood_oov = oov_fractions(encoded.n_tokens, encoded.n_known)
    signals = {
        "entropy": (predictive_entropy(in_samples), predictive_entropy(ood_samples)),
        "mutual_information": (mutual_information(in_samples), mutual_information(ood_samples)),
        "oov_fraction": (in_oov, ood_oov),
    }
    return {
        "n_ood": len(ood_texts),
        "auroc": {name: _r(ood_auroc(a, b), 4) for name, (a, b) in signals.items()},
        "mean_in_domain": {name: _r(a.double().mean()) for name, (a, _) in signals.items()},
        "mean_ood": {name: _r(b.double().mean()) for name, (_, b) in signals.items()},
    }


def evaluate_engine(
    engine: MCEngine, dataset: Dataset, ood_texts: Sequence[str], n_samples: int, seed: int
) -> EvalResult:
    """Deterministic and MC metrics on ``dataset``, selective prediction, and OOD AUROCs when ``ood_texts``."""
    if list(dataset.label_names) != list(engine.labels):
        raise ValueError(f"data labels {list(dataset.label_names)} differ from model labels {engine.labels}")
    deterministic, samples, seconds = _timed_predictions(engine, dataset.texts, n_samples, seed)
    mean = samples.mean(dim=0)
    uncertainty = mc_uncertainties(samples)
    encoded = engine.encoder.encode(dataset.texts)
    oov = oov_fractions(encoded.n_tokens, encoded.n_known)
    report: dict[str, Any] = {
        "n_examples": len(dataset),
        "n_samples": n_samples,
        "seed": seed,
        "temperature": engine.temperature,
        "deterministic": _rounded(classification_metrics(deterministic, dataset.labels)),
        "mc": _rounded(classification_metrics(mean, dataset.labels)),
        "selective_prediction": {
            name: _rounded(selective_prediction(mean, dataset.labels, score)) for name, score in uncertainty.items()
        },
        "mean_uncertainty": {name: _r(score.double().mean()) for name, score in uncertainty.items()}
        | {"oov_fraction": _r(oov.mean())},
        "seconds": seconds,
    }
    if ood_texts:
        report["ood"] = _ood_report(engine, samples, oov, ood_texts, n_samples, seed)
    report["summary"] = {
        "n_samples": n_samples,
        "deterministic": report["deterministic"],
        "mc": report["mc"],
        **({"ood_auroc": report["ood"]["auroc"]} if ood_texts else {}),
    }
    return EvalResult(deterministic, samples, report)


# ------------------------------------------------------------------------------------------------ mcdrop eval


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
    from mcdrop.data import RT_NAME, load_splits, read_labelled_file
    from mcdrop.errors import DatasetError

    data = args.data or training.get("dataset")
    text_column = args.text_column or training.get("text_column", "text")
    label_column = args.label_column or training.get("label_column", "label")
    if data is None:
        raise DatasetError("the checkpoint does not name its training data; pass --data rt or --data FILE")
    if args.data is not None and data != RT_NAME:
        return read_labelled_file(data, text_column, label_column, labels), []
    splits = load_splits(str(data), text_column, label_column, seed=int(training.get("split_seed", 0)))
    if list(splits.label_names) != list(labels):
        raise DatasetError(f"{data} has labels {list(splits.label_names)}; the model has {list(labels)}")
    return splits.test, splits.ood_texts


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mcdrop eval``: prints the JSON report; with ``--out`` also writes it and the diagram."""
    from mcdrop.engine import load_engine
    from mcdrop.errors import ConfigError

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
        logger.info("wrote %s and %s", out / "eval_report.json", out / "reliability.png")
    print(text)
    return 0
