"""Bag-of-words MLP with Monte Carlo dropout: ``EmbeddingBag`` (mean) → [dropout → Linear → ReLU]* → dropout → Linear.

The vocabulary-sized ``EmbeddingBag`` is the deterministic prefix, run once per input; only the small head is
sampled, so N samples cost little more than one pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mcdrop.core.contract import ModelInput, expand_samples
from mcdrop.core.dropout import MaskSampler, MCDropout, check_probability, has_active_dropout
from mcdrop.core.errors import ConfigError


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

    @property
    def stochastic_recurrence(self) -> bool:
        return False

    @property
    def mc_active(self) -> bool:
        return has_active_dropout(self)

    @property
    def thread_safe_tail(self) -> bool:
        return True

    def token_embeddings(self) -> Tensor:
        return self.bag.weight

    def check_encoder(self, ngram_max: int, max_tokens: int) -> str | None:
        return None  # a bag takes any n-grams, in any number

    @staticmethod
    def make_input(ids: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> ModelInput:
        # offsets in Python: two tensors built from lists cost less than the tensor ops that derive one
        starts = list(itertools.accumulate((len(seq) for seq in ids[:-1]), initial=0)) if ids else []
        offsets = torch.tensor(starts, dtype=torch.long)
        flat = torch.tensor([t for seq in ids for t in seq], dtype=torch.long)
        if torch.device(device).type == "cpu":
            return ModelInput(ids=flat, offsets=offsets)
        return ModelInput(ids=flat.to(device), offsets=offsets.to(device))

    def prefix(self, batch: ModelInput) -> Tensor:
        """Deterministic bag embedding: ``(B, embed_dim)``."""
        return torch.relu(self.bag(batch.ids, batch.offsets) + self.bag_bias)

    def stochastic_tail(self, h: Tensor, sampler: MaskSampler | None = None) -> Tensor:
        """``(B, D)`` → logits ``(B, C)``, or ``(S, B, C)`` with a sampler."""
        x = expand_samples(h, sampler)
        for dropout, linear in zip(self.dropouts, self.hidden, strict=False):
            x = torch.relu(linear(dropout(x, sampler)))
        logits: Tensor = self.classifier(self.dropouts[-1](x, sampler))
        return logits

    def forward(self, batch: ModelInput) -> Tensor:
        return self.stochastic_tail(self.prefix(batch))
