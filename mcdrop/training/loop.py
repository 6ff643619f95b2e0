"""The training loop: AdamW over length-bucketed mini-batches, early stopping on validation NLL, embedding set-up.

``fit_model`` trains any :class:`~mcdrop.core.contract.MCModel` on encoded texts, checks the deterministic
validation NLL ``evals_per_epoch`` times an epoch, stops after ``patience`` checks without improvement and keeps the
best weights. ``scale_embeddings`` and ``init_embeddings_from`` prepare the token embedding table.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mcdrop.core.checkpoint import load_checkpoint
from mcdrop.core.contract import MCModel
from mcdrop.core.errors import ConfigError
from mcdrop.core.text import TextEncoder
from mcdrop.training.options import TrainOptions

logger = logging.getLogger(__name__)


@dataclass
class History:
    """Per-epoch validation figures and the epoch whose weights were kept."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: float = 0.0
    seconds: float = 0.0
    member_best_epochs: list[float] = field(default_factory=list)  # an ensemble's, one per member


def _batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator, bucket: bool) -> list[list[int]]:
    """Shuffled mini-batches; with ``bucket`` texts of similar length share a batch (less GRU padding)."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if bucket:
        pool = batch_size * 50
        order = [i for s in range(0, len(order), pool) for i in sorted(order[s : s + pool], key=lengths.__getitem__)]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _validation_loss(model: MCModel, ids: list[list[int]], labels: Tensor, device: str) -> tuple[float, float]:
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

    def __init__(self, model: MCModel, patience: int) -> None:
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
    model: MCModel,
    train_ids: list[list[int]],
    train_labels: Sequence[int] | Tensor,
    val_ids: list[list[int]],
    val_labels: Sequence[int],
    options: TrainOptions,
) -> History:
    """Train with AdamW, checking validation NLL ``evals_per_epoch`` times an epoch; stop after ``patience``
    checks without improvement and restore the best weights."""
    generator = torch.Generator().manual_seed(options.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=options.lr_decay)
    # Targets are label ids (N,) or class probabilities (N, C) (soft targets); cross_entropy takes either.
    run = _Run(model, optimizer, trainable, torch.as_tensor(train_labels), val_ids, torch.tensor(val_labels), options)
    lengths = [len(i) for i in train_ids]
    history, stopper, start = History(), _EarlyStopping(model, options.patience), time.perf_counter()
    for epoch in range(1, options.epochs + 1):
        batches = _batches(lengths, options.batch_size, generator, bucket=options.architecture == "gru")
        if run.epoch(epoch, batches, train_ids, history, stopper):
            break
        schedule.step()
    model.load_state_dict(stopper.best_state)
    model.eval()
    history.seconds = time.perf_counter() - start
    return history


@dataclass
class _Run:
    """What one training run's epochs share."""

    model: MCModel
    optimizer: torch.optim.Optimizer
    trainable: list[nn.Parameter]
    targets: Tensor
    val_ids: list[list[int]]
    val_targets: Tensor
    options: TrainOptions

    def epoch(
        self,
        epoch: int,
        batches: list[list[int]],
        train_ids: list[list[int]],
        history: History,
        stopper: _EarlyStopping,
    ) -> bool:
        """One pass over ``batches`` with its validation checks; True when early stopping says stop."""
        from tqdm import tqdm

        model, options = self.model, self.options
        checks = {round(len(batches) * (k + 1) / options.evals_per_epoch) for k in range(options.evals_per_epoch)}
        total, seen = 0.0, 0
        model.train()
        for step, batch in enumerate(tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=None), start=1):
            logits = model(model.make_input([train_ids[i] for i in batch], options.device))
            loss = nn.functional.cross_entropy(logits, self.targets[batch].to(logits.device))
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            nn.utils.clip_grad_norm_(self.trainable, 5.0)
            self.optimizer.step()
            total, seen = total + loss.item() * len(batch), seen + len(batch)
            if step not in checks:
                continue
            val_nll, val_acc = _validation_loss(model, self.val_ids, self.val_targets, options.device)
            model.train()
            point = round(epoch - 1 + step / len(batches), 2)
            history.epochs.append({"epoch": point, "train_loss": total / seen, "val_nll": val_nll, "val_acc": val_acc})
            logger.info("epoch %.2f: train loss %.4f, val NLL %.4f, acc %.4f", point, total / seen, val_nll, val_acc)
            stop = stopper.check(val_nll)
            if stopper.stale == 0:
                history.best_epoch = point
            if stop:
                return True
        return False


def _copy_state(model: MCModel) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def scale_embeddings(model: MCModel, std: float) -> None:
    """Re-draw the embedding table from N(0, std²) (padding row stays zero).

    PyTorch's default N(0, 1) swamps what the rare n-grams of a bag can learn: their random vectors stay
    large and act as noise, so the model overfits; small initial vectors let evidence decide.
    """
    table = model.token_embeddings()
    with torch.no_grad():
        table.normal_(0.0, std)
        table[0].zero_()


def init_embeddings_from(model: MCModel, encoder: TextEncoder, source: str) -> int:
    """Copy the unigram rows of a trained MLP checkpoint's bag embedding into a GRU's embedding table."""
    donor = load_checkpoint(source)
    if model.architecture != "gru" or donor.model.architecture != "mlp":
        raise ConfigError("--init-embeddings copies a trained MLP's unigram embeddings into a GRU")
    table, donor_table = model.token_embeddings(), donor.model.token_embeddings()
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
