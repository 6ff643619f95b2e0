"""A GRU layer whose input projections are computed once and whose samples pay only the recurrent half.

``nn.GRU`` computes ``gi_t = W_ih·x_t + b_ih`` and ``gh_t = W_hh·h_{t-1} + b_hh`` inside one kernel, so dropout
on its input makes every Monte Carlo sample redo both. Here the projection ``W_ih·x_t`` of every step is computed
once per input (:func:`input_projections`, the model's deterministic prefix) and each sample's time-locked dropout
mask acts on it, one value per gate pre-activation and direction for all time steps; :func:`gate_recurrence` then
runs the recurrence over ``S × B`` rows at once, both directions in the same two batched matmuls per step:

    r = σ(m_r⊙W_ir·x + b_ir + W_hr·h + b_hr)      z = σ(m_z⊙W_iz·x + b_iz + W_hz·h + b_hz)
    n = tanh(m_n⊙W_in·x + b_in + r⊙(W_hn·h + b_hn))      h' = (1 − z)⊙n + z⊙h

The mask never touches the biases (a dropped unit keeps its bias, as a dropped input of ``nn.GRU`` would), and
with no mask this is exactly ``nn.GRU`` (its weights are read from the module). Each text keeps its own length:
the backward direction starts at the text's last real token, padded steps leave the state unchanged, and pooling
(max and mean, per direction) sees only real steps. Autograd runs through the loop, so training uses this code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def directions(gru: nn.GRU) -> list[str]:
    """The suffixes of a single-layer GRU's parameter names, one per direction (forward first)."""
    return ["_l0", "_l0_reverse"] if gru.bidirectional else ["_l0"]


def _tanh(x: Tensor) -> Tensor:
    """``tanh(x) = 2σ(2x) − 1``: torch's CPU sigmoid is several times faster than its tanh."""
    return torch.sigmoid(x.mul(2)).mul(2).sub_(1)


def input_projections(gru: nn.GRU, x: Tensor) -> Tensor:
    """``(B, T, I)`` step inputs → ``(B, T, D·3H)`` projections ``W_ih·x_t`` of each direction (no bias)."""
    weight = torch.cat([gru.get_parameter("weight_ih" + d) for d in directions(gru)])
    return x @ weight.T


def gate_recurrence(gru: nn.GRU, projected: Tensor, lengths: Tensor, masks: Tensor | None = None) -> Tensor:
    """Pooled features ``(S·B, 2·D·H)`` (max then mean, forward then backward) of one GRU layer.

    Args:
        gru: the single-layer ``nn.GRU`` whose weights are used (``batch_first`` or not: only weights are read).
        projected: ``(B, T, D·3H)`` from :func:`input_projections`.
        lengths: ``(B,)`` real steps of each text (at least 1).
        masks: scaled keep-masks ``(S, B or 1, D·3H)`` on the projections, shared by every time step; ``None``: no
            dropout (``S = 1``). Rows of the result are sample-major: row ``s·B + b``.
    """
    names = directions(gru)
    n_dir, hidden = len(names), gru.hidden_size
    batch, steps = projected.shape[:2]
    w_hh = torch.stack([gru.get_parameter("weight_hh" + d) for d in names]).transpose(1, 2)  # (D, H, 3H)
    w_rz, w_n = w_hh[..., : 2 * hidden].contiguous(), w_hh[..., 2 * hidden :].contiguous()
    b_ih = torch.stack([gru.get_parameter("bias_ih" + d) for d in names])  # (D, 3H)
    b_hh = torch.stack([gru.get_parameter("bias_hh" + d) for d in names])
    # r and z take both biases with the input side; n's recurrent bias stays inside r⊙(...)
    bias_x = torch.cat([b_ih[:, : 2 * hidden] + b_hh[:, : 2 * hidden], b_ih[:, 2 * hidden :]], dim=1)
    bias_hn = b_hh[:, None, 2 * hidden :]  # (D, 1, H)
    # step k reads time k forward and time T-1-k backward: (T, D, 1, B, 3H)
    per_dir = projected.view(batch, steps, n_dir, 3 * hidden)
    order = [per_dir[:, :, 0]] + ([per_dir[:, :, 1].flip(1)] if n_dir == 2 else [])
    inputs = torch.stack(order).permute(2, 0, 1, 3).unsqueeze(2).contiguous()
    time = torch.arange(steps, device=projected.device)
    step_time = torch.stack([time, time.flip(0)][:n_dir], dim=1)  # (T, D)
    valid = step_time[:, :, None] < lengths.to(projected.device)[None, None, :]  # (T, D, B)
    if masks is None:
        n_samples, keep = 1, None
    else:
        n_samples = masks.shape[0]
        # (D, S, B|1, 3H)
        keep = masks.reshape(n_samples, masks.shape[1], n_dir, 3 * hidden).permute(2, 0, 1, 3).contiguous()
    bias = bias_x[:, None, None, :]
    rows = n_samples * batch
    valid_rows = valid[:, :, None, :, None].expand(steps, n_dir, n_samples, batch, 1).reshape(steps, n_dir, rows, 1)
    h = projected.new_zeros(n_dir, rows, hidden)
    states = []
    for k in range(steps):
        x = inputs[k] + bias if keep is None else torch.addcmul(bias, inputs[k], keep)
        x = x.expand(n_dir, n_samples, batch, 3 * hidden).reshape(n_dir, rows, 3 * hidden)
        h = gru_step(x, h, w_rz, w_n, bias_hn, valid_rows[k])
        states.append(h)
    count = lengths.to(projected.device, projected.dtype).repeat(n_samples)[None, :, None]
    maximum, mean = pool_states(torch.stack(states), valid_rows, count)  # states: (T, D, S·B, H)
    return torch.cat([maximum, mean]).permute(1, 0, 2).reshape(rows, 2 * n_dir * hidden)


def gru_step(x: Tensor, h: Tensor, w_rz: Tensor, w_n: Tensor, bias_hn: Tensor, valid: Tensor | None) -> Tensor:
    """One step of every lane (a direction, or a member's direction): ``x`` ``(L, R, 3H)`` are the step's input
    projections with both r/z biases and n's input bias added, ``h`` ``(L, R, H)`` the states, ``w_rz``
    ``(L, H, 2H)`` and ``w_n`` ``(L, H, H)`` the recurrent weights, ``bias_hn`` ``(L, 1, H)`` n's recurrent bias.
    Rows where ``valid`` ``(L, R, 1)`` is false keep their state; ``None``: every row is a real step (no select)."""
    hidden = h.shape[-1]
    rz = torch.sigmoid(torch.baddbmm(x[..., : 2 * hidden], h, w_rz))
    r, z = rz[..., :hidden], rz[..., hidden:]
    n = _tanh(torch.addcmul(x[..., 2 * hidden :], r, torch.baddbmm(bias_hn, h, w_n)))
    stepped = torch.lerp(n, h, z)
    return stepped if valid is None else torch.where(valid, stepped, h)


def pool_states(states: Tensor, valid: Tensor | None, count: Tensor) -> tuple[Tensor, Tensor]:
    """Max and mean over the real steps of ``states`` ``(T, L, R, H)``, each ``(L, R, H)``: ``valid``
    ``(T, L, R, 1)`` marks them (``None``: all), ``count`` ``(1, R, 1)`` counts them."""
    if valid is None:
        return states.amax(dim=0), states.sum(dim=0) / count
    return states.masked_fill(~valid, float("-inf")).amax(dim=0), (states * valid).sum(dim=0) / count
