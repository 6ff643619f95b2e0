"""``mcdrop train``: fit a dropout MLP or GRU on labelled texts and write a checkpoint directory.

Steps: load and split the data (:mod:`mcdrop.training.data`), build the vocabulary on the training split, train with
AdamW and early stopping on validation NLL (the best epoch's weights are kept), fit a temperature to the
validation split's Monte Carlo predictions (kept only if it lowers validation NLL), evaluate on the test split
and the out-of-distribution set (:func:`mcdrop.training.report.evaluate_engine`), then save the checkpoint with its
metrics, uncertainty baseline, ``eval_report.json`` and a reliability diagram.

Everything is seeded: the split (``--split-seed``), initialisation and shuffling (``--seed``) and the Monte
Carlo masks used for calibration and evaluation (``--eval-seed``).

Example::

    mcdrop train --architecture mlp --data rt --out models --name rt-mlp
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mcdrop.core.checkpoint import Checkpoint, save_checkpoint
from mcdrop.core.checkpoint_checks import DEFAULT_TEMPERATURE
from mcdrop.core.contract import MCModel
from mcdrop.core.engine import MCEngine, load_engine
from mcdrop.core.ensemble import DropoutEnsemble
from mcdrop.core.errors import ConfigError
from mcdrop.core.registry import build_model
from mcdrop.core.text import TextEncoder
from mcdrop.training.calibrate import build_calibration, fit_novelty_model
from mcdrop.training.calibration import apply_temperature, fit_temperature, uncertainty_baseline
from mcdrop.training.data import Dataset, DataSplits, load_splits
from mcdrop.training.lexicon import extend_vocabulary, load_valence, prior_table
from mcdrop.training.loop import History, fit_model, init_embeddings_from, scale_embeddings
from mcdrop.training.options import TrainOptions
from mcdrop.training.plots import plot_reliability_diagram, plot_risk_coverage
from mcdrop.training.report import evaluate_engine
from mcdrop.training.shift_check import shift_report, standin_sets

logger = logging.getLogger(__name__)

REPORT_FILE = "eval_report.json"
DIAGRAM_FILE = "reliability.png"
RISK_COVERAGE_FILE = "risk_coverage.png"


def build_encoder(train: Dataset, options: TrainOptions) -> TextEncoder:
    encoder = TextEncoder.fit(
        train.texts,
        max_size=options.vocab_size,
        min_count=options.min_count,
        ngram_max=options.ngram_max,
        max_tokens=options.max_tokens,
    )
    if options.subword_buckets:
        encoder = TextEncoder(
            encoder.vocab, options.ngram_max, options.max_tokens, encoder.lowercase, options.subword_buckets
        )
    logger.info(
        "vocabulary: %d entries (n-grams up to %d), %d subword buckets",
        len(encoder.vocab),
        options.ngram_max,
        options.subword_buckets,
    )
    return encoder


def _engine(model: MCModel, encoder: TextEncoder, config: dict[str, Any], out: Path) -> MCEngine:
    # A row of a recurrent tail holds a whole sequence: smaller chunks keep long texts' activations in memory.
    rows = 2048 if model.stochastic_recurrence else 32768
    return MCEngine(Checkpoint(out, config, model, encoder), device="cpu", max_batch_rows=rows)


def train(options: TrainOptions) -> Path:
    """Run one training end to end and return the checkpoint directory."""
    options.check()
    splits = load_splits(options.data, options.text_column, options.label_column, seed=options.split_seed)
    model, encoder, history = _fit(options, splits)
    out = Path(options.out) / options.name
    config = _base_config(options, splits, encoder, history)
    engine = _engine(model, encoder, config, out)
    val_samples = engine.predict_samples(splits.validation.texts, options.n_samples, options.eval_seed)
    config["temperature"] = _choose_temperature(val_samples, splits.validation.labels, options)
    engine.temperature = config["temperature"]
    val_samples = apply_temperature(val_samples, config["temperature"])
    _calibrate(engine, splits, options)
    result = evaluate_engine(engine, splits.test, splits.ood_texts, options.n_samples, options.eval_seed)
    config["metrics"] = result.summary()
    val_encoded = encoder.encode(splits.validation.texts)
    val_oov = [val_encoded.oov_fraction(i) for i in range(len(val_encoded))]
    config["uncertainty_baseline"] = uncertainty_baseline(val_samples, result.samples, val_oov)
    save_checkpoint(out, model, encoder, config, engine.calibration, engine.novelty_model)
    report = {"name": options.name, **result.report, "uncertainty_baseline": config["uncertainty_baseline"]}
    report["standin_shift"] = shift_report(
        lambda texts: engine.predict_samples(texts, options.n_samples, options.eval_seed).mean(0),
        standin_sets(splits.validation, splits.train.texts, seed=options.eval_seed),
    )
    logger.info("stand-in shift (validation, MC): %s", report["standin_shift"])
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    title = f"{options.name}: test split, {options.n_samples} MC samples"
    plot_reliability_diagram(
        {"deterministic": result.deterministic, "MC mean": result.samples.mean(0)},
        splits.test.labels,
        out / DIAGRAM_FILE,
        title=title,
    )
    if result.risk_curve is not None:
        plot_risk_coverage(result.risk_curve, out / RISK_COVERAGE_FILE, title=title)
    return out


def _fit(options: TrainOptions, splits: DataSplits) -> tuple[MCModel, TextEncoder, History]:
    """Vocabulary, model (``ensemble_size`` members, seeds ``seed``, ``seed + 1``, …) and its training (on the train
    split; early stopping on validation, each member on its own)."""
    encoder = build_encoder(splits.train, options)
    n_trained, prior = len(encoder.vocab), None
    if options.lexicon_prior:
        valence = load_valence()
        encoder, n_trained = extend_vocabulary(encoder, sorted(valence))
        prior = prior_table(encoder.vocab, valence, encoder.n_ids)
    train_ids, val_ids = encoder.encode(splits.train.texts).ids, encoder.encode(splits.validation.texts).ids
    targets = _training_targets(splits, options)
    members: list[MCModel] = []
    histories: list[History] = []
    for k in range(options.ensemble_size):
        torch.manual_seed(options.seed + k)
        member = build_model(options.architecture, encoder.n_ids, len(splits.label_names), options.model_params())
        scale_embeddings(member, options.embed_init_std)
        if options.init_embeddings:
            init_embeddings_from(member, encoder, options.init_embeddings)
        with torch.no_grad():
            member.token_embeddings()[n_trained:] = 0.0  # lexicon words the vocabulary lacked start at zero
            if prior is not None:
                member.load_state_dict(member.state_dict() | {"token_prior": prior})
        if options.freeze_embeddings:
            member.token_embeddings().requires_grad_(False)
        member.to(options.device)
        if options.ensemble_size > 1:
            logger.info("ensemble member %d of %d (seed %d)", k + 1, options.ensemble_size, options.seed + k)
        histories.append(fit_model(member, train_ids, targets, val_ids, splits.validation.labels, options))
        members.append(member.to("cpu"))
    model = members[0] if len(members) == 1 else DropoutEnsemble(members)
    return model, encoder, _merged(histories)


def _training_targets(splits: DataSplits, options: TrainOptions) -> Tensor:
    """Label ids, or with ``distill_from`` soft targets: ``1 - w`` of the label and ``w`` of a trained teacher's
    MC mean probabilities on each training text (knowledge distillation; the teacher saw the same split)."""
    labels = torch.tensor(splits.train.labels)
    if not options.distill_from:
        return labels
    teacher = load_engine(options.distill_from, device="cpu")
    if teacher.labels != list(splits.label_names):
        raise ConfigError(f"--distill-from: the teacher's labels {teacher.labels} differ from the data's")
    probs = teacher.predict_samples(splits.train.texts, teacher.default_n_samples, options.eval_seed).mean(0)
    hard = torch.nn.functional.one_hot(labels, len(splits.label_names)).float()
    logger.info("distilling %s (weight %.2f) into the training targets", options.distill_from, options.distill_weight)
    return (1.0 - options.distill_weight) * hard + options.distill_weight * probs


def _merged(histories: list[History]) -> History:
    """One member's history as is; an ensemble's: the first member's epochs, every member's best epoch, the sum of
    the seconds."""
    if len(histories) == 1:
        return histories[0]
    merged = History(epochs=histories[0].epochs, best_epoch=histories[0].best_epoch)
    merged.seconds = sum(h.seconds for h in histories)
    merged.member_best_epochs = [h.best_epoch for h in histories]
    return merged


def _calibrate(engine: MCEngine, splits: DataSplits, options: TrainOptions) -> None:
    """The novelty model (training texts) and the calibration (calibration split) of ``engine``, when there is a
    calibration split."""
    if splits.calibration is None:
        logger.warning("no calibration split (too little data): the checkpoint will not support decisions")
        return
    engine.novelty_model = fit_novelty_model(splits.train.texts, engine.encoder)
    engine.calibration = build_calibration(
        engine,
        splits.validation,
        splits.calibration,
        options.n_samples,
        options.eval_seed,
        source=f"calibration split of {options.data}: {len(splits.calibration)} texts, {splits.description['split']}",
    )


def _choose_temperature(samples: Tensor, labels: Sequence[int], options: TrainOptions) -> float:
    if not options.temperature_scaling:
        return DEFAULT_TEMPERATURE
    temperature, before, after = fit_temperature(samples, labels)
    if after < before - 1e-4:
        logger.info("temperature %.3f: validation MC NLL %.4f -> %.4f", temperature, before, after)
        return round(temperature, 4)
    logger.info("temperature scaling does not lower validation NLL (%.4f); keeping 1.0", before)
    return DEFAULT_TEMPERATURE


def _base_config(options: TrainOptions, splits: DataSplits, encoder: TextEncoder, history: History) -> dict[str, Any]:
    return {
        "name": options.name,
        "version": options.model_version,
        "labels": list(splits.label_names),
        "model_params": options.model_params(),
        "tokenizer": {k: v for k, v in encoder.to_json().items() if k != "tokens"} | {"vocab_size": len(encoder.vocab)},
        "default_n_samples": options.n_samples,
        "temperature": DEFAULT_TEMPERATURE,
        "training": {
            **splits.description,
            "sizes": {
                "train": len(splits.train),
                "calibration": len(splits.calibration or ()),
                "validation": len(splits.validation),
                "test": len(splits.test),
                "ood": len(splits.ood_texts),
            },
            "label_counts": splits.train.label_counts(),
            "hyper_parameters": options.hyper_parameters(),
            "epochs_run": history.epochs[-1]["epoch"] if history.epochs else 0,
            "best_epoch": history.best_epoch,
            **({"member_best_epochs": history.member_best_epochs} if history.member_best_epochs else {}),
            "early_stopping": "validation NLL (deterministic)",
            "train_seconds": round(history.seconds, 1),
            "history": history.epochs,
            "torch_version": torch.__version__,
        },
    }
