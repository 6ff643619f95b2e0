"""Dropout layers whose Monte Carlo sampling is switched on explicitly, independent of ``model.train()``.

Three regimes, decided per call:

* training (``module.training`` and no sampler): inverted dropout with a fresh mask per element,
* Monte Carlo (a :class:`MaskSampler` is passed): ``S`` masks, one per sample, shared by every input of a
  seed group, so sample ``s`` is one sampled network applied to all inputs (Gal & Ghahramani, 2016),
* otherwise (eval, no sampler): the identity.

Every other layer stays in whatever mode the model is in, so BatchNorm/LayerNorm statistics stay frozen
during MC inference. Masks are drawn on the CPU from per-seed generators and moved to the device, so the same
seed gives the same masks on every device and whatever other inputs share the batch.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mcdrop.core.errors import ConfigError


def check_probability(name: str, p: float) -> float:
    """Return ``p`` as a float, or raise :class:`ConfigError` naming the parameter if it is outside [0, 1]."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1] (got {p})")
    return p


def inverted_dropout_mask(
    shape: Sequence[int], p: float, generator: torch.Generator | None = None, device: torch.device | None = None
) -> Tensor:
    """A float mask of ``shape`` whose entries are 0 with probability ``p`` and ``1/(1-p)`` otherwise.

    ``p = 1`` gives all zeros (never a division by zero), ``p = 0`` all ones.
    """
    if p >= 1.0:
        return torch.zeros(tuple(shape), device=device)
    if p <= 0.0:
        return torch.ones(tuple(shape), device=device)
    # in place: the same values as (rand >= p).float() * scale, with two fewer allocations on a hot path
    return torch.rand(tuple(shape), generator=generator, device=device).ge_(p).mul_(1.0 / (1.0 - p))


