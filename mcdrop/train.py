"""``mcdrop train``: fit a dropout MLP or GRU on labelled texts and write a checkpoint directory.

Steps: load and split the data (:mod:`mcdrop.data`), build the vocabulary on the training split, train with
AdamW and early stopping on validation NLL (the best epoch's weights are kept), fit a temperature to the
validation split's Monte Carlo predictions (kept only if it lowers validation NLL), evaluate on the test split
and the out-of-distribution set (:func:`mcdrop.evaluation.evaluate_engine`), then save the checkpoint with its
metrics, uncertainty baseline, ``eval_report.json`` and a reliability diagram.

Everything is seeded: the split (``--split-seed``), initialisation and shuffling (``--seed``) and the Monte
Carlo masks used for calibration and evaluation (``--eval-seed``).

Example::

    mcdrop train --architecture mlp --data rt --out models --name rt-mlp
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mcdrop.checkpoint import Checkpoint, save_checkpoint
from mcdrop.data import Dataset, DataSplits, load_splits
from mcdrop.engine import MCEngine
from mcdrop.errors import ConfigError
from mcdrop.evaluation import (
    apply_temperature,
    evaluate_engine,
    fit_temperature,
    plot_reliability_diagram,
    uncertainty_baseline,
)
from mcdrop.models import DropoutGRU, DropoutMLP, build_model
from mcdrop.text import TextEncoder

logger = logging.getLogger(__name__)

REPORT_FILE = "eval_report.json"
DIAGRAM_FILE = "reliability.png"


@dataclass
class TrainOptions:
    """Every setting of one training run; :meth:`check` validates them with messages naming the flag."""

    architecture: str
    out: str
    name: str
    data: str = "rt"
    text_column: str = "text"
    label_column: str = "label"
    model_version: str = "1"
    split_seed: int = 0
    seed: int = 0
    eval_seed: int = 0
    vocab_size: int = 30000
    min_count: int = 2
    ngram_max: int = 1
    max_tokens: int = 256
    embed_dim: int = 64
    hidden_dims: list[int] = field(default_factory=lambda: [64])
    dropout_p: list[float] = field(default_factory=lambda: [0.5, 0.5])
    hidden_dim: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    word_dropout: float = 0.0
    input_dropout: float = 0.0
    weight_dropout: float = 0.0
    output_dropout: float = 0.5
    lr: float = 2e-3
    weight_decay: float = 0.0
    lr_decay: float = 1.0
    batch_size: int = 64
    epochs: int = 20
    patience: int = 3
    evals_per_epoch: int = 1
    n_samples: int = 50
    temperature_scaling: bool = True
    embed_init_std: float = 0.05
    init_embeddings: str | None = None
    freeze_embeddings: bool = False
    device: str = "cpu"

    def check(self) -> None:
        if self.architecture not in ("mlp", "gru"):
            raise ConfigError(f"--architecture must be mlp or gru (got {self.architecture!r})")
        for flag, value in self._probabilities().items():
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{flag} must be a probability in [0, 1] (got {value})")
        for flag, number in self._positive().items():
            if number <= 0:
                raise ConfigError(f"{flag} must be greater than 0 (got {number})")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError(f"--lr-decay must be in (0, 1] (got {self.lr_decay})")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be at least 0 (got {self.weight_decay})")
        if self.architecture == "mlp" and len(self.dropout_p) != len(self.hidden_dims) + 1:
            raise ConfigError(
                f"--dropout-p needs one value per linear layer ({len(self.hidden_dims) + 1} for "
                f"--hidden-dims {','.join(map(str, self.hidden_dims))}), got {len(self.dropout_p)}"
            )
        if self.min_count < 1 or self.vocab_size < 3:
            raise ConfigError("--min-count must be at least 1 and --vocab-size at least 3")

    def _probabilities(self) -> dict[str, float]:
        probs = {f"--dropout-p[{i}]": p for i, p in enumerate(self.dropout_p)}
        probs.update(
            {
                "--word-dropout": self.word_dropout,
                "--input-dropout": self.input_dropout,
                "--weight-dropout": self.weight_dropout,
                "--output-dropout": self.output_dropout,
            }
        )
        return probs

    def _positive(self) -> dict[str, float]:
        return {
            "--n-samples": self.n_samples,
            "--epochs": self.epochs,
            "--patience": self.patience,
            "--evals-per-epoch": self.evals_per_epoch,
            "--batch-size": self.batch_size,
            "--lr": self.lr,
            "--embed-dim": self.embed_dim,
            "--hidden-dim": self.hidden_dim,
            "--ngram-max": self.ngram_max,
            "--max-tokens": self.max_tokens,
            **{f"--hidden-dims[{i}]": d for i, d in enumerate(self.hidden_dims)},
        }

    def model_params(self) -> dict[str, Any]:
        """Constructor arguments of the model, as stored in ``config.json``."""
        if self.architecture == "mlp":
            return {"embed_dim": self.embed_dim, "hidden_dims": self.hidden_dims, "dropout_p": self.dropout_p}
        return {
            "embed_dim": self.embed_dim,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            "word_dropout_p": self.word_dropout,
            "input_dropout_p": self.input_dropout,
            "weight_dropout_p": self.weight_dropout,
            "output_dropout_p": self.output_dropout,
            "max_len": self.max_tokens,
        }

    def hyper_parameters(self) -> dict[str, Any]:
        """Settings that shaped the weights (no paths or names)."""
        skip = {"out", "name", "data", "text_column", "label_column", "model_version", "device"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


# --------------------------------------------------------------------------------------------- training loop


@dataclass
class History:
    """Per-epoch validation figures and the epoch whose weights were kept."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: float = 0.0
    seconds: float = 0.0


