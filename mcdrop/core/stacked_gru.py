"""The recurrences of an ensemble's GRU members in one loop: each step is a few ops over every member at once.

On the CPU ``nn.GRU`` pays for its operator calls more than for its arithmetic at the sizes one text's samples
make (a few dozen rows): each of its ``D·T`` direction-steps is about fifteen small ops, and ``K`` bidirectional
members make ``K`` such calls (measured on the shipped GRU, one text of 19 tokens, N = 30: 2.6 ms for three calls,
of which about a fifth is arithmetic). Here direction ``d`` of member ``k`` is lane ``k·D + d``: the input
projections ``W_ih·x_t + b`` of every lane and step come from one batched matmul, and step ``t`` of all lanes is
the handful of batched ops of :func:`~mcdrop.core.gate_recurrence.gru_step`, so the ensemble costs ``T`` steps
instead of ``K·D·T``. The numbers are ``nn.GRU``'s to float rounding (~1e-7: other summation orders), and each
member's dropout masks are the ones its own pass would draw.

The loop serves batches whose texts have one length (one text, above all). Texts of several lengths would make it
run every row to the longest text, where ``nn.GRU``'s packed passes drop the rows that have ended: measured on the
shipped GRU, chunks of 8 texts of mixed lengths at N = 30 took ~10 % longer stacked, so those keep their member
calls, as they do on a GPU (cuDNN runs a member's whole recurrence in one call). A window of samples may split
unevenly over the members (11 samples: 4, 4 and 3): shorter members are padded with zero rows, whose results are
dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mcdrop.core.dropout import MaskSampler
from mcdrop.core.gate_recurrence import directions, gru_step, pool_states
from mcdrop.core.gru import DropoutGRU
from mcdrop.core.threads import intra_op_threads, spare_threads

# Multiply-adds from which the input projections take the caller's spare threads (mcdrop.core.threads): on the
# shipped GRU one text of 19 tokens makes 28 M at N = 30 (0.56 ms on one thread) and 95 M at N = 100 (1.9 ms), and
# two threads took about 0.3 and 0.7 ms off a call; far below that, the wait at the op's end would eat the gain.
SPLIT_PROJECTION_MACS = 10_000_000


def pays(lengths: Tensor, steps: int) -> bool:
    """Whether the stacked loop pays for texts of these ``lengths`` padded to ``steps``: when none is padded (rows
    of a larger batch that adaptive sampling kept may be of one length and still padded to the batch's longest)."""
    return bool((lengths == steps).all())


def stackable(members: Sequence[object]) -> bool:
    """Whether ``members`` are GRUs whose stochastic tails can share one loop: dropout before a single-layer
    recurrence of one shape, and no weight dropout (its samples need weights of their own)."""
    shapes = {
        (m.gru.input_size, m.gru.hidden_size, m.gru.bidirectional, m.gru.batch_first)
        for m in members
        if isinstance(m, DropoutGRU)
    }
    return len(shapes) == 1 and all(
        isinstance(m, DropoutGRU)
        and m.dropout_placement == "before_recurrence"
        and m.weight_dropout_p == 0
        and m.gru.num_layers == 1
        for m in members
    )


class StackedGRUs:
    """Inference copies of the members' GRU weights stacked by lane (the ensemble rebuilds them when they change)."""

    def __init__(self, grus: Sequence[nn.GRU]) -> None:
        names = directions(grus[0])
        hidden = grus[0].hidden_size
        self.size, self.n_dir, self.hidden = len(grus), len(names), hidden
        lanes = [(gru, d) for gru in grus for d in names]
        with torch.no_grad():
            self.w_ih = torch.stack([g.get_parameter("weight_ih" + d).T for g, d in lanes]).contiguous()  # (L, I, 3H)
            w_hh = torch.stack([g.get_parameter("weight_hh" + d).T for g, d in lanes])  # (L, H, 3H)
            self.w_rz, self.w_n = w_hh[..., : 2 * hidden].contiguous(), w_hh[..., 2 * hidden :].contiguous()
            b_ih = torch.stack([g.get_parameter("bias_ih" + d) for g, d in lanes])  # (L, 3H)
            b_hh = torch.stack([g.get_parameter("bias_hh" + d) for g, d in lanes])
            # r and z take both biases with the input side; n's recurrent bias stays inside r⊙(...)
            self.bias_x = torch.cat([b_ih[:, : 2 * hidden] + b_hh[:, : 2 * hidden], b_ih[:, 2 * hidden :]], 1)[:, None]
            self.bias_hn = b_hh[:, None, 2 * hidden :].contiguous()  # (L, 1, H)

    def tails(
        self, members: Sequence[DropoutGRU], states: Sequence[tuple[Tensor, ...]], samplers: Sequence[MaskSampler]
    ) -> list[Tensor]:
        """Each member's logits ``(S_k, B, C)`` of its prefix state, through the masks of its own sampler view.

        Every member draws its input masks before any draws its output masks, which is the order a member-by-member
        pass draws them in too: each layer's masks are drawn once, for all samples, by its first caller."""
        xs = [m.sample_inputs(s, sampler) for m, s, sampler in zip(members, states, samplers, strict=True)]
        lengths = states[0][-1]
        pooled = self.pooled([x.flatten(0, 1) for x in xs])
        return [
            m.classify(m.bag_features(p.view(*x.shape[:2], -1), x, lengths), sampler)
            for m, x, p, sampler in zip(members, xs, pooled, samplers, strict=True)
        ]

    def pooled(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """Member ``k``'s pooled features ``(R_k, 2·D·H)`` of its step inputs ``xs[k]`` ``(R_k, T, I)``, every row
        ``T`` real steps, laid out as ``DropoutGRU`` pools (max then mean, each forward then backward)."""
        rows, steps = max(len(x) for x in xs), xs[0].shape[1]
        lanes = self.size * self.n_dir
        inputs = self._lane_inputs(xs, rows).view(lanes, steps * rows, -1)
        # the loop's one large op: there the caller's spare threads pay (each step's ops are far too small)
        big = inputs.numel() * self.w_ih.shape[-1] >= SPLIT_PROJECTION_MACS
        with intra_op_threads(spare_threads() if big else 1):
            projected = torch.baddbmm(self.bias_x, inputs, self.w_ih).view(lanes, steps, rows, -1)
        h = projected.new_zeros(lanes, rows, self.hidden)
        states = []
        for t in range(steps):
            h = gru_step(projected[:, t], h, self.w_rz, self.w_n, self.bias_hn, None)
            states.append(h)
        maximum, mean = pool_states(torch.stack(states), None, projected.new_full((1, 1, 1), steps))
        pooled = torch.stack([maximum, mean]).view(2, self.size, self.n_dir, rows, self.hidden)
        pooled = pooled.permute(1, 3, 0, 2, 4).reshape(self.size, rows, -1)
        return [pooled[k, : x.shape[0]] for k, x in enumerate(xs)]

    def _lane_inputs(self, xs: Sequence[Tensor], rows: int) -> Tensor:
        """Step-aligned inputs ``(K, D, T, R, I)``: forward lanes read time ``t`` at step ``t``, backward lanes time
        ``T-1-t``."""
        steps, width = xs[0].shape[1:]
        shape = (self.size, self.n_dir, steps, rows, width)
        inputs = xs[0].new_empty(shape)
        for k, x in enumerate(xs):
            time_major = x.transpose(0, 1)
            inputs[k, 0, :, : len(x)] = time_major
            if self.n_dir == 2:
                inputs[k, 1, :, : len(x)] = time_major.flip(0)
            inputs[k, :, :, len(x) :] = 0  # a member with fewer samples: padding rows (a no-op otherwise)
        return inputs
