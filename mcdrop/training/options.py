"""The settings of one training run (``TrainOptions``), checked with messages that name the ``mcdrop train`` flag.

``TrainOptions`` is what ``mcdrop train`` builds from its flags and what the shipped models' recipe
(:mod:`mcdrop.training.recipe`) writes down; ``model_params()`` is the part stored in ``config.json`` to rebuild
the model, ``hyper_parameters()`` the part recorded with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mcdrop.core.checkpoint_checks import DEFAULT_N_SAMPLES
from mcdrop.core.ensemble import MAX_MEMBERS
from mcdrop.core.errors import ConfigError
from mcdrop.core.registry import MODEL_CLASSES
from mcdrop.training.lexicon import PRIOR_FEATURES


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
    gate_dropout: float = 0.0
    output_dropout: float = 0.5
    lr: float = 2e-3
    weight_decay: float = 0.0
    lr_decay: float = 1.0
    batch_size: int = 64
    epochs: int = 20
    patience: int = 3
    evals_per_epoch: int = 1
    n_samples: int = DEFAULT_N_SAMPLES
    temperature_scaling: bool = True
    embed_init_std: float = 0.05
    init_embeddings: str | None = None
    freeze_embeddings: bool = False
    ensemble_size: int = 1
    lexicon_prior: bool = False
    token_dropout: float = 0.0
    bag_skip: bool = False
    subword_buckets: int = 0
    distill_from: str | None = None
    distill_weight: float = 0.5
    device: str = "cpu"

    def check(self) -> None:
        if self.architecture not in MODEL_CLASSES:
            raise ConfigError(
                f"--architecture must be one of {', '.join(sorted(MODEL_CLASSES))} (got {self.architecture!r})"
            )
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
        if self.gate_dropout and (
            self.word_dropout or self.input_dropout or self.weight_dropout or self.num_layers != 1
        ):
            raise ConfigError(
                "--gate-dropout replaces --word-dropout, --input-dropout and --weight-dropout (set them to 0) and "
                f"needs --num-layers 1 (got {self.num_layers})"
            )
        if self.subword_buckets < 0:
            raise ConfigError(f"--subword-buckets must be at least 0 (got {self.subword_buckets})")
        if not 1 <= self.ensemble_size <= MAX_MEMBERS:
            raise ConfigError(f"--ensemble-size must be in [1, {MAX_MEMBERS}] (got {self.ensemble_size})")
        if self.min_count < 1 or self.vocab_size < 3:
            raise ConfigError("--min-count must be at least 1 and --vocab-size at least 3")

    def _probabilities(self) -> dict[str, float]:
        probs = {f"--dropout-p[{i}]": p for i, p in enumerate(self.dropout_p)}
        probs.update(
            {
                "--word-dropout": self.word_dropout,
                "--input-dropout": self.input_dropout,
                "--weight-dropout": self.weight_dropout,
                "--gate-dropout": self.gate_dropout,
                "--output-dropout": self.output_dropout,
                "--token-dropout": self.token_dropout,
                "--distill-weight": self.distill_weight,
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
        prior: dict[str, Any] = {"prior_dim": len(PRIOR_FEATURES)} if self.lexicon_prior else {}
        prior |= {"token_dropout_p": self.token_dropout} if self.token_dropout else {}
        if self.architecture == "mlp":
            return {"embed_dim": self.embed_dim, "hidden_dims": self.hidden_dims, "dropout_p": self.dropout_p} | prior
        return (
            {
                "embed_dim": self.embed_dim,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "bidirectional": self.bidirectional,
                "word_dropout_p": self.word_dropout,
                "input_dropout_p": self.input_dropout,
                "weight_dropout_p": self.weight_dropout,
                "output_dropout_p": self.output_dropout,
                "max_tokens": self.max_tokens,
            }
            | prior
            | ({"bag_skip": True} if self.bag_skip else {})
            | ({"gate_dropout_p": self.gate_dropout} if self.gate_dropout else {})
            | ({"subword_buckets": self.subword_buckets} if self.subword_buckets else {})
        )

    def hyper_parameters(self) -> dict[str, Any]:
        """Settings that shaped the weights (no paths or names)."""
        skip = {"out", "name", "data", "text_column", "label_column", "model_version", "device"}
        return {k: v for k, v in asdict(self).items() if k not in skip}
