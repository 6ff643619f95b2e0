"""Dropout layers: expectation, identity at p=0, zeros at p=1, shared axes, gradients, MC switch, sampler."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mcdrop.core.dropout import MaskSampler, MCDropout, WordDropout, has_active_dropout, inverted_dropout_mask
from mcdrop.core.errors import ConfigError


def test_mean_over_many_masks_preserves_input() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 8)
    layer = MCDropout(0.3).train()
    mean = torch.stack([layer(x.expand(20000, 8)) for _ in range(2)]).mean(dim=(0, 1))
    assert torch.allclose(mean, x[0], atol=0.03)


@pytest.mark.parametrize("mode", ["train", "mc"])
def test_p_zero_is_identity(mode: str) -> None:
    x = torch.randn(4, 5)
    layer = MCDropout(0.0).train()
    if mode == "train":
        assert torch.equal(layer(x), x)
    else:
        out = layer(x.unsqueeze(0).expand(3, 4, 5), MaskSampler(3, [1]))
        assert torch.equal(out, x.expand(3, 4, 5))


def test_p_one_gives_zeros_not_nan() -> None:
    x = torch.randn(4, 5)
    out = MCDropout(1.0).train()(x)
    assert torch.equal(out, torch.zeros_like(x))
    mc = MCDropout(1.0)(x.unsqueeze(0).expand(2, 4, 5), MaskSampler(2, [0]))
    assert torch.equal(mc, torch.zeros(2, 4, 5))
    assert not torch.isnan(inverted_dropout_mask((3,), 1.0)).any()


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_invalid_p_is_refused(p: float) -> None:
    with pytest.raises(ConfigError, match=r"dropout p must be a probability in \[0, 1\]"):
        MCDropout(p)


def test_eval_without_sampler_is_identity_and_mc_is_random_in_eval() -> None:
    layer = MCDropout(0.5).eval()
    x = torch.ones(1, 64)
    assert torch.equal(layer(x), x)
    out = layer(x.unsqueeze(0).expand(2, 1, 64), MaskSampler(2, [7]))
    assert not layer.training
    assert not torch.equal(out[0], out[1])  # the two samples use different masks
    assert set(out.unique().tolist()) <= {0.0, 2.0}


def test_locked_dropout_mask_is_constant_along_shared_axis() -> None:
    layer = MCDropout(0.5, shared_axes=(0,)).train()  # (B, T, E): one mask per (b, e) for every t
    out = layer(torch.ones(3, 7, 16))
    assert torch.equal(out, out[:, :1].expand_as(out))
    mc = layer.eval()(torch.ones(4, 3, 7, 16), MaskSampler(4, [1]))
    assert torch.equal(mc, mc[:, :, :1].expand_as(mc))


def test_word_dropout_drops_whole_vectors() -> None:
    out = WordDropout(0.5, max_tokens=10).train()(torch.ones(2, 10, 6))
    per_token = out[..., 0:1]
    assert torch.equal(out, per_token.expand_as(out))
    mc = WordDropout(0.5, max_tokens=10)(torch.ones(3, 2, 4, 6), MaskSampler(3, [5]))
    assert torch.equal(mc, mc[..., :1].expand_as(mc))


def test_word_dropout_masks_do_not_depend_on_padding() -> None:
    layer = WordDropout(0.5, max_tokens=10)
    short = layer(torch.ones(2, 1, 4, 3), MaskSampler(2, [11]))
    long = layer(torch.ones(2, 1, 9, 3), MaskSampler(2, [11]))
    assert torch.equal(short, long[:, :, :4])


def test_gradient_is_masked_and_scaled_like_forward() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    sampler = MaskSampler(1, [3])
    out = MCDropout(0.5)(x.unsqueeze(0), sampler)
    sampler.start_pass()  # a new pass replays the cached masks in layer order
    mask = sampler.keep(0.5, (4,))  # (1, 1, 4)
    out.sum().backward()
    assert x.grad is not None
    # forward: y = x * m with m in {0, 2}; so dy/dx = m exactly.
    assert torch.equal(x.grad, mask[0])
    assert torch.equal(out[0], x.detach() * mask[0])


def test_sampler_masks_depend_on_seed_and_group_only() -> None:
    alone = MaskSampler(5, [42]).keep(0.5, (8,))
    groups = torch.tensor([1, 0, 1])
    merged = MaskSampler(5, [7, 42], groups).keep(0.5, (8,))
    assert merged.shape == (5, 3, 8)
    assert torch.equal(merged[:, 0], alone[:, 0])  # inputs 0 and 2 belong to group 1, seed 42
    assert torch.equal(merged[:, 2], alone[:, 0])
    assert not torch.equal(merged[:, 1], alone[:, 0])


def test_sampler_sample_chunks_slice_the_same_masks() -> None:
    full = MaskSampler(6, [9]).keep(0.5, (4,))
    sampler = MaskSampler(6, [9])
    sampler.start_pass(slice(0, 4))
    first = sampler.keep(0.5, (4,))
    sampler.start_pass(slice(4, 6))
    second = sampler.keep(0.5, (4,))
    assert torch.equal(torch.cat([first, second]), full)


def test_has_active_dropout() -> None:
    assert has_active_dropout(nn.Sequential(nn.Linear(2, 2), MCDropout(0.1)))
    assert not has_active_dropout(nn.Sequential(nn.Linear(2, 2), MCDropout(0.0)))
    assert not has_active_dropout(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
