"""Bag-of-words MLP with Monte Carlo dropout: ``EmbeddingBag`` (mean) → [dropout → Linear → ReLU]* → dropout → Linear.

The vocabulary-sized ``EmbeddingBag`` is the deterministic prefix, run once per input; only the small head is
sampled, so N samples cost little more than one pass. With ``prior_dim`` > 0 the model also holds a fixed
``token_prior`` table (``(vocab, prior_dim)``, a buffer: stored with the weights, never trained) whose mean over a
text's ids joins the bag embedding: word knowledge from outside the training corpus (see
:mod:`mcdrop.training.lexicon`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mcdrop.core.contract import ModelInput, expand_samples, register_token_prior
from mcdrop.core.dropout import MaskSampler, MCDropout, check_probability, has_active_dropout
from mcdrop.core.errors import ConfigError


class DropoutMLP(nn.Module):
    """Bag-of-words MLP: ``EmbeddingBag`` (mean) → [dropout → Linear → ReLU]* → dropout → Linear.

    ``dropout_p`` has one probability per Linear layer (``len(hidden_dims) + 1``), applied to its input;
    ``prior_dim`` is the width of the fixed per-token prior table (0: none). ``token_dropout_p`` drops ids from the
    learned bag during training only (never from the prior, never in Monte Carlo or eval passes): the model must
    also learn to answer from the words it has left, and from the prior for the words it lacks, which is what text
    of another domain asks of it.
    """

    architecture = "mlp"
    token_prior: Tensor  # (vocab, prior_dim) buffer, present when prior_dim > 0

    def __init__(
        self,
        vocab_size: int,
        n_classes: int,
        embed_dim: int = 256,
        hidden_dims: Sequence[int] = (256,),
        dropout_p: Sequence[float] = (0.5, 0.5),
        prior_dim: int = 0,
        token_dropout_p: float = 0.0,
    ) -> None:
        super().__init__()
        if len(dropout_p) != len(hidden_dims) + 1:
            raise ConfigError(
                f"dropout_p needs one probability per linear layer: {len(hidden_dims) + 1} (got {len(dropout_p)})"
            )
        self.bag = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=0)
        self.bag_bias = nn.Parameter(torch.zeros(embed_dim))
        self.prior_dim = register_token_prior(self, vocab_size, prior_dim)
        self.token_dropout_p = check_probability("token_dropout_p", token_dropout_p)
        dims = [embed_dim + prior_dim, *hidden_dims]
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

    def check_encoder(self, ngram_max: int, max_tokens: int, subword_buckets: int = 0) -> str | None:
        return None  # a bag takes any n-grams and subwords, in any number

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
        """Deterministic bag embedding: ``(B, embed_dim)``, then the mean prior features ``(B, prior_dim)``."""
        if self.training and self.token_dropout_p > 0:
            h = torch.relu(self._bag_without_some_ids(batch) + self.bag_bias)
        else:
            h = torch.relu(self.bag(batch.ids, batch.offsets) + self.bag_bias)
        if not self.prior_dim:
            return h
        prior = nn.functional.embedding_bag(batch.ids, self.token_prior, batch.offsets, mode="mean")
        return torch.cat([h, prior], dim=-1)

    def _bag_without_some_ids(self, batch: ModelInput) -> Tensor:
        """The bag's mean over a random ``1 - token_dropout_p`` of each text's ids (training only)."""
        assert batch.offsets is not None
        n_ids, n_texts = batch.ids.shape[0], batch.offsets.shape[0]
        keep = (torch.rand(n_ids, device=batch.ids.device) >= self.token_dropout_p).float()
        lengths = torch.diff(batch.offsets, append=batch.offsets.new_tensor([n_ids]))
        text_of = torch.repeat_interleave(torch.arange(n_texts, device=batch.ids.device), lengths)
        kept = torch.zeros(n_texts, device=keep.device).index_add_(0, text_of, keep).clamp_min(1.0)
        weights = keep / kept[text_of]
        return nn.functional.embedding_bag(
            batch.ids, self.bag.weight, batch.offsets, mode="sum", per_sample_weights=weights, padding_idx=0
        )

    def stochastic_tail(self, h: Tensor, sampler: MaskSampler | None = None) -> Tensor:
        """``(B, D)`` → logits ``(B, C)``, or ``(S, B, C)`` with a sampler."""
        x = expand_samples(h, sampler)
        for dropout, linear in zip(self.dropouts, self.hidden, strict=False):
            x = torch.relu(linear(dropout(x, sampler)))
        logits: Tensor = self.classifier(self.dropouts[-1](x, sampler))
        return logits

    def forward(self, batch: ModelInput) -> Tensor:
        return self.stochastic_tail(self.prefix(batch))
