"""K bag-of-words MLP members run as one: a single ``EmbeddingBag`` over their concatenated tables and one batched
matmul per layer, for inference.

An ensemble of MLPs would otherwise pay K prefix calls and K tail passes of a few small matrices each, where the
fixed cost of an operator call, not arithmetic, is the price. The fused form computes the same numbers: member
``k``'s features are columns ``k·D … (k+1)·D`` of the concatenated bag, and its samples go through its own
weights in the ``k``-th slice of each stacked product, with the masks a single member would use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from mcdrop.core.contract import ModelInput
from mcdrop.core.dropout import MaskSampler, MCDropout
from mcdrop.core.mlp import DropoutMLP

MAX_LAYOUTS = 256


class WeightVersions:
    """A cheap fingerprint of a module's parameters and buffers: it changes whenever one is replaced, moved to
    another device or dtype, or modified in place through autograd-visible ops (``Tensor._version``). Writes
    through ``param.data`` and fused optimizer steps do not bump the version: after those, call
    :meth:`~mcdrop.core.ensemble.DropoutEnsemble.invalidate_fused`."""

    def __init__(self, module: nn.Module) -> None:
        # the (module, name) slots are fixed by the architecture; the tensors in them may be swapped
        self._slots = [(m._parameters, name) for m in module.modules() for name in m._parameters] + [
            (m._buffers, name) for m in module.modules() for name in m._buffers
        ]

    def key(self) -> tuple[tuple[int, int], ...]:
        tensors = [slots[name] for slots, name in self._slots]
        return tuple((t.data_ptr(), t._version) for t in tensors if t is not None)


class FusedMLPs:
    """Inference copies of ``members``' weights, laid out for one call per layer (rebuilt when they change)."""

    def __init__(self, members: Sequence[DropoutMLP]) -> None:
        first = members[0]
        with torch.no_grad():
            self.size = len(members)
            self.embed_dim = first.bag.embedding_dim
            self.bag = torch.cat([m.bag.weight for m in members], dim=1).contiguous()  # (V, K·D)
            self.bag_bias = torch.cat([m.bag_bias for m in members])
            priors = [m.token_prior for m in members] if first.prior_dim else []
            self.shared_prior = bool(priors) and all(torch.equal(p, priors[0]) for p in priors)
            self.priors = priors[:1] if self.shared_prior else priors
            self.probabilities = [float(cast(MCDropout, d).p) for d in first.dropouts]
            layers = [[*m.hidden, m.classifier] for m in members]
            self.weights = [
                torch.stack([ls[i].weight for ls in layers]).transpose(1, 2).contiguous() for i in range(len(layers[0]))
            ]
            self.biases = [torch.stack([ls[i].bias for ls in layers]).unsqueeze(1) for i in range(len(layers[0]))]
        self._layouts: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}

    def prefix(self, batch: ModelInput) -> Tensor:
        """Every member's prefix features at once: ``(B, K, D + P)``."""
        bags = nn.functional.embedding_bag(batch.ids, self.bag, batch.offsets, mode="mean", padding_idx=0)
        h = torch.relu(bags + self.bag_bias).view(-1, self.size, self.embed_dim)
        if not self.priors:
            return h
        priors = [nn.functional.embedding_bag(batch.ids, p, batch.offsets, mode="mean") for p in self.priors]
        prior = priors[0].unsqueeze(1).expand(-1, self.size, -1) if self.shared_prior else torch.stack(priors, 1)
        return torch.cat([h, prior], dim=-1)

    def _layout(self, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor]:
        """For the window ``[start, stop)``: each member's sample offsets ``(K, per)`` (the last ones padded by
        repeating one), which of them are real, and the real ones in member order."""
        key = (start, stop)
        if key not in self._layouts:
            if len(self._layouts) >= MAX_LAYOUTS:  # windows come from a handful of N and rounds; never unbounded
                self._layouts.clear()
            size, n = self.size, stop - start
            per = -(-n // size)
            first = torch.tensor([(k - start) % size for k in range(size)]).unsqueeze(1)
            raw = torch.arange(per).unsqueeze(0) * size + first  # (K, per): member k's samples are first_k + i·K
            valid = raw < n
            self._layouts[key] = (raw.clamp_max(n - 1), valid, raw[valid])
        return self._layouts[key]

    def tail(self, state: Tensor, sampler: MaskSampler, start: int, stop: int) -> Tensor:
        """Logits ``(stop - start, B, C)``: sample ``s`` through member ``s mod K``."""
        offsets, valid, rows = self._layout(start, stop)
        x = state.transpose(0, 1)  # (K, B, F)
        x = x.unsqueeze(1).expand(self.size, offsets.shape[1], *x.shape[1:])  # (K, per, B, F)
        last = len(self.weights) - 1
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            p = self.probabilities[layer]
            if p > 0:
                mask = sampler.keep(p, (x.shape[-1],))  # (S, 1|B, F): the window's samples in order
                x = x * mask[offsets.to(mask.device)]
            flat = torch.baddbmm(bias, x.reshape(self.size, -1, x.shape[-1]), weight)
            x = flat.view(self.size, offsets.shape[1], -1, flat.shape[-1])
            if layer < last:
                x = torch.relu(x)
        out = x.new_empty(stop - start, *x.shape[2:])
        out[rows.to(x.device)] = x[valid.to(x.device)]
        return out
