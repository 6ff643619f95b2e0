"""Ensembles of dropout members: sample ``s`` from member ``s mod K``, the same masks a single member would use,
chunk- and batch-independent answers, and checkpoints that round-trip."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import MakeCheckpoint
from mcdrop.core.checkpoint import CONFIG_FILE, load_checkpoint
from mcdrop.core.dropout import MaskSampler
from mcdrop.core.engine import MCEngine
from mcdrop.core.ensemble import DropoutEnsemble
from mcdrop.core.errors import CheckpointError, ConfigError
from mcdrop.core.registry import build_model

PARAMS = {
    "mlp": {"embed_dim": 8, "hidden_dims": [8], "dropout_p": [0.4, 0.4]},
    "gru": {"embed_dim": 8, "hidden_dim": 8, "input_dropout_p": 0.4, "max_tokens": 16},
    "gru-gates": {"embed_dim": 8, "hidden_dim": 8, "gate_dropout_p": 0.4, "max_tokens": 16, "prior_dim": 2},
}
IDS = [[2, 3, 4, 5], [6, 7], [8]]
GATES = {"input_dropout_p": 0.0, "gate_dropout_p": 0.3}  # checkpoint parameters of the gate placement


def _architecture(variant: str) -> str:
    return variant.split("-")[0]


def _ensemble(architecture: str, size: int = 3) -> DropoutEnsemble:
    torch.manual_seed(0)
    model = build_model(_architecture(architecture), 20, 2, PARAMS[architecture], size)
    assert isinstance(model, DropoutEnsemble)
    return model.eval()


def _samples(model: DropoutEnsemble, window: slice, n_samples: int = 11, seed: int = 5) -> torch.Tensor:
    sampler = MaskSampler(n_samples, [seed])
    sampler.start_pass(window)
    state = model.prefix(model.make_input(IDS))
    out = model.stochastic_tail(state, sampler)
    assert sampler.pass_samples == window  # the ensemble gives the sampler back as it found it
    return out


@pytest.mark.parametrize("architecture", ["mlp", "gru", "gru-gates"])
def test_sample_s_comes_from_member_s_mod_k_with_a_single_models_masks(architecture: str) -> None:
    model = _ensemble(architecture)
    every = _samples(model, slice(0, 11))
    assert every.shape == (11, 3, 2)
    for k, member in enumerate(model.members):
        sampler = MaskSampler(11, [5])
        sampler.start_pass(slice(k, 11, 3))
        alone = member.stochastic_tail(member.prefix(model.make_input(IDS)), sampler)
        torch.testing.assert_close(every[k::3], alone)
    # the members differ, so the samples of different members are not copies of each other
    assert not torch.allclose(every[0], every[1])


@pytest.mark.parametrize("architecture", ["mlp", "gru", "gru-gates"])
@pytest.mark.parametrize("window", [slice(0, 4), slice(4, 11), slice(5, 6), slice(7, 11)])
def test_any_sample_range_gives_those_samples_of_the_whole_pass(architecture: str, window: slice) -> None:
    model = _ensemble(architecture)
    torch.testing.assert_close(_samples(model, window), _samples(model, slice(0, 11))[window])


def test_deterministic_pass_is_the_members_mean_probability() -> None:
    model = _ensemble("mlp")
    batch = model.make_input(IDS)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(batch), -1) for m in model.members]).mean(0)
        torch.testing.assert_close(torch.softmax(model(batch), -1), mean)


def test_members_must_agree_and_be_several() -> None:
    mlp = build_model("mlp", 20, 2, PARAMS["mlp"])
    gru = build_model("gru", 20, 2, PARAMS["gru"])
    with pytest.raises(ConfigError, match="2 to 16 members"):
        DropoutEnsemble([mlp])
    with pytest.raises(ConfigError, match="share one architecture"):
        DropoutEnsemble([mlp, gru])
    with pytest.raises(ConfigError, match=r"ensemble_size must be an integer in \[1, 16\]"):
        build_model("mlp", 20, 2, PARAMS["mlp"], 17)


@pytest.mark.parametrize("architecture", ["mlp", "gru", "gru-gates"])
def test_checkpoint_round_trip_and_seeded_batch_independent_answers(
    make_checkpoint: MakeCheckpoint, architecture: str
) -> None:
    extra = GATES if architecture == "gru-gates" else {}
    path = make_checkpoint(_architecture(architecture), ensemble_size=3, **extra)
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["ensemble_size"] == 3
    checkpoint = load_checkpoint(path)
    assert isinstance(checkpoint.model, DropoutEnsemble) and checkpoint.model.size == 3
    assert all(key.startswith("members.") for key in checkpoint.model.state_dict())
    engine = MCEngine(checkpoint, device="cpu")
    texts = ["a wonderful film", "boring", "the worst film of the year"]
    together = engine.predict(texts, n_samples=12, seed=3)
    alone = [engine.predict([t], n_samples=12, seed=3)[0] for t in texts]
    for a, b in zip(together, alone, strict=True):
        assert list(a.probs.values()) == pytest.approx(list(b.probs.values()), rel=1e-5, abs=1e-7)
    again = MCEngine(load_checkpoint(path), device="cpu").predict(texts, n_samples=12, seed=3)
    assert [p.to_dict() for p in again] == [p.to_dict() for p in together]


@pytest.mark.parametrize("params", [{}, GATES])
def test_adaptive_sampling_stops_on_the_samples_a_fixed_run_would_draw(
    make_checkpoint: MakeCheckpoint, params: dict[str, float]
) -> None:
    engine = MCEngine(load_checkpoint(make_checkpoint("gru", ensemble_size=2, **params)), device="cpu")
    texts = ["a wonderful film", "boring", "the best film of the year"]
    every = engine.predict_samples(texts, 40, seed=1)
    adaptive = engine.predict(texts, n_samples=40, seed=1, mc_tolerance=0.2)
    for i, prediction in enumerate(adaptive):
        used = prediction.n_samples_used
        assert 1 <= used <= 40
        assert list(prediction.probs.values()) == pytest.approx(every[:used, i].mean(0).tolist(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("value", [0, 17, "3", 2.5, True])
def test_a_bad_ensemble_size_is_named(make_checkpoint: MakeCheckpoint, value: object) -> None:
    path = make_checkpoint("mlp")
    config = json.loads((path / CONFIG_FILE).read_text())
    config["ensemble_size"] = value
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: ensemble_size must be an integer in \[1, 16\]"):
        load_checkpoint(path)


def test_weights_of_another_ensemble_size_are_refused(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint("mlp", ensemble_size=2)
    config = json.loads((path / CONFIG_FILE).read_text())
    config["ensemble_size"] = 3
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"tensor 'members.2.* is missing"):
        load_checkpoint(path)


@pytest.mark.parametrize("architecture", ["mlp", "gru", "gru-gates"])
def test_the_token_prior_is_a_stored_fixed_input(architecture: str) -> None:
    torch.manual_seed(0)
    model = build_model(_architecture(architecture), 20, 2, PARAMS[architecture] | {"prior_dim": 3}).eval()
    assert "token_prior" in model.state_dict()
    assert all(name != "token_prior" for name, _ in model.named_parameters())  # never trained
    batch = model.make_input(IDS)
    with torch.no_grad():
        before = model(batch)
        model.load_state_dict(model.state_dict() | {"token_prior": torch.rand(20, 3)})
        after = model(batch)
    assert not torch.allclose(before, after)  # the model reads it
    with pytest.raises(ConfigError, match="prior_dim must be at least 0"):
        build_model(_architecture(architecture), 20, 2, PARAMS[architecture] | {"prior_dim": -1})


@pytest.mark.parametrize("architecture", ["mlp", "gru", "gru-gates"])
def test_requests_with_other_seeds_in_one_batch_get_their_own_answers(
    make_checkpoint: MakeCheckpoint, architecture: str
) -> None:
    extra = GATES if architecture == "gru-gates" else {}
    path = make_checkpoint(_architecture(architecture), ensemble_size=3, **extra)
    engine = MCEngine(load_checkpoint(path), device="cpu")
    requests = [(["a wonderful film", "boring"], 1), (["the worst film of the year"], 2), (["great fun"], 3)]
    together = engine.predict_many(requests, 13)
    for (texts, seed), answers in zip(requests, together, strict=True):
        alone = engine.predict(texts, n_samples=13, seed=seed)
        for a, b in zip(answers, alone, strict=True):
            assert list(a.probs.values()) == pytest.approx(list(b.probs.values()), rel=1e-5, abs=1e-7)


def test_fused_mlp_members_match_the_member_by_member_path_and_follow_weight_changes() -> None:
    model = _ensemble("mlp", size=4)
    with torch.inference_mode():
        fused = _samples(model, slice(2, 11))  # inference: one call per layer for all members
    with torch.no_grad():
        model.members[1].classifier.weight.add_(0.5)  # in place: the fused copy must notice
    with torch.inference_mode():
        changed = _samples(model, slice(2, 11))
    sequential = _samples(model, slice(2, 11)).detach()  # gradients on: member by member
    torch.testing.assert_close(changed, sequential)
    assert not torch.allclose(fused, changed)
    torch.testing.assert_close(fused[[0, 2, 4, 6, 8]], changed[[0, 2, 4, 6, 8]])  # other members' samples kept


def test_members_side_by_side_on_spare_threads_give_the_one_thread_answer(make_checkpoint: MakeCheckpoint) -> None:
    engine = MCEngine(load_checkpoint(make_checkpoint("gru", ensemble_size=3)), device="cpu")
    threads = torch.get_num_threads()
    answers = {}
    try:
        for n in (1, 2, 3):  # one text is one chunk: its spare threads run the members' passes side by side
            torch.set_num_threads(n)
            answers[n] = [engine.predict_samples([text], 17, seed=4) for text in ("a wonderful film", "boring")]
    finally:
        torch.set_num_threads(threads)
    for n in (2, 3):
        for a, b in zip(answers[n], answers[1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_views_share_masks_drawn_once_in_layer_order() -> None:
    sampler = MaskSampler(8, [3])
    first, second = sampler.view(slice(0, 8, 2)), sampler.view(slice(1, 8, 2))
    a0 = second.keep(0.5, (4,))  # the second view draws layer 0 first
    b0, b1 = first.keep(0.5, (4,)), first.keep(0.5, (6,))
    a1 = second.keep(0.5, (6,))
    whole = MaskSampler(8, [3])
    w0, w1 = whole.keep(0.5, (4,)), whole.keep(0.5, (6,))
    torch.testing.assert_close(b0, w0[0::2])
    torch.testing.assert_close(a0, w0[1::2])
    torch.testing.assert_close(b1, w1[0::2])
    torch.testing.assert_close(a1, w1[1::2])


def test_writes_the_fingerprint_cannot_see_are_covered_by_invalidate_fused() -> None:
    model = _ensemble("mlp", size=3)
    with torch.inference_mode():
        before = _samples(model, slice(0, 9))
    model.members[0].classifier.weight.data.add_(1.0)  # .data: no version bump
    model.invalidate_fused()
    with torch.inference_mode():
        after = _samples(model, slice(0, 9))
    torch.testing.assert_close(after, _samples(model, slice(0, 9)).detach())  # the member-by-member answer
    assert not torch.allclose(before[0::3], after[0::3])


def test_side_by_side_pools_of_other_sizes_at_once_never_refuse_work() -> None:
    import threading

    from mcdrop.core.threads import side_by_side

    errors: list[BaseException] = []

    def client(size: int) -> None:
        try:
            for _ in range(300):
                assert side_by_side([lambda: 1] * size, size) == [1] * size
        except BaseException as error:  # collected for the assertion below
            errors.append(error)

    workers = [threading.Thread(target=client, args=(n,)) for n in (2, 3, 2, 4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors


def test_token_dropout_also_trains_a_gru_whose_recurrence_is_in_the_prefix() -> None:
    from mcdrop.core.gru import DropoutGRU

    torch.manual_seed(0)
    gru = DropoutGRU(30, 2, embed_dim=8, hidden_dim=8, output_dropout_p=0.3, max_tokens=16, token_dropout_p=0.9)
    batch = gru.make_input([[2, 3, 4, 5, 6, 7, 8, 9]])
    gru.train()
    assert not torch.equal(gru.prefix(batch)[0], gru.prefix(batch)[0])
    gru.eval()
    assert torch.equal(gru.prefix(batch)[0], gru.prefix(batch)[0])
