"""GRU text classifier with Monte Carlo dropout.

Embedding → word/locked dropout → GRU → max+mean pooling → dropout → Linear.

Where the dropout sits is a trade-off the checkpoint reports as ``dropout_placement``: before the recurrence, N
samples cost ~N GRU passes on a CPU; only after it, ~1 pass (the GRU is then part of the deterministic prefix), but
the samples see the same recurrent features and the uncertainty is poorer. On the gate inputs
(``gate_dropout_p``), the GRU's input projections are computed once per text and each sample re-runs only the
recurrent half, with a time-locked mask on the projections (:mod:`mcdrop.core.gate_recurrence`).

With ``prior_dim`` > 0 each step's input also carries the token's row of a fixed ``token_prior`` table (a buffer:
stored with the weights, never trained, never dropped): word knowledge from outside the training corpus (see
:mod:`mcdrop.training.lexicon`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mcdrop.core.contract import ModelInput, expand_samples, register_token_prior
from mcdrop.core.dropout import (
    MaskSampler,
    MCDropout,
    WordDropout,
    check_probability,
    has_active_dropout,
    inverted_dropout_mask,
)
from mcdrop.core.errors import ConfigError
from mcdrop.core.gate_recurrence import gate_recurrence, input_projections
from mcdrop.core.sequence_input import padded, with_pieces
from mcdrop.core.text import Vocabulary

UNK_ID = Vocabulary.UNK_ID


class DropoutGRU(nn.Module):
    """GRU text classifier: embedding → word/locked dropout → GRU → max+mean pooling → dropout → Linear.

    Args:
        word_dropout_p: drop whole tokens (their embedding vectors).
        input_dropout_p: locked dropout on embeddings, one mask for every time step (keeps the fused GRU kernel).
        weight_dropout_p: DropConnect on the recurrent weight matrices; in MC mode each sample needs its own
            weights, so N samples cost N GRU passes on any device.
        output_dropout_p: dropout on the pooled features before the classifier.
        gate_dropout_p: time-locked dropout on the input projections ``W_ih·x_t`` of the GRU's gates (one mask
            per sample over the gate pre-activations of each direction, shared by every step); the projections
            are part of the prefix, so each sample re-runs only the recurrent half. One layer only, and instead
            of word, input and weight dropout.
        max_tokens: longest token sequence accepted (the encoder's ``max_tokens``).
        prior_dim: width of the fixed per-token prior features appended to each step's input (0: none).
        token_dropout_p: drop whole token embeddings during training only (never the prior, never in Monte Carlo
            or eval passes), so the model learns to read the prior for words it lacks. With subwords, a dropped
            token becomes ``<unk>`` and keeps its subwords: what a word the corpus never saw looks like.
        bag_skip: also pool the (dropped) step inputs themselves, by their mean, beside the GRU's states: a
            bag-of-words path next to the order-aware one, which holds up where word order carries little.
        subword_buckets: the last ``subword_buckets`` of the ``vocab_size`` ids are hashed character n-grams
            (:func:`mcdrop.core.text.subword_ids`); each step's input is then its word's embedding plus the mean
            of its subwords' embeddings (fastText-style), so a word the corpus never saw, or a misspelt one, is
            not just ``<unk>`` but the pieces it shares with known words.
    """

    architecture = "gru"
    token_prior: Tensor  # (vocab, prior_dim) buffer, present when prior_dim > 0

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
        max_tokens: int = 256,
        prior_dim: int = 0,
        token_dropout_p: float = 0.0,
        bag_skip: bool = False,
        gate_dropout_p: float = 0.0,
        subword_buckets: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= subword_buckets <= vocab_size - 2:
            raise ConfigError(
                f"subword_buckets must be in [0, vocab_size - 2] (got {subword_buckets} for {vocab_size} ids)"
            )
        self.subword_buckets = subword_buckets
        self.n_words = vocab_size - subword_buckets  # ids below it are words, the rest subwords
        if num_layers not in (1, 2):
            raise ConfigError(f"num_layers must be 1 or 2 (got {num_layers})")
        self.gate_dropout_p = check_probability("gate_dropout_p", gate_dropout_p)
        if self.gate_dropout_p > 0 and (num_layers != 1 or word_dropout_p or input_dropout_p or weight_dropout_p):
            raise ConfigError(
                "gate_dropout_p needs num_layers 1 and no word, input or weight dropout (it replaces them: the "
                "input projections are computed once per text)"
            )
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.word_dropout = WordDropout(check_probability("word_dropout_p", word_dropout_p), max_tokens)
        self.input_dropout = MCDropout(check_probability("input_dropout_p", input_dropout_p), shared_axes=(0,))
        self.prior_dim = register_token_prior(self, vocab_size, prior_dim)
        self.token_dropout_p = check_probability("token_dropout_p", token_dropout_p)
        self.gru = nn.GRU(embed_dim + prior_dim, hidden_dim, num_layers, batch_first=True, bidirectional=bidirectional)
        self.weight_dropout_p = check_probability("weight_dropout_p", weight_dropout_p)
        self.output_dropout = MCDropout(check_probability("output_dropout_p", output_dropout_p))
        n_directions = 2 if bidirectional else 1
        self.bag_skip = bag_skip
        skip = embed_dim + prior_dim if bag_skip else 0
        self.classifier = nn.Linear(2 * n_directions * hidden_dim + skip, n_classes)
        self._recurrent_names = [n for n, _ in self.gru.named_parameters() if n.startswith("weight_hh")]

    @property
    def stochastic_recurrence(self) -> bool:
        """True when dropout sits before or inside the recurrence, so the GRU is part of the stochastic tail."""
        return self._before_recurrence or self.gate_dropout_p > 0

    @property
    def _before_recurrence(self) -> bool:
        return self.word_dropout.p > 0 or self.input_dropout.p > 0 or self.weight_dropout_p > 0

    @property
    def dropout_placement(self) -> str:
        if self.gate_dropout_p > 0:
            return "gate_inputs"
        return "before_recurrence" if self._before_recurrence else "after_recurrence"

    @property
    def mc_active(self) -> bool:
        return self.weight_dropout_p > 0 or self.gate_dropout_p > 0 or has_active_dropout(self)

    @property
    def thread_safe_tail(self) -> bool:
        """Weight dropout swaps the GRU's recurrent matrices in place for each sample (``functional_call``)."""
        return self.weight_dropout_p == 0

    def token_embeddings(self) -> Tensor:
        return self.embedding.weight

    def check_encoder(self, ngram_max: int, max_tokens: int, subword_buckets: int = 0) -> str | None:
        """A sequence model reads unigram ids in order, at most ``max_tokens`` of them: the encoder must agree."""
        if ngram_max != 1:
            return f"a GRU reads word sequences: ngram_max must be 1 (got {ngram_max})"
        if subword_buckets != self.subword_buckets:
            return (
                f"the encoder hashes subwords into {subword_buckets} buckets but the GRU reads "
                f"{self.subword_buckets} (model_params.subword_buckets)"
            )
        if max_tokens > self.word_dropout.max_tokens:
            return (
                f"the encoder keeps up to {max_tokens} tokens but the GRU accepts at most "
                f"{self.word_dropout.max_tokens} (model_params.max_tokens): raise the model's max_tokens"
            )
        return None

    def make_input(self, ids: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> ModelInput:
        """Padded word ids ``(B, T)`` and lengths; with subwords, each row's subword ids (those from ``n_words``
        on, after the word they belong to) become that step's bag in ``pieces``."""
        if not self.subword_buckets:
            return padded(ids, device)
        return with_pieces(ids, self.n_words, device)

    def _embed(self, batch: ModelInput) -> Tensor:
        """Step inputs ``(B, T, E)``: word embeddings, plus the mean of each step's subword embeddings."""
        if not self.subword_buckets:
            embedded: Tensor = self.embedding(batch.ids)
            return embedded
        ids = batch.ids
        if self.training and self.token_dropout_p > 0:
            dropped = torch.rand(ids.shape, device=ids.device) < self.token_dropout_p
            ids = ids.masked_fill(dropped & (ids != 0), UNK_ID)
        embedded = self.embedding(ids)
        if batch.pieces is None or batch.piece_offsets is None:
            raise ValueError("this DropoutGRU reads subwords: build its batch with its make_input")
        # an empty bag (a step without subwords, or padding) is a zero vector
        bags = nn.functional.embedding_bag(batch.pieces, self.embedding.weight, batch.piece_offsets, mode="mean")
        return embedded + bags.view_as(embedded)

    def _recurrence(self, x: Tensor, lengths: Tensor, weights: dict[str, Tensor] | None = None) -> Tensor:
        """``(N, T, E)`` embeddings → pooled features ``(N, F)``: max and mean over each text's steps."""
        if bool((lengths == x.shape[1]).all()):
            # every row is a whole sequence (one text, or texts of one length): no packing; the numbers agree to
            # float rounding (~1e-8)
            states = self.gru(x)[0] if weights is None else functional_call(self.gru, weights, (x,))[0]
        else:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            if weights is None:
                output, _ = self.gru(packed)
            else:
                output, _ = functional_call(self.gru, weights, (packed,))
            states, _ = pad_packed_sequence(output, batch_first=True)  # (N, T, F/2)
        steps = torch.arange(states.shape[1], device=states.device)
        valid = (steps[None, :] < lengths.to(states.device)[:, None]).unsqueeze(-1)  # (N, T, 1)
        maximum = states.masked_fill(~valid, float("-inf")).amax(dim=1)  # amax: no argmax indices to compute
        mean = states.sum(dim=1) / lengths.to(states.device, states.dtype).unsqueeze(-1)
        return self.bag_features(torch.cat([maximum, mean], dim=-1), x, lengths)

    def bag_features(self, pooled: Tensor, x: Tensor, lengths: Tensor) -> Tensor:
        """The pooled GRU features ``(..., F)`` of step inputs ``x`` ``(..., T, E)``, with ``bag_skip`` followed by
        the mean of those inputs over each text's ``lengths`` (broadcast over a leading sample axis)."""
        if not self.bag_skip:
            return pooled
        # padding steps of x are zero embeddings (padding_idx 0, zero prior), so a plain sum is over the text
        return torch.cat([pooled, x.sum(dim=-2) / lengths.to(x.device, x.dtype).unsqueeze(-1)], dim=-1)

    def _dropped_weights(self, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        weights: dict[str, Tensor] = dict(self.gru.named_parameters())
        for name, mask in masks.items():
            weights[name] = weights[name] * mask
        return weights

    def _with_prior(self, x: Tensor, prior: Tensor | None) -> Tensor:
        """Each step's (possibly dropped) embedding with the token's fixed prior features: ``(..., T, E + P)``."""
        if prior is None:
            return x
        return torch.cat([x, prior.expand(*x.shape[:-1], prior.shape[-1])], dim=-1)

    def prefix(self, batch: ModelInput) -> tuple[Tensor, ...]:
        """Embeddings ``(B, T, E)`` (and prior features ``(B, T, P)``) when the recurrence is stochastic, else
        pooled GRU features ``(B, F)``; the lengths last. Dropout on the gate inputs: the input projections
        ``(B, T, D·3H)`` (and the bag-skip mean) outside train mode, where they move into the tail, after the
        training-only token dropout."""
        if batch.lengths is None:
            raise ValueError("DropoutGRU needs a sequence batch: build it with DropoutGRU.make_input")
        embedded = self._embed(batch)
        prior = nn.functional.embedding(batch.ids, self.token_prior) if self.prior_dim else None
        if self.gate_dropout_p > 0 and not self.training:
            return self._projected(self._with_prior(embedded, prior), batch.lengths)
        if self.stochastic_recurrence:
            return (embedded, batch.lengths) if prior is None else (embedded, prior, batch.lengths)
        embedded = self._token_dropout(embedded, None)  # training only: the recurrence is in the prefix here
        return self._recurrence(self._with_prior(embedded, prior), batch.lengths), batch.lengths

    def _projected(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        """The gate placement's per-text state: projections ``(B, T, D·3H)``, the bag-skip mean, the lengths."""
        projected = input_projections(self.gru, x)
        if not self.bag_skip:
            return projected, lengths
        return projected, x.sum(dim=1) / lengths.to(x.device, x.dtype).unsqueeze(-1), lengths

    def stochastic_tail(self, state: tuple[Tensor, ...], sampler: MaskSampler | None = None) -> Tensor:
        """Logits ``(B, C)``, or ``(S, B, C)`` with a sampler."""
        h = state[0]
        if self.gate_dropout_p > 0:
            h = self._gate_samples(state, sampler)
        elif self.stochastic_recurrence:
            h = self._stochastic_recurrence(state, sampler)
        else:
            h = expand_samples(h, sampler)
        return self.classify(h, sampler)

    def classify(self, features: Tensor, sampler: MaskSampler | None) -> Tensor:
        """Logits of pooled features ``(S, B, F)`` or ``(B, F)``: output dropout, then the classifier."""
        logits: Tensor = self.classifier(self.output_dropout(features, sampler))
        return logits

    def _token_dropout(self, x: Tensor, sampler: MaskSampler | None) -> Tensor:
        """Training only; with subwords it happened in the embedding (a dropped word is ``<unk>``)."""
        if sampler is None and self.training and self.token_dropout_p > 0 and not self.subword_buckets:
            return x * inverted_dropout_mask((*x.shape[:-1], 1), self.token_dropout_p, device=x.device)
        return x

    def _gate_samples(self, state: tuple[Tensor, ...], sampler: MaskSampler | None) -> Tensor:
        """Pooled features ``(B, F)`` or ``(S, B, F)``: each sample's mask on the projections, then the
        recurrence over ``S × B`` rows at once."""
        if self.training:  # the raw state of the prefix in train mode: project here, after token dropout
            prior = state[1] if len(state) == 3 else None
            state = self._projected(self._with_prior(self._token_dropout(state[0], sampler), prior), state[-1])
        projected, lengths = state[0], state[-1]
        width = projected.shape[-1]
        if sampler is not None:
            masks: Tensor | None = sampler.keep(self.gate_dropout_p, (1, width)).flatten(2)  # (S, B|1, D·3H)
        elif self.training:
            masks = inverted_dropout_mask((1, projected.shape[0], width), self.gate_dropout_p, device=projected.device)
        else:
            masks = None
        pooled = gate_recurrence(self.gru, projected, lengths, masks)  # (S·B, F)
        batch = projected.shape[0]
        if sampler is not None:
            pooled = pooled.view(-1, batch, pooled.shape[-1])
        if self.bag_skip:
            pooled = torch.cat([pooled, expand_samples(state[1], sampler)], dim=-1)
        return pooled

    def sample_inputs(self, state: tuple[Tensor, ...], sampler: MaskSampler | None) -> Tensor:
        """The GRU's step inputs for the prefix ``state`` of a stochastic recurrence: ``(S, B, T, E + P)`` through
        this pass's word and input dropout masks, or ``(B, T, E + P)`` without a sampler."""
        x = expand_samples(state[0], sampler)  # (S, B, T, E) or (B, T, E)
        x = self._token_dropout(self.input_dropout(self.word_dropout(x, sampler), sampler), sampler)
        return self._with_prior(x, state[1] if len(state) == 3 else None)

    def _stochastic_recurrence(self, state: tuple[Tensor, ...], sampler: MaskSampler | None) -> Tensor:
        x, lengths = self.sample_inputs(state, sampler), state[-1]
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
