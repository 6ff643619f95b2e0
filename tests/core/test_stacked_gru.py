"""GRU ensemble members whose recurrences share one loop at inference give the member-by-member numbers, with the
same masks, for every window and variant, and follow changes to the weights; batches the loop does not pay for
(texts of several lengths) and members it does not cover keep their own passes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mcdrop.core.adaptive import select_rows
from mcdrop.core.dropout import MaskSampler
from mcdrop.core.ensemble import DropoutEnsemble
from mcdrop.core.registry import build_model
from mcdrop.core.stacked_gru import StackedGRUs, stackable

BASE = {"embed_dim": 8, "hidden_dim": 6, "input_dropout_p": 0.4, "max_tokens": 16}
VARIANTS: dict[str, dict[str, Any]] = {
    "input dropout": {},
    "word dropout, prior and bag skip": {"word_dropout_p": 0.3, "prior_dim": 3, "bag_skip": True},
    "one direction": {"bidirectional": False},
}
BATCHES = {"one text": [[2, 3, 4, 5, 6]], "texts of one length": [[2, 3, 4], [6, 7, 1], [8, 9, 10]]}
RAGGED = [[2, 3, 4, 5], [6, 7], [8]]


def _ensemble(params: dict[str, Any], size: int = 3) -> DropoutEnsemble:
    torch.manual_seed(0)
    model = build_model("gru", 20, 2, BASE | params, size)
    assert isinstance(model, DropoutEnsemble)
    if params.get("prior_dim"):
        for member in model.members:
            member.token_prior.normal_()
    return model.eval()


def _stacked(model: DropoutEnsemble, ids: list[list[int]], window: slice, n_samples: int = 11) -> torch.Tensor:
    """The ensemble's samples of ``window`` in an inference call (the stacked loop)."""
    sampler = MaskSampler(n_samples, [5])
    sampler.start_pass(window)
    with torch.inference_mode():
        out = model.stochastic_tail(model.prefix(model.make_input(ids)), sampler)
    assert sampler.pass_samples == window
    return out


def _member_by_member(model: DropoutEnsemble, ids: list[list[int]], window: slice, n_samples: int = 11) -> torch.Tensor:
    """The same samples, each member's own pass (``nn.GRU``) with the masks a single model would use."""
    start, stop, _ = window.indices(n_samples)
    out = torch.empty(stop - start, len(ids), 2)
    sampler = MaskSampler(n_samples, [5])
    with torch.no_grad():
        for k, member in enumerate(model.members):
            first = start + (k - start) % model.size
            if first >= stop:  # no sample of this member in the window
                continue
            sampler.start_pass(slice(first, stop, model.size))
            out[first - start :: model.size] = member.stochastic_tail(member.prefix(member.make_input(ids)), sampler)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("window", [slice(0, 11), slice(0, 3), slice(4, 11), slice(7, 11)])
def test_the_stacked_loop_gives_the_member_by_member_samples(variant: str, batch: str, window: slice) -> None:
    model = _ensemble(VARIANTS[variant])
    stacked = _stacked(model, BATCHES[batch], window)
    assert model._stacked is not None  # the loop ran (every member has a sample in these windows)
    torch.testing.assert_close(stacked, _member_by_member(model, BATCHES[batch], window), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("ids", "window"), [(BATCHES["one text"], slice(4, 6)), (RAGGED, slice(0, 11))])
def test_windows_without_samples_for_some_member_and_texts_of_several_lengths_run_member_by_member(
    ids: list[list[int]], window: slice
) -> None:
    model = _ensemble({})
    torch.testing.assert_close(_stacked(model, ids, window), _member_by_member(model, ids, window))
    assert model._stacked is None


def test_rows_of_one_length_kept_from_a_padded_batch_run_member_by_member() -> None:
    model = _ensemble({})
    with torch.no_grad():
        state = select_rows(model.prefix(model.make_input(RAGGED)), torch.tensor([1]))  # 2 tokens, padded to 4
    with torch.inference_mode():
        samples = model.stochastic_tail(state, MaskSampler(11, [5]))
    assert model._stacked is None
    torch.testing.assert_close(samples, _member_by_member(model, [RAGGED[1]], slice(0, 11)), rtol=1e-5, atol=1e-6)


def test_the_stacked_copy_follows_weight_changes_and_invalidation() -> None:
    model = _ensemble({}, size=2)
    ids = BATCHES["texts of one length"]
    before = _stacked(model, ids, slice(0, 8))
    with torch.no_grad():
        model.members[1].gru.weight_hh_l0.mul_(1.5)  # in place: the version changes
    changed = _stacked(model, ids, slice(0, 8))
    torch.testing.assert_close(changed, _member_by_member(model, ids, slice(0, 8), 11), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(changed[0::2], before[0::2])  # member 0's samples kept
    assert not torch.allclose(changed[1::2], before[1::2])
    model.members[0].gru.bias_ih_l0.data.add_(1.0)  # .data: invisible to the fingerprint
    model.invalidate_fused()
    torch.testing.assert_close(_stacked(model, ids, slice(0, 8)), _member_by_member(model, ids, slice(0, 8), 11))


@pytest.mark.parametrize(
    "params", [{"weight_dropout_p": 0.2}, {"num_layers": 2}, {"input_dropout_p": 0.0}, {"gate_dropout_p": 0.3}]
)
def test_members_the_loop_does_not_cover_keep_their_own_passes(params: dict[str, Any]) -> None:
    model = _ensemble(params | ({"input_dropout_p": 0.0} if "gate_dropout_p" in params else {}))
    assert not stackable(model.members)
    ids = BATCHES["one text"]
    if model.mc_active:
        torch.testing.assert_close(_stacked(model, ids, slice(0, 11)), _member_by_member(model, ids, slice(0, 11)))
    assert model._stacked is None


def test_pooled_features_match_each_members_gru() -> None:
    torch.manual_seed(1)
    grus = [torch.nn.GRU(5, 4, batch_first=True, bidirectional=True) for _ in range(3)]
    xs = [torch.randn(rows, 4, 5) for rows in (6, 6, 5)]  # the last member has one sample fewer
    with torch.no_grad():
        for gru, x, got in zip(grus, xs, StackedGRUs(grus).pooled(xs), strict=True):
            states = gru(x)[0]
            torch.testing.assert_close(got, torch.cat([states.amax(1), states.mean(1)], -1))


def test_spare_threads_on_the_projections_give_the_one_thread_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import mcdrop.core.stacked_gru as stacked_gru
    from mcdrop.core.threads import ChunkRunner

    monkeypatch.setattr(stacked_gru, "SPLIT_PROJECTION_MACS", 0)  # every projection takes the spare threads
    model = _ensemble({})
    ids = BATCHES["one text"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = _stacked(model, ids, slice(0, 11))
        torch.set_num_threads(2)  # one chunk with a spare thread, as the engine runs one text
        [shared] = ChunkRunner().map(lambda _: _stacked(model, ids, slice(0, 11)), [[0]])
        assert torch.get_num_threads() == 2  # given back
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-7)
