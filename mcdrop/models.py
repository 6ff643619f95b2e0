"""Text classifiers with Monte Carlo dropout: a bag-of-words MLP and a GRU.

Each model splits its forward pass in two so the engine pays the deterministic part once per input:

* ``prefix(batch)``: every layer before the first stochastic one (the vocabulary-sized ``EmbeddingBag`` of the
  MLP; the embedding lookup of a GRU with dropout before the recurrence, or the whole GRU when dropout sits
  only after it),
* ``stochastic_tail(state, sampler)``: the rest, evaluated for ``S`` dropout samples at once, ``(S, B, C)``.

``forward(batch)`` chains the two without a sampler: per-element dropout in ``train()``, none in ``eval()``.
Where the GRU's dropout sits is a trade-off reported in the checkpoint as ``dropout_placement``: before the
recurrence, N samples cost ~N GRU passes on a CPU; only after it, ~1 pass, but the samples see the same
recurrent features and the uncertainty is poorer.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mcdrop.dropout import MaskSampler, MCDropout, WordDropout, check_probability, inverted_dropout_mask
from mcdrop.errors import ConfigError


@dataclass(frozen=True)
class ModelInput:
    """A batch ready for a model: flat ids + offsets for bags, or padded ids + lengths for sequences."""

    ids: Tensor  # bag: (N_ids,); sequence: (B, T)
    offsets: Tensor | None = None  # bag: (B,) start of each text in ids
    lengths: Tensor | None = None  # sequence: (B,) on the CPU, as packing wants

    def __len__(self) -> int:
        if self.offsets is not None:
            return int(self.offsets.shape[0])
        return int(self.ids.shape[0])


def _expand_samples(x: Tensor, sampler: MaskSampler | None) -> Tensor:
    """(B, ...) -> (S, B, ...) as a view when sampling; unchanged otherwise."""
    if sampler is None:
        return x
    return x.unsqueeze(0).expand(sampler.samples_in_pass, *x.shape)


class DropoutMLP(nn.Module):
    """Bag-of-words MLP: ``EmbeddingBag`` (mean) → [dropout → Linear → ReLU]* → dropout → Linear.

    ``dropout_p`` has one probability per Linear layer (``len(hidden_dims) + 1``), applied to its input.
    """

    architecture = "mlp"

    def __init__(
        self,
        vocab_size: int,
        n_classes: int,
        embed_dim: int = 256,
        hidden_dims: Sequence[int] = (256,),
        dropout_p: Sequence[float] = (0.5, 0.5),
    ) -> None:
        super().__init__()
        if len(dropout_p) != len(hidden_dims) + 1:
            raise ConfigError(
                f"dropout_p needs one probability per linear layer: {len(hidden_dims) + 1} (got {len(dropout_p)})"
            )
        self.bag = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=0)
        self.bag_bias = nn.Parameter(torch.zeros(embed_dim))
        dims = [embed_dim, *hidden_dims]
        self.dropouts = nn.ModuleList(MCDropout(check_probability("dropout_p", p)) for p in dropout_p)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.classifier = nn.Linear(dims[-1], n_classes)

    @property
    def dropout_placement(self) -> str:
        return "after_embedding"

    @staticmethod
    def make_input(ids: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> ModelInput:
        lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
        offsets = torch.zeros(len(ids), dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)[:-1]
        flat = torch.tensor([t for seq in ids for t in seq], dtype=torch.long)
        return ModelInput(ids=flat.to(device), offsets=offsets.to(device))

    def prefix(self, batch: ModelInput) -> Tensor:
        """Deterministic bag embedding: ``(B, embed_dim)``."""
        return torch.relu(self.bag(batch.ids, batch.offsets) + self.bag_bias)

    def stochastic_tail(self, h: Tensor, sampler: MaskSampler | None = None) -> Tensor:
        """``(B, D)`` → logits ``(B, C)``, or ``(S, B, C)`` with a sampler."""
        x = _expand_samples(h, sampler)
        for dropout, linear in zip(self.dropouts, self.hidden, strict=False):
            x = torch.relu(linear(dropout(x, sampler)))
        logits: Tensor = self.classifier(self.dropouts[-1](x, sampler))
        return logits

    def forward(self, batch: ModelInput) -> Tensor:
        return self.stochastic_tail(self.prefix(batch))


class DropoutGRU(nn.Module):
    """GRU text classifier: embedding → word/locked dropout → GRU → max+mean pooling → dropout → Linear.

    Args:
        word_dropout_p: drop whole tokens (their embedding vectors).
        input_dropout_p: locked dropout on embeddings, one mask for every time step (keeps the fused GRU kernel).
        weight_dropout_p: DropConnect on the recurrent weight matrices; in MC mode each sample needs its own
            weights, so N samples cost N GRU passes on any device.
        output_dropout_p: dropout on the pooled features before the classifier.
        max_len: longest token sequence accepted (the encoder's ``max_tokens``).
    """

    architecture = "gru"

    def __init__(
        self,
        vocab_size: int,
        n_classes: int,
        embed_dim: int = 128,
        hidden_dim: int = 128,
        num_layers: int = 1,
        bidirectional: bool = True,
        word_dropout_p: float = 0.0,
        input_dropout_p: float = 0.0,
        weight_dropout_p: float = 0.0,
        output_dropout_p: float = 0.5,
        max_len: int = 256,
    ) -> None:
        super().__init__()
        if num_layers not in (1, 2):
            raise ConfigError(f"num_layers must be 1 or 2 (got {num_layers})")
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.word_dropout = WordDropout(check_probability("word_dropout_p", word_dropout_p), max_len)
        self.input_dropout = MCDropout(check_probability("input_dropout_p", input_dropout_p), shared_axes=(0,))
        self.gru = nn.GRU(embed_dim, hidden_dim, num_layers, batch_first=True, bidirectional=bidirectional)
        self.weight_dropout_p = check_probability("weight_dropout_p", weight_dropout_p)
        self.output_dropout = MCDropout(check_probability("output_dropout_p", output_dropout_p))
        n_directions = 2 if bidirectional else 1
        self.classifier = nn.Linear(2 * n_directions * hidden_dim, n_classes)
        self._recurrent_names = [n for n, _ in self.gru.named_parameters() if n.startswith("weight_hh")]

    @property
    def stochastic_recurrence(self) -> bool:
        """True when dropout sits before or inside the recurrence, so the GRU is part of the stochastic tail."""
        return self.word_dropout.p > 0 or self.input_dropout.p > 0 or self.weight_dropout_p > 0

    @property
    def dropout_placement(self) -> str:
        return "before_recurrence" if self.stochastic_recurrence else "after_recurrence"

    @staticmethod
    def make_input(ids: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> ModelInput:
        lengths = torch.tensor([max(1, len(i)) for i in ids], dtype=torch.long)
        padded = torch.zeros(len(ids), int(lengths.max()) if len(ids) else 1, dtype=torch.long)
        for row, seq in enumerate(ids):
            padded[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return ModelInput(ids=padded.to(device), lengths=lengths)

    def _recurrence(self, x: Tensor, lengths: Tensor, weights: dict[str, Tensor] | None = None) -> Tensor:
        """``(N, T, E)`` embeddings → pooled features ``(N, F)``: max and mean over each text's steps."""
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        if weights is None:
            output, _ = self.gru(packed)
        else:
            output, _ = functional_call(self.gru, weights, (packed,))
        states, _ = pad_packed_sequence(output, batch_first=True)  # (N, T, F/2)
        steps = torch.arange(states.shape[1], device=states.device)
        valid = (steps[None, :] < lengths.to(states.device)[:, None]).unsqueeze(-1)  # (N, T, 1)
        maximum = states.masked_fill(~valid, float("-inf")).max(dim=1).values
        mean = states.sum(dim=1) / lengths.to(states.device, states.dtype).unsqueeze(-1)
        return torch.cat([maximum, mean], dim=-1)

    def _dropped_weights(self, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        weights: dict[str, Tensor] = dict(self.gru.named_parameters())
        for name, mask in masks.items():
            weights[name] = weights[name] * mask
        return weights

    def prefix(self, batch: ModelInput) -> tuple[Tensor, Tensor]:
        """Embeddings ``(B, T, E)`` when the recurrence is stochastic, else pooled GRU features ``(B, F)``."""
        if batch.lengths is None:
            raise ValueError("DropoutGRU needs a sequence batch: build it with DropoutGRU.make_input")
        embedded = self.embedding(batch.ids)
        if self.stochastic_recurrence:
            return embedded, batch.lengths
        return self._recurrence(embedded, batch.lengths), batch.lengths

    def stochastic_tail(self, state: tuple[Tensor, Tensor], sampler: MaskSampler | None = None) -> Tensor:
        """Logits ``(B, C)``, or ``(S, B, C)`` with a sampler."""
        h, lengths = state
        if self.stochastic_recurrence:
            h = self._stochastic_recurrence(h, lengths, sampler)
        else:
            h = _expand_samples(h, sampler)
        logits: Tensor = self.classifier(self.output_dropout(h, sampler))
        return logits

    def _stochastic_recurrence(self, embedded: Tensor, lengths: Tensor, sampler: MaskSampler | None) -> Tensor:
        x = _expand_samples(embedded, sampler)  # (S, B, T, E) or (B, T, E)
        x = self.input_dropout(self.word_dropout(x, sampler), sampler)
        if sampler is None:
            weights = None
            if self.training and self.weight_dropout_p > 0:
                weights = self._dropped_weights(
                    {
                        n: inverted_dropout_mask(self.gru.get_parameter(n).shape, self.weight_dropout_p).to(x.device)
                        for n in self._recurrent_names
                    }
                )
            return self._recurrence(x, lengths, weights)
        n_samples, batch = x.shape[:2]
        if self.weight_dropout_p == 0:
            pooled = self._recurrence(x.reshape(n_samples * batch, *x.shape[2:]), lengths.repeat(n_samples))
            return pooled.view(n_samples, batch, -1)  # (S*B, F) -> (S, B, F)
        return self._weight_dropout_samples(x, lengths, sampler)

    def _weight_dropout_samples(self, x: Tensor, lengths: Tensor, sampler: MaskSampler) -> Tensor:
        """One GRU pass per (sample, seed group): each needs its own recurrent weights."""
        # (G, S, *W.shape) per recurrent matrix: one mask per seed group and sample, never one per input.
        masks = {
            n: sampler.group_masks(self.weight_dropout_p, self.gru.get_parameter(n).shape)
            for n in self._recurrent_names
        }
        n_samples, batch = x.shape[:2]
        groups = sampler.groups if sampler.groups is not None else torch.zeros(batch, dtype=torch.long)
        out: Tensor | None = None
        for group in torch.unique(groups).tolist():
            rows = (groups == group).nonzero().flatten()
            for s in range(n_samples):
                weights = self._dropped_weights({n: m[group, s] for n, m in masks.items()})
                pooled = self._recurrence(x[s, rows.to(x.device)], lengths[rows.cpu()], weights)
                if out is None:
                    out = x.new_empty(n_samples, batch, pooled.shape[-1])
                out[s, rows.to(x.device)] = pooled
        assert out is not None
        return out

    def forward(self, batch: ModelInput) -> Tensor:
        return self.stochastic_tail(self.prefix(batch))


MODEL_CLASSES: dict[str, type[DropoutMLP] | type[DropoutGRU]] = {"mlp": DropoutMLP, "gru": DropoutGRU}


def build_model(architecture: str, vocab_size: int, n_classes: int, params: dict[str, Any]) -> DropoutMLP | DropoutGRU:
    """Instantiate a model from its checkpoint description."""
    if architecture not in MODEL_CLASSES:
        raise ConfigError(f"unknown architecture {architecture!r}: choose one of {sorted(MODEL_CLASSES)}")
    if n_classes < 2:
        raise ConfigError(f"a classifier needs at least two labels (got {n_classes})")
    try:
        return MODEL_CLASSES[architecture](vocab_size, n_classes, **params)
    except (TypeError, ValueError, RuntimeError) as error:  # unknown names, negative or zero sizes
        raise ConfigError(f"invalid {architecture} parameters: {error}") from error
