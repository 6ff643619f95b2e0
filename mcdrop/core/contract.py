"""The model contract: what the engine, the checkpoint format and training need from a text classifier.

A model splits its forward pass in two so the engine pays the deterministic part once per input:

* ``prefix(batch)``: every layer before the first stochastic one, run once per input;
* ``stochastic_tail(state, sampler)``: the rest, evaluated for ``S`` dropout samples at once, ``(S, B, C)``.

``forward(batch)`` chains the two without a sampler: per-element dropout in ``train()``, none in ``eval()``.
Both shipped models (:class:`~mcdrop.core.mlp.DropoutMLP`, :class:`~mcdrop.core.gru.DropoutGRU`) satisfy
:class:`MCModel`; a third architecture needs a class that does, and one line in :mod:`mcdrop.core.registry`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from mcdrop.core.dropout import MaskSampler
from mcdrop.core.errors import ConfigError


@dataclass(frozen=True)
class ModelInput:
    """A batch ready for a model: flat ids + offsets for bags, or padded ids + lengths for sequences (with the
    tokens' hashed subword ids as one bag per step when the model reads them)."""

    ids: Tensor  # bag: (N_ids,); sequence: (B, T)
    offsets: Tensor | None = None  # bag: (B,) start of each text in ids
    lengths: Tensor | None = None  # sequence: (B,) on the CPU, as packing wants
    pieces: Tensor | None = None  # sequence with subwords: (N_pieces,) every step's subword ids, step after step
    piece_offsets: Tensor | None = None  # sequence with subwords: (B·T,) start of each step's bag in pieces

    def __len__(self) -> int:
        if self.offsets is not None:
            return int(self.offsets.shape[0])
        return int(self.ids.shape[0])


class MCModel(Protocol):
    """A dropout text classifier the MC engine can sample (an ``nn.Module``).

    Attributes:
        architecture: the registry key written to ``config.json`` (``mlp``, ``gru``).
        dropout_placement: where dropout sits, which decides how much of the model each sample re-runs.
        stochastic_recurrence: whether a recurrence is part of the stochastic tail (the engine then keeps tail
            passes cache-sized on the CPU).
        mc_active: whether any dropout has ``p > 0``; without it MC samples would all agree, silently.
        thread_safe_tail: whether tail passes over different inputs may run on several threads at once (the
            engine spreads large CPU batches over threads); false when a pass swaps the module's own weights.
    """

    architecture: str
    training: bool

    @property
    def dropout_placement(self) -> str: ...

    @property
    def stochastic_recurrence(self) -> bool: ...

    @property
    def mc_active(self) -> bool: ...

    @property
    def thread_safe_tail(self) -> bool: ...

    def make_input(self, ids: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> ModelInput:
        """Token ids of each text (from :class:`~mcdrop.core.text.TextEncoder`) → a batch on ``device``."""
        ...

    def prefix(self, batch: ModelInput) -> Any:
        """The deterministic part; its result is what ``stochastic_tail`` takes: a tensor or a tuple of tensors
        with the inputs on the first axis (adaptive sampling selects the inputs still sampling from it)."""
        ...

    def stochastic_tail(self, state: Any, sampler: MaskSampler | None = None) -> Tensor:
        """Logits ``(B, C)``, or ``(S, B, C)`` with a sampler of ``S`` samples."""
        ...

    def check_encoder(self, ngram_max: int, max_tokens: int, subword_buckets: int = 0) -> str | None:
        """Why a text encoder with these settings cannot feed this model, or ``None`` when it can."""
        ...

    def token_embeddings(self) -> Tensor:
        """The ``(vocabulary, dim)`` token embedding table (training initialises and may freeze it)."""
        ...

    # The parts of nn.Module the engine, checkpoints and training use.
    def __call__(self, batch: ModelInput) -> Tensor: ...
    def train(self, mode: bool = True) -> Any: ...
    def eval(self) -> Any: ...
    def to(self, device: torch.device | str) -> Any: ...
    def requires_grad_(self, requires_grad: bool = True) -> Any: ...
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any: ...


def expand_samples(x: Tensor, sampler: MaskSampler | None) -> Tensor:
    """(B, ...) -> (S, B, ...) as a view when sampling; unchanged otherwise."""
    if sampler is None:
        return x
    return x.unsqueeze(0).expand(sampler.samples_in_pass, *x.shape)


def register_token_prior(model: nn.Module, vocab_size: int, prior_dim: int) -> int:
    """Give ``model`` a fixed ``token_prior`` buffer ``(vocab_size, prior_dim)`` (stored with the weights, never
    trained; filled by training, e.g. from a valence lexicon) when ``prior_dim`` > 0; returns ``prior_dim``."""
    if prior_dim < 0:
        raise ConfigError(f"prior_dim must be at least 0 (got {prior_dim})")
    if prior_dim:
        model.register_buffer("token_prior", torch.zeros(vocab_size, prior_dim))
    return prior_dim
