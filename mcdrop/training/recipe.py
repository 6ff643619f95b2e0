"""Reproduce the shipped checkpoints from scratch: ``python -m mcdrop.training.recipe --out models``.

Trains, with the tuned and seeded settings below (see ``docs/training.md`` for how they were chosen):

* ``rt-mlp``: five :class:`~mcdrop.core.mlp.DropoutMLP` members on unigrams + bigrams with the valence-lexicon
  prior and training-only token dropout,
* ``rt-gru``: five :class:`~mcdrop.core.gru.DropoutGRU` members with dropout before the recurrence (locked input
  dropout), hashed subwords added to each word's embedding and training-only token dropout, trained on targets
  distilled from the new ``rt-mlp``,
* ``rt-gru-after``: the same GRU with dropout only after the recurrence, written to ``--work-dir`` (not
  shipped) so the two placements can be compared,

and a TF-IDF + logistic-regression reference on the same split. Prints a comparison table and whether each
shipped model beats the reference on accuracy and NLL with MC ECE at most 0.03.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mcdrop.core.text import ngrams, tokenize
from mcdrop.training.data import DataSplits, load_rotten_tomatoes
from mcdrop.training.metrics import classification_metrics
from mcdrop.training.options import TrainOptions
from mcdrop.training.shift_check import shift_report, standin_sets
from mcdrop.training.train import REPORT_FILE, train

logger = logging.getLogger(__name__)

SPLIT_SEED = 0
MAX_MC_ECE = 0.03

MLP = TrainOptions(
    architecture="mlp",
    out="models",
    name="rt-mlp",
    split_seed=SPLIT_SEED,
    vocab_size=30000,
    min_count=2,
    ngram_max=2,
    embed_dim=64,
    hidden_dims=[64],
    dropout_p=[0.5, 0.5],
    embed_init_std=0.01,
    lr=1e-3,
    weight_decay=0.01,
    batch_size=64,
    epochs=30,
    patience=3,
    n_samples=50,
    lexicon_prior=True,
    token_dropout=0.5,
    ensemble_size=5,
)

GRU = TrainOptions(
    architecture="gru",
    out="models",
    name="rt-gru",
    split_seed=SPLIT_SEED,
    vocab_size=30000,
    min_count=2,
    ngram_max=1,
    embed_dim=128,
    hidden_dim=64,
    bidirectional=True,
    word_dropout=0.0,
    input_dropout=0.6,
    output_dropout=0.5,
    embed_init_std=0.1,
    lr=1e-3,
    weight_decay=0.1,
    batch_size=64,
    epochs=20,
    patience=3,
    n_samples=30,
    ensemble_size=5,
    subword_buckets=1 << 14,
    token_dropout=0.5,  # with subwords: a dropped training word becomes <unk> and keeps its pieces
    distill_weight=0.7,  # the teacher, distill_from, is the rt-mlp trained first
)

# The other placement: the same GRU with dropout only after the recurrence (one GRU pass for all samples).
GRU_AFTER = replace(GRU, name="rt-gru-after", word_dropout=0.0, input_dropout=0.0, weight_dropout=0.0)


# ----------------------------------------------------------------------------------- TF-IDF + logistic regression


def _grams(text: str) -> list[str]:
    tokens = tokenize(text)
    return tokens + ngrams(tokens, 2)


def _tfidf(texts: Sequence[str], index: dict[str, int], idf: Tensor) -> Tensor:
    """Sublinear-tf TF-IDF rows, L2-normalised: a sparse ``(B, V)`` CSR matrix."""
    rows, cols, values = [], [], []
    for row, text in enumerate(texts):
        counts = Counter(g for g in _grams(text) if g in index)
        weights = {index[g]: (1.0 + math.log(c)) * float(idf[index[g]]) for g, c in counts.items()}
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        for col, weight in weights.items():
            rows.append(row)
            cols.append(col)
            values.append(weight / norm)
    coo = torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(values), (len(texts), len(index)))
    return coo.coalesce().to_sparse_csr()


def _fit_logistic(x: Tensor, y: Tensor, n_classes: int, c: float) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression with an L2 penalty ``|W|² / 2C`` (full-batch L-BFGS)."""
    weight = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight + bias, y, reduction="sum") + (weight**2).sum() / (2 * c)
        torch.autograd.backward(loss)
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return weight.detach(), bias.detach()


def tfidf_baseline(splits: DataSplits, c_values: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0)) -> dict[str, Any]:
    """TF-IDF (uni+bigrams seen in ≥ 2 training texts) + logistic regression, C chosen on validation NLL."""
    documents = [set(_grams(t)) for t in splits.train.texts]
    df = Counter(g for d in documents for g in d)
    kept = sorted(g for g, n in df.items() if n >= 2)
    index = {g: i for i, g in enumerate(kept)}
    idf = torch.tensor([math.log((1 + len(documents)) / (1 + df[g])) + 1.0 for g in kept])
    x_train, x_val, x_test = (_tfidf(d.texts, index, idf) for d in (splits.train, splits.validation, splits.test))
    y_train, n_classes = torch.tensor(splits.train.labels), len(splits.label_names)
    best: dict[str, Any] = {}
    for c in c_values:
        weight, bias = _fit_logistic(x_train, y_train, n_classes, c)
        val = classification_metrics(torch.softmax(x_val @ weight + bias, -1), splits.validation.labels)
        if not best or val["nll"] < best["validation"]["nll"]:
            test = classification_metrics(torch.softmax(x_test @ weight + bias, -1), splits.test.labels)
            best = {"c": c, "features": len(index), "validation": val, "test": test, "weights": (weight, bias)}
    weight, bias = best.pop("weights")
    best["standin_shift"] = shift_report(
        lambda texts: torch.softmax(_tfidf(texts, index, idf) @ weight + bias, -1),
        standin_sets(splits.validation, splits.train.texts, seed=SPLIT_SEED),
    )
    logger.info("TF-IDF + logistic regression: C=%s, test %s", best["c"], best["test"])
    return best


