"""An ensemble of independently trained dropout members that costs what one member's samples cost.

Deep ensembles keep their calibration under distribution shift better than any single network; Monte Carlo dropout
adds the spread within each member. Here the two share one sample budget: of ``N`` samples, sample ``s`` comes from
member ``s mod K``, so the ``N`` samples are spread evenly over the ``K`` members (any first ``n`` of them too, which
adaptive sampling relies on) and cost about what ``N`` samples of one member cost; only the deterministic prefix
runs once per member. Every sample is one draw from the ensemble's predictive distribution, so the uncertainty
maths treat all ``N`` alike.

Sample ``s`` of member ``k`` uses the dropout masks a single model would use for its sample ``s`` (the sampler's
masks depend on seed, layer and sample index only), so seeded answers stay reproducible and independent of batch
partners. Without a sampler (a deterministic pass) the ensemble answers the log of its members' mean probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, cast

import torch
from torch import Tensor, nn

from mcdrop.core.contract import MCModel, ModelInput
from mcdrop.core.dropout import MaskSampler
from mcdrop.core.errors import ConfigError
from mcdrop.core.fused_mlp import FusedMLPs, WeightVersions
from mcdrop.core.gru import DropoutGRU
from mcdrop.core.mlp import DropoutMLP
from mcdrop.core.stacked_gru import StackedGRUs, pays, stackable
from mcdrop.core.threads import side_by_side, spare_threads

MAX_MEMBERS = 16


class DropoutEnsemble(nn.Module):
    """``K`` members of one architecture and configuration behind the :class:`~mcdrop.core.contract.MCModel`
    contract; its weights are the members' under ``members.<k>.``."""

    def __init__(self, members: Sequence[MCModel]) -> None:
        super().__init__()
        if not 2 <= len(members) <= MAX_MEMBERS:
            raise ConfigError(f"an ensemble needs 2 to {MAX_MEMBERS} members (got {len(members)})")
        if len({m.architecture for m in members}) != 1:
            raise ConfigError("ensemble members must share one architecture")
        self.members = nn.ModuleList(cast(nn.Module, m) for m in members)
        self._members = list(members)
        self.architecture = members[0].architecture
        # MLP members run fused at inference (mcdrop.core.fused_mlp): one call per layer instead of K
        self._mlps = [m for m in members if isinstance(m, DropoutMLP)]
        self._fused: tuple[tuple[tuple[int, int], ...], FusedMLPs] | None = None
        # GRU members whose recurrences share one loop on the CPU (mcdrop.core.stacked_gru)
        self._grus = [m for m in members if isinstance(m, DropoutGRU)] if stackable(members) else []
        self._stacked: tuple[tuple[tuple[int, int], ...], StackedGRUs] | None = None
        self._versions = WeightVersions(self)

    @property
    def size(self) -> int:
        return len(self._members)

    @property
    def dropout_placement(self) -> str:
        return self._members[0].dropout_placement

    @property
    def stochastic_recurrence(self) -> bool:
        return self._members[0].stochastic_recurrence

    @property
    def mc_active(self) -> bool:
        return all(m.mc_active for m in self._members)

    @property
    def thread_safe_tail(self) -> bool:
        return all(m.thread_safe_tail for m in self._members)

    def token_embeddings(self) -> Tensor:
        return self._members[0].token_embeddings()

    def check_encoder(self, ngram_max: int, max_tokens: int, subword_buckets: int = 0) -> str | None:
        return self._members[0].check_encoder(ngram_max, max_tokens, subword_buckets)

    def make_input(self, ids: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> ModelInput:
        return self._members[0].make_input(ids, device)

    def invalidate_fused(self) -> None:
        """Drop the fused copy of MLP members (and the stacked one of GRU members); the next inference call
        rebuilds it. Loading weights and switching modes do this; code that writes weights where the fingerprint
        cannot see (``param.data``, fused optimizer steps) must call it."""
        self._fused = None
        self._stacked = None

    def train(self, mode: bool = True) -> DropoutEnsemble:
        self.invalidate_fused()
        return super().train(mode)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        self.invalidate_fused()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _fused_mlps(self) -> FusedMLPs | None:
        """The fused form of MLP members for an inference call (no gradients, eval mode), kept while the weights
        stay the same; ``None`` otherwise."""
        if len(self._mlps) != len(self._members) or self.training or torch.is_grad_enabled():
            return None
        key = self._versions.key()
        if self._fused is None or self._fused[0] != key:
            self._fused = (key, FusedMLPs(self._mlps))
        return self._fused[1]

    def _stacked_grus(self, state: Any, members: int) -> StackedGRUs | None:
        """The stacked form of GRU members for a pass over prefix ``state`` in which ``members`` members have samples,
        kept while the weights stay the same: an inference call on the CPU, every member with samples, no text
        padded; ``None`` otherwise (also for members that cannot share a loop)."""
        if not self._grus or members != self.size or self.training or torch.is_grad_enabled():
            return None
        embedded, lengths = state[0][0], state[0][-1]
        if embedded.device.type != "cpu" or not pays(lengths, embedded.shape[1]):
            return None
        key = self._versions.key()
        if self._stacked is None or self._stacked[0] != key:
            self._stacked = (key, StackedGRUs([m.gru for m in self._grus]))
        return self._stacked[1]

    def prefix(self, batch: ModelInput) -> Any:
        """Each member's prefix result, in member order (fused MLP members: one ``(B, K, F)`` tensor)."""
        fused = self._fused_mlps()
        if fused is not None:
            return fused.prefix(batch)
        return tuple(member.prefix(batch) for member in self._members)

    def stochastic_tail(self, state: Any, sampler: MaskSampler | None = None) -> Tensor:
        """Logits ``(S, B, C)`` with sample ``s`` from member ``s mod K``; log mean probabilities without a
        sampler."""
        if sampler is None:
            if isinstance(state, Tensor):  # the fused MLP prefix: member k's features are state[:, k]
                state = tuple(state[:, k] for k in range(self.size))
            probs = [
                torch.softmax(m.stochastic_tail(part).float(), dim=-1)
                for m, part in zip(self._members, state, strict=True)
            ]
            return torch.stack(probs).mean(0).clamp_min(1e-12).log()
        window = sampler.pass_samples
        start, stop, _ = window.indices(sampler.n_samples)
        if isinstance(state, Tensor):  # the fused MLP prefix made it, with the fused copy it checked then
            assert self._fused is not None, "a fused prefix result needs an inference call"
            return self._fused[1].tail(state, sampler, start, stop)
        size = self.size
        # member k's samples in [start, stop): first_k, first_k + K, ... (a member may have none in a short window)
        passes = [
            (member, part, first)
            for k, (member, part) in enumerate(zip(self._members, state, strict=True))
            if (first := start + (k - start) % size) < stop
        ]
        # texts of one length (one text, say) and every member with samples here: their recurrences in one loop
        stacked = self._stacked_grus(state, len(passes))
        spare = spare_threads() if self.thread_safe_tail else 1
        if stacked is not None:
            views = [sampler.view(slice(first, stop, size)) for _, _, first in passes]
            results = stacked.tails(self._grus, state, views)
        # one text, say: the members' passes side by side, each with its own view of the masks
        elif min(spare, len(passes)) > 1:
            jobs = [
                partial(m.stochastic_tail, part, sampler.view(slice(first, stop, size))) for m, part, first in passes
            ]
            results = side_by_side(jobs, spare)  # one pool size per caller: no churn when K or N varies
        else:
            results = []
            try:
                for member, part, first in passes:
                    sampler.start_pass(slice(first, stop, size))
                    results.append(member.stochastic_tail(part, sampler))
            finally:
                sampler.start_pass(window)
        out = results[0].new_empty(stop - start, *results[0].shape[1:])
        for (_, _, first), logits in zip(passes, results, strict=True):
            out[first - start :: size] = logits
        return out

    def forward(self, batch: ModelInput) -> Tensor:
        return self.stochastic_tail(self.prefix(batch))