class MaskSampler:
    """Draws the dropout masks of one Monte Carlo pass over a batch of inputs.

    ``seeds`` holds one seed per group of inputs (a request); ``groups`` maps each of the ``B`` inputs to its
    group. Masks depend only on (seed, layer order, sample index), never on the batch, which makes a request's
    answer independent of what it is batched with.

    A forward pass calls :meth:`keep` once per stochastic layer, in a fixed order. The engine may split the
    ``n_samples`` samples into chunks: :meth:`start_pass` selects a sample range and restarts the layer count;
    masks are drawn once for all samples and sliced, so chunking never changes a mask, and neither does stopping
    early (adaptive sampling runs the first samples only). :meth:`restrict` narrows the pass to some of the inputs
    (those still sampling) without changing their masks.
    """

    def __init__(
        self,
        n_samples: int,
        seeds: Sequence[int],
        groups: Tensor | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if n_samples < 1:
            raise ConfigError(f"n_samples must be at least 1 (got {n_samples})")
        if not seeds:
            raise ConfigError("MaskSampler needs at least one seed")
        if len(seeds) > 1 and groups is None:
            raise ConfigError("several seeds need a group index for every input")
        self.n_samples = n_samples
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.dtype = dtype
        self._convert = self.device.type != "cpu" or dtype != torch.float32  # masks are drawn as CPU float32
        self.groups = None if groups is None else groups.to(self.device)
        self._all_groups = self.groups
        self._generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        self._lock = threading.Lock()
        self._cache: list[Tensor] = []  # one (G, S, *shape) mask per layer call, in call order
        self._shapes: list[tuple[int, ...]] = []
        self._single: list[Tensor] = []  # the first group's masks as (S, 1, *shape) views
        self._calls = 0
        self._samples = slice(0, n_samples)
        self._all_samples = True

    @property
    def samples_in_pass(self) -> int:
        """Number of samples ``S`` in the current pass (the leading dimension of every mask)."""
        return len(range(*self._samples.indices(self.n_samples)))

    @property
    def pass_samples(self) -> slice:
        """The sample range of the current pass (an ensemble splits it among its members, with a step)."""
        return self._samples

    def start_pass(self, samples: slice | None = None) -> None:
        """Begin a forward pass over the sample range ``samples`` (all samples by default)."""
        self._samples = slice(0, self.n_samples) if samples is None else samples
        self._all_samples = self._samples.indices(self.n_samples) == (0, self.n_samples, 1)
        self._calls = 0

    def restrict(self, rows: Tensor | None) -> None:
        """Later passes cover only the inputs ``rows`` (indices into the batch); ``None``: every input again."""
        if self._all_groups is not None:
            self.groups = self._all_groups if rows is None else self._all_groups[rows.to(self.device)]

    def _layer(self, p: float, shape: Sequence[int]) -> int:
        """Index of the next layer's masks in the cache, drawing them on its first call."""
        index = self._calls
        self._calls += 1
        shape = tuple(shape)
        if index >= len(self._cache):
            with self._lock:  # views may run passes at once: each layer is drawn once, in layer order
                if index == len(self._cache):
                    self._draw(p, shape)
        if self._shapes[index] != shape:
            raise RuntimeError(f"mask {index} was drawn for shape {self._shapes[index]}, asked {shape}")
        return index

    def _draw(self, p: float, shape: tuple[int, ...]) -> None:
        """The next layer's masks for every sample, ``(G, S, *shape)``, so sample ranges slice the same masks."""
        if len(self._generators) == 1:
            # drawn as (S, 1, *shape), the view keep() broadcasts over a batch: the same numbers in the same
            # order as (S, *shape), without the view ops on every call
            single = inverted_dropout_mask((self.n_samples, 1, *shape), p, self._generators[0])
            masks = single.squeeze(1).unsqueeze(0)
        else:
            masks = torch.stack([inverted_dropout_mask((self.n_samples, *shape), p, g) for g in self._generators])
            single = masks[0].unsqueeze(1)
        if self._convert:
            masks = masks.to(device=self.device, dtype=self.dtype)
            single = single.to(device=self.device, dtype=self.dtype)
        self._shapes.append(shape)
        self._single.append(single)
        self._cache.append(masks)  # last: a view that sees the cache this long finds the rest in place

    def view(self, samples: slice) -> MaskSampler:
        """A sampler for a pass over ``samples`` that may run at the same time as other passes (on another thread):
        the same masks, drawn once and shared, with its own sample range and layer count."""
        other = copy.copy(self)
        other.start_pass(samples)
        return other

    def group_masks(self, p: float, shape: Sequence[int]) -> Tensor:
        """Scaled keep-masks of the next layer for each seed group: ``(G, S, *shape)``.

        For layers that cannot broadcast one mask over a batch (weight dropout); :meth:`keep` is the usual entry.
        """
        masks = self._cache[self._layer(p, shape)]
        return masks if self._all_samples else masks[:, self._samples]

    def keep(self, p: float, shape: Sequence[int]) -> Tensor:
        """Scaled keep-mask for one layer: ``(S, B, *shape)``, or ``(S, 1, *shape)`` with a single group.

        ``shape`` is the feature shape after the batch axis, with 1 on axes the mask is shared along.
        """
        index = self._layer(p, shape)
        if self.groups is None:
            single = self._single[index]
            return single if self._all_samples else single[self._samples]
        masks = self._cache[index] if self._all_samples else self._cache[index][:, self._samples]
        return masks.index_select(0, self.groups).transpose(0, 1)  # (G,S,..)->(B,S,..)->(S,B,..)


class MCDropout(nn.Module):
    """Inverted dropout with optional mask sharing along feature axes.

    Args:
        p: drop probability in [0, 1].
        shared_axes: axes of the per-input feature shape (0 is the first axis after the batch axis) along which
            one mask value is shared, e.g. ``(0,)`` on a ``(B, T, E)`` sequence gives the same mask at every
            time step ("locked"/variational dropout).

    In MC mode the input has a leading sample axis: ``(S, B, *features)``.
    """

    def __init__(self, p: float, shared_axes: Sequence[int] = ()) -> None:
        super().__init__()
        self.p = check_probability("dropout p", p)
        self.shared_axes = tuple(shared_axes)

    def extra_repr(self) -> str:
        return f"p={self.p}, shared_axes={self.shared_axes}"

    def _mask_shape(self, features: Sequence[int]) -> tuple[int, ...]:
        return tuple(1 if axis in self.shared_axes else size for axis, size in enumerate(features))

    def forward(self, x: Tensor, sampler: MaskSampler | None = None) -> Tensor:
        if sampler is not None:
            if self.p == 0.0:
                return x
            return x * sampler.keep(self.p, self._mask_shape(x.shape[2:]))
        if not self.training or self.p == 0.0:
            return x
        mask = inverted_dropout_mask((x.shape[0], *self._mask_shape(x.shape[1:])), self.p, device=x.device)
        return x * mask.to(x.dtype)


class WordDropout(MCDropout):
    """Embedding dropout that removes whole word vectors: on ``(B, T, E)`` one mask value per token.

    Dropped tokens become zero vectors; survivors are scaled by ``1/(1-p)`` like any inverted dropout.
    """

    def __init__(self, p: float, max_tokens: int) -> None:
        super().__init__(p, shared_axes=(1,))
        self.max_tokens = max_tokens

    def forward(self, x: Tensor, sampler: MaskSampler | None = None) -> Tensor:
        if sampler is None or self.p == 0.0:
            return super().forward(x, sampler)
        length = x.shape[2]  # x: (S, B, T, E)
        if length > self.max_tokens:
            raise ValueError(f"sequence of {length} tokens exceeds max_tokens={self.max_tokens}")
        # Masks are drawn for max_tokens positions and sliced, so they do not depend on the batch's padding.
        return x * sampler.keep(self.p, (self.max_tokens, 1))[:, :, :length]


def has_active_dropout(model: nn.Module) -> bool:
    """True if ``model`` has at least one MC-capable dropout layer with ``p > 0``."""
    return any(isinstance(module, MCDropout) and module.p > 0.0 for module in model.modules())