# ------------------------------------------------------------------------------------------------- comparison


def _row(name: str, directory: Path) -> dict[str, Any]:
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    report = json.loads((directory / REPORT_FILE).read_text(encoding="utf-8"))
    size = sum(p.stat().st_size for p in directory.iterdir() if p.name in ("model.safetensors", "vocab.json"))
    return {
        "model": name,
        "placement": config["dropout_placement"],
        "det": report["deterministic"],
        "mc": report["mc"],
        "ood": report.get("ood", {}).get("auroc", {}),
        "temperature": config["temperature"],
        "train_seconds": config["training"]["train_seconds"],
        "epochs": config["training"]["epochs_run"],
        "mc_seconds": report["seconds"]["mc"],
        "det_seconds": report["seconds"]["deterministic"],
        "n_samples": report["n_samples"],
        "size_mb": size / 1e6,
    }


def format_table(baseline: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of test metrics (deterministic / MC), OOD AUROCs and costs."""
    head = (
        "| model | placement | acc det/MC | NLL det/MC | Brier MC | ECE det/MC | OOD AUROC H / MI / OOV "
        "| train s | test MC s (N) | MB |"
    )
    lines = [head, "|" + "---|" * 10]
    b = baseline["test"]
    lines.append(
        f"| tfidf+logreg (C={baseline['c']}) | - | {b['accuracy']:.4f} | {b['nll']:.4f} | {b['brier']:.4f} "
        f"| {b['ece']:.4f} | - | - | - | - |"
    )
    for r in rows:
        d, m, o = r["det"], r["mc"], r["ood"]
        lines.append(
            f"| {r['model']} | {r['placement']} | {d['accuracy']:.4f} / {m['accuracy']:.4f} "
            f"| {d['nll']:.4f} / {m['nll']:.4f} | {m['brier']:.4f} | {d['ece']:.4f} / {m['ece']:.4f} "
            f"| {o.get('entropy', 0):.3f} / {o.get('mutual_information', 0):.3f} / {o.get('oov_fraction', 0):.3f} "
            f"| {r['train_seconds']:.0f} | {r['mc_seconds']:.2f} ({r['n_samples']}) | {r['size_mb']:.1f} |"
        )
    return "\n".join(lines)


def beats_baseline(row: dict[str, Any], baseline: dict[str, Any]) -> bool:
    """MC accuracy above, MC NLL and MC ECE below the reference's, with MC ECE at most 0.03."""
    ref = baseline["test"]
    mc = row["mc"]
    return bool(
        mc["accuracy"] > ref["accuracy"]
        and mc["nll"] < ref["nll"]
        and mc["ece"] < ref["ece"]
        and mc["ece"] <= MAX_MC_ECE
    )


def format_shift_table(baseline: dict[str, Any], reports: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of the stand-in shift check (validation-derived sets, MC): accuracy / NLL / ECE."""
    sets = list(baseline["standin_shift"])
    lines = [
        "| model | " + " | ".join(f"{name} acc / NLL / ECE" for name in sets) + " |",
        "|" + "---|" * (1 + len(sets)),
    ]
    for name, report in {"tfidf+logreg": baseline["standin_shift"], **reports}.items():
        cells = [f"{report[k]['accuracy']:.4f} / {report[k]['nll']:.4f} / {report[k]['ece']:.4f}" for k in sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcdrop.training.recipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="models", help="where rt-mlp and rt-gru are written")
    parser.add_argument("--work-dir", default=None, help="where the comparison GRU goes (default: a temp dir)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="mcdrop-compare-") as tmp:
        work = Path(args.work_dir or tmp)
        baseline = tfidf_baseline(load_rotten_tomatoes(seed=SPLIT_SEED))
        mlp = train(replace(MLP, out=str(out)))
        gru = train(replace(GRU, out=str(out), distill_from=str(mlp)))
        after = train(replace(GRU_AFTER, out=str(work), distill_from=str(mlp)))
        rows = [_row("rt-mlp", mlp), _row("rt-gru", gru), _row("rt-gru-after (not shipped)", after)]
        shifts = [json.loads((d / REPORT_FILE).read_text(encoding="utf-8"))["standin_shift"] for d in (mlp, gru)]
    print(format_table(baseline, rows))
    print()
    print(format_shift_table(baseline, {"rt-mlp": shifts[0], "rt-gru": shifts[1]}))
    for row in rows[:2]:
        verdict = "beats" if beats_baseline(row, baseline) else "does NOT beat"
        print(f"{row['model']} {verdict} TF-IDF + logistic regression (MC accuracy, NLL, ECE; MC ECE <= {MAX_MC_ECE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