def _batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator, bucket: bool) -> list[list[int]]:
    """Shuffled mini-batches; with ``bucket`` texts of similar length share a batch (less GRU padding)."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if bucket:
        pool = batch_size * 50
        order = [i for s in range(0, len(order), pool) for i in sorted(order[s : s + pool], key=lengths.__getitem__)]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _validation_loss(
    model: DropoutMLP | DropoutGRU, ids: list[list[int]], labels: Tensor, device: str
) -> tuple[float, float]:
    """Deterministic (dropout off) NLL and accuracy."""
    model.eval()
    logits = []
    with torch.inference_mode():
        for s in range(0, len(ids), 512):
            logits.append(model(model.make_input(ids[s : s + 512], device)).float().cpu())
    all_logits = torch.cat(logits)
    nll = float(nn.functional.cross_entropy(all_logits, labels))
    acc = float((all_logits.argmax(1) == labels).float().mean())
    return nll, acc


class _EarlyStopping:
    """Keeps the weights with the lowest validation NLL; says stop after ``patience`` checks without one."""

    def __init__(self, model: nn.Module, patience: int) -> None:
        self.model, self.patience = model, patience
        self.best_nll, self.best_state, self.stale = math.inf, _copy_state(model), 0

    def check(self, val_nll: float) -> bool:
        """Record a validation NLL; True when training should stop."""
        if val_nll < self.best_nll - 1e-4:
            self.best_nll, self.best_state, self.stale = val_nll, _copy_state(self.model), 0
            return False
        self.stale += 1
        return self.stale >= self.patience


def fit_model(
    model: DropoutMLP | DropoutGRU,
    train_ids: list[list[int]],
    train_labels: Sequence[int] | Tensor,
    val_ids: list[list[int]],
    val_labels: Sequence[int],
    options: TrainOptions,
) -> History:
    """Train with AdamW, checking validation NLL ``evals_per_epoch`` times an epoch; stop after ``patience``
    checks without improvement and restore the best weights."""
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(options.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=options.lr_decay)
    # Targets are label ids (N,) or class probabilities (N, C) (soft targets); cross_entropy takes either.
    targets, val_targets = torch.as_tensor(train_labels), torch.tensor(val_labels)
    lengths = [len(i) for i in train_ids]
    history, stopper, start = History(), _EarlyStopping(model, options.patience), time.perf_counter()
    for epoch in range(1, options.epochs + 1):
        batches = _batches(lengths, options.batch_size, generator, bucket=options.architecture == "gru")
        checks = {round(len(batches) * (k + 1) / options.evals_per_epoch) for k in range(options.evals_per_epoch)}
        total, seen, stop = 0.0, 0, False
        model.train()
        for step, batch in enumerate(tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=None), start=1):
            logits = model(model.make_input([train_ids[i] for i in batch], options.device))
            loss = nn.functional.cross_entropy(logits, targets[batch].to(logits.device))
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            nn.utils.clip_grad_norm_(trainable, 5.0)
            optimizer.step()
            total, seen = total + loss.item() * len(batch), seen + len(batch)
            if step in checks:
                val_nll, val_acc = _validation_loss(model, val_ids, val_targets, options.device)
                model.train()
                point = round(epoch - 1 + step / len(batches), 2)
                history.epochs.append(
                    {"epoch": point, "train_loss": total / seen, "val_nll": val_nll, "val_acc": val_acc}
                )
                logger.info(
                    "epoch %.2f: train loss %.4f, val NLL %.4f, acc %.4f", point, total / seen, val_nll, val_acc
                )
                stop = stopper.check(val_nll)
                if stopper.stale == 0:
                    history.best_epoch = point
                if stop:
                    break
        if stop:
            break
        schedule.step()
    model.load_state_dict(stopper.best_state)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


def _copy_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------ orchestration


def build_encoder(train: Dataset, options: TrainOptions) -> TextEncoder:
    encoder = TextEncoder.fit(
        train.texts,
        max_size=options.vocab_size,
        min_count=options.min_count,
        ngram_max=options.ngram_max,
        max_tokens=options.max_tokens,
    )
    logger.info("vocabulary: %d entries (n-grams up to %d)", len(encoder.vocab), options.ngram_max)
    return encoder


def embedding_table(model: DropoutMLP | DropoutGRU) -> Tensor:
    return model.bag.weight if isinstance(model, DropoutMLP) else model.embedding.weight


def scale_embeddings(model: DropoutMLP | DropoutGRU, std: float) -> None:
    """Re-draw the embedding table from N(0, std²) (padding row stays zero).

    PyTorch's default N(0, 1) swamps what the rare n-grams of a bag can learn: their random vectors stay
    large and act as noise, so the model overfits; small initial vectors let evidence decide.
    """
    table = embedding_table(model)
    with torch.no_grad():
        table.normal_(0.0, std)
        table[0].zero_()


def init_embeddings_from(model: DropoutMLP | DropoutGRU, encoder: TextEncoder, source: str) -> int:
    """Copy the unigram rows of a trained MLP checkpoint's bag embedding into a GRU's embedding table."""
    from mcdrop.checkpoint import load_checkpoint

    donor = load_checkpoint(source)
    if not isinstance(model, DropoutGRU) or not isinstance(donor.model, DropoutMLP):
        raise ConfigError("--init-embeddings copies a trained MLP's unigram embeddings into a GRU")
    table, donor_table = model.embedding.weight, donor.model.bag.weight
    if table.shape[1] != donor_table.shape[1]:
        raise ConfigError(f"--init-embeddings: embed dims differ ({table.shape[1]} vs {donor_table.shape[1]})")
    copied = 0
    with torch.no_grad():
        for row, token in enumerate(encoder.vocab.tokens[2:], start=2):
            donor_row = donor.encoder.vocab.index.get(token)
            if donor_row is not None:
                table[row] = donor_table[donor_row]
                copied += 1
    logger.info("initialised %d of %d embeddings from %s", copied, len(encoder.vocab), source)
    return copied


def _engine(model: DropoutMLP | DropoutGRU, encoder: TextEncoder, config: dict[str, Any], out: Path) -> MCEngine:
    # A GRU row holds a whole sequence: smaller chunks keep long texts' activations in memory.
    rows = 32768 if isinstance(model, DropoutMLP) else 2048
    return MCEngine(Checkpoint(out, config, model, encoder), device="cpu", max_batch_rows=rows)


def train(options: TrainOptions) -> Path:
    """Run one training end to end and return the checkpoint directory."""
    options.check()
    splits = load_splits(options.data, options.text_column, options.label_column, seed=options.split_seed)
    torch.manual_seed(options.seed)
    encoder = build_encoder(splits.train, options)
    model = build_model(options.architecture, len(encoder.vocab), len(splits.label_names), options.model_params())
    scale_embeddings(model, options.embed_init_std)
    if options.init_embeddings:
        init_embeddings_from(model, encoder, options.init_embeddings)
    if options.freeze_embeddings:
        embedding_table(model).requires_grad_(False)
    model.to(options.device)
    train_ids, val_ids = encoder.encode(splits.train.texts).ids, encoder.encode(splits.validation.texts).ids
    history = fit_model(model, train_ids, splits.train.labels, val_ids, splits.validation.labels, options)
    model.to("cpu")
    out = Path(options.out) / options.name
    config = _base_config(options, splits, encoder, history)
    engine = _engine(model, encoder, config, out)
    val_samples = engine.predict_samples(splits.validation.texts, options.n_samples, options.eval_seed)
    config["temperature"] = _choose_temperature(val_samples, splits.validation.labels, options)
    engine.temperature = config["temperature"]
    val_samples = apply_temperature(val_samples, config["temperature"])
    result = evaluate_engine(engine, splits.test, splits.ood_texts, options.n_samples, options.eval_seed)
    config["metrics"] = result.summary()
    val_encoded = encoder.encode(splits.validation.texts)
    val_oov = [val_encoded.oov_fraction(i) for i in range(len(val_encoded))]
    config["uncertainty_baseline"] = uncertainty_baseline(val_samples, result.samples, val_oov)
    save_checkpoint(out, model, encoder, config)
    report = {"name": options.name, **result.report, "uncertainty_baseline": config["uncertainty_baseline"]}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_reliability_diagram(
        {"deterministic": result.deterministic, "MC mean": result.samples.mean(0)},
        splits.test.labels,
        out / DIAGRAM_FILE,
        title=f"{options.name}: test split, {options.n_samples} MC samples",
    )
    return out


def _choose_temperature(samples: Tensor, labels: Sequence[int], options: TrainOptions) -> float:
    if not options.temperature_scaling:
        return 1.0
    temperature, before, after = fit_temperature(samples, labels)
    if after < before - 1e-4:
        logger.info("temperature %.3f: validation MC NLL %.4f -> %.4f", temperature, before, after)
        return round(temperature, 4)
    logger.info("temperature scaling does not lower validation NLL (%.4f); keeping 1.0", before)
    return 1.0


def _base_config(options: TrainOptions, splits: DataSplits, encoder: TextEncoder, history: History) -> dict[str, Any]:
    return {
        "name": options.name,
        "version": options.model_version,
        "labels": list(splits.label_names),
        "model_params": options.model_params(),
        "tokenizer": {k: v for k, v in encoder.to_json().items() if k != "tokens"} | {"vocab_size": len(encoder.vocab)},
        "default_n_samples": options.n_samples,
        "temperature": 1.0,
        "training": {
            **splits.description,
            "sizes": {
                "train": len(splits.train),
                "validation": len(splits.validation),
                "test": len(splits.test),
                "ood": len(splits.ood_texts),
            },
            "label_counts": splits.train.label_counts(),
            "hyper_parameters": options.hyper_parameters(),
            "epochs_run": history.epochs[-1]["epoch"] if history.epochs else 0,
            "best_epoch": history.best_epoch,
            "early_stopping": "validation NLL (deterministic)",
            "train_seconds": round(history.seconds, 1),
            "history": history.epochs,
            "torch_version": torch.__version__,
        },
    }


# ----------------------------------------------------------------------------------------------------------- CLI


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def _float_list(value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mcdrop train``; values are range-checked by :meth:`TrainOptions.check`."""
    d = TrainOptions("mlp", "", "")
    data = parser.add_argument_group("data")
    data.add_argument("--architecture", required=True, choices=["mlp", "gru"])
    data.add_argument("--data", default="rt", help="'rt' (Rotten Tomatoes, split by movie) or a CSV/TSV/JSONL file")
    data.add_argument("--text-column", default=d.text_column)
    data.add_argument("--label-column", default=d.label_column)
    data.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the train/validation/test split")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default="models", help="parent directory of the checkpoint")
    out.add_argument("--name", required=True, help="checkpoint name (its directory under --out)")
    out.add_argument("--model-version", default=d.model_version, help="version string stored in the checkpoint")
    text = parser.add_argument_group("vocabulary")
    text.add_argument("--vocab-size", type=int, default=d.vocab_size, help="entries incl. <pad>/<unk> and n-grams")
    text.add_argument("--min-count", type=int, default=d.min_count)
    text.add_argument("--ngram-max", type=int, default=None, help="default: 2 for mlp, 1 for gru")
    text.add_argument("--max-tokens", type=int, default=d.max_tokens)
    model = parser.add_argument_group("model")
    model.add_argument("--embed-dim", type=int, default=d.embed_dim)
    model.add_argument("--hidden-dims", type=_int_list, default=d.hidden_dims, help="mlp: comma-separated widths")
    model.add_argument("--dropout-p", type=_float_list, default=None, help="mlp: one p per linear layer (or one)")
    model.add_argument("--hidden-dim", type=int, default=d.hidden_dim, help="gru: hidden size per direction")
    model.add_argument("--num-layers", type=int, default=d.num_layers)
    model.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=d.bidirectional)
    model.add_argument("--word-dropout", type=float, default=d.word_dropout, help="gru: drop whole tokens")
    model.add_argument("--input-dropout", type=float, default=d.input_dropout, help="gru: locked embedding dropout")
    model.add_argument("--weight-dropout", type=float, default=d.weight_dropout, help="gru: DropConnect on W_hh")
    model.add_argument("--output-dropout", type=float, default=d.output_dropout, help="gru: before the classifier")
    model.add_argument("--embed-init-std", type=float, default=d.embed_init_std, help="std of initial embeddings")
    model.add_argument("--init-embeddings", default=None, help="gru: copy unigram embeddings from an MLP checkpoint")
    model.add_argument("--freeze-embeddings", action="store_true", help="do not train the embedding table")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=d.lr)
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decoupled weight decay")
    opt.add_argument("--lr-decay", type=float, default=d.lr_decay, help="learning rate factor applied each epoch")
    opt.add_argument("--batch-size", type=int, default=d.batch_size)
    opt.add_argument("--epochs", type=int, default=d.epochs)
    opt.add_argument("--patience", type=int, default=d.patience, help="validation checks without a better NLL")
    opt.add_argument("--evals-per-epoch", type=int, default=d.evals_per_epoch, help="validation checks per epoch")
    opt.add_argument("--seed", type=int, default=d.seed, help="initialisation and shuffling seed")
    opt.add_argument("--device", default=d.device)
    mc = parser.add_argument_group("Monte Carlo")
    mc.add_argument("--n-samples", type=int, default=d.n_samples, help="default MC samples stored in the checkpoint")
    mc.add_argument("--eval-seed", type=int, default=d.eval_seed, help="seed of the MC masks for calibration/eval")
    mc.add_argument("--temperature-scaling", action=argparse.BooleanOptionalAction, default=True)


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """Turn parsed flags into options, filling architecture-dependent defaults."""
    fields = {k: v for k, v in vars(args).items() if k in TrainOptions.__dataclass_fields__}
    if fields.get("ngram_max") is None:
        fields["ngram_max"] = 2 if args.architecture == "mlp" else 1
    n_linear = len(args.hidden_dims) + 1
    if fields.get("dropout_p") is None:
        fields["dropout_p"] = [0.5] * n_linear
    elif len(fields["dropout_p"]) == 1:
        fields["dropout_p"] = fields["dropout_p"] * n_linear
    return TrainOptions(**fields)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mcdrop train``: prints the test metrics as JSON."""
    out = train(options_from_args(args))
    report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    print(json.dumps({"checkpoint": str(out), **report.get("summary", {})}, indent=2))
    return 0
