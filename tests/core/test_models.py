"""Models: shapes, prefix/tail consistency, eval-mode layers stay in eval during MC, placement."""

from __future__ import annotations

import pytest
import torch

from mcdrop.core.dropout import MaskSampler
from mcdrop.core.errors import ConfigError
from mcdrop.core.gru import DropoutGRU
from mcdrop.core.mlp import DropoutMLP
from mcdrop.core.registry import build_model

IDS = [[2, 3, 4], [5], [], [6, 7, 8, 9, 2]]


def test_mlp_shapes_and_deterministic_eval() -> None:
    model = DropoutMLP(12, 3, embed_dim=8, hidden_dims=(6, 5), dropout_p=(0.2, 0.3, 0.4)).eval()
    batch = model.make_input(IDS)
    assert model(batch).shape == (4, 3)
    assert torch.equal(model(batch), model(batch))
    logits = model.stochastic_tail(model.prefix(batch), MaskSampler(7, [1]))
    assert logits.shape == (7, 4, 3)
    assert model.dropout_placement == "after_embedding"


def test_mlp_needs_one_p_per_layer() -> None:
    with pytest.raises(ConfigError, match="dropout_p needs one probability per linear layer: 2 "):
        DropoutMLP(10, 2, hidden_dims=(4,), dropout_p=(0.1,))


@pytest.mark.parametrize(
    ("params", "placement"),
    [
        ({"output_dropout_p": 0.5}, "after_recurrence"),
        ({"input_dropout_p": 0.3}, "before_recurrence"),
        ({"word_dropout_p": 0.1}, "before_recurrence"),
        ({"weight_dropout_p": 0.2}, "before_recurrence"),
        ({"gate_dropout_p": 0.3}, "gate_inputs"),
        ({"gate_dropout_p": 0.3, "prior_dim": 2, "bag_skip": True, "token_dropout_p": 0.2}, "gate_inputs"),
    ],
)
def test_gru_placements_give_sampled_logits(params: dict[str, float], placement: str) -> None:
    torch.manual_seed(0)
    model = DropoutGRU(12, 2, embed_dim=6, hidden_dim=5, max_tokens=8, **params).eval()
    assert model.dropout_placement == placement
    batch = model.make_input(IDS)
    logits = model.stochastic_tail(model.prefix(batch), MaskSampler(4, [3]))
    assert logits.shape == (4, 4, 2)
    assert not torch.allclose(logits[0], logits[1])  # samples differ
    # dropout off: the tail equals the plain forward pass
    assert torch.allclose(model.stochastic_tail(model.prefix(batch)), model(batch))


def test_gru_two_layers_unidirectional() -> None:
    model = DropoutGRU(12, 3, embed_dim=6, hidden_dim=5, num_layers=2, bidirectional=False, input_dropout_p=0.2)
    assert model.eval()(model.make_input(IDS)).shape == (4, 3)


@pytest.mark.parametrize(
    "params", [{"input_dropout_p": 0.3}, {"gate_dropout_p": 0.3, "prior_dim": 2, "bag_skip": True}]
)
def test_gru_result_does_not_depend_on_padding_of_the_batch(params: dict[str, float]) -> None:
    torch.manual_seed(0)
    model = DropoutGRU(12, 2, embed_dim=6, hidden_dim=5, max_tokens=8, **params).eval()
    if model.prior_dim:
        model.token_prior.copy_(torch.rand(12, 2))
        model.token_prior[0] = 0.0  # the padding id has no prior, as the lexicon table makes it
    alone = model.stochastic_tail(model.prefix(model.make_input([IDS[1]])), MaskSampler(3, [2]))
    padded = model.stochastic_tail(model.prefix(model.make_input(IDS)), MaskSampler(3, [2]))
    assert torch.allclose(alone[:, 0], padded[:, 1], atol=1e-6)


@pytest.mark.parametrize("architecture", ["mlp", "gru"])
def test_mc_sampling_does_not_depend_on_train_mode(architecture: str) -> None:
    """MC dropout is switched on by the sampler, never by model.train(): both modes give the same samples."""
    params = {"weight_dropout_p": 0.2, "word_dropout_p": 0.1, "max_tokens": 8} if architecture == "gru" else {}
    model = build_model(architecture, 12, 2, params)
    batch = model.make_input(IDS)
    model.eval()
    in_eval = model.stochastic_tail(model.prefix(batch), MaskSampler(5, [1]))  # type: ignore[arg-type]
    model.train()
    in_train = model.stochastic_tail(model.prefix(batch), MaskSampler(5, [1]))  # type: ignore[arg-type]
    assert torch.allclose(in_eval, in_train)
    model.eval()
    assert torch.equal(model(batch), model(batch))  # and eval() without a sampler is deterministic


@pytest.mark.parametrize("bidirectional", [True, False])
def test_gate_placement_without_masks_is_the_plain_gru(bidirectional: bool) -> None:
    """Same weights, dropout off: the step loop over precomputed projections gives nn.GRU's features, lengths
    respected (the backward direction starts at each text's last token, pooling sees only real steps)."""
    torch.manual_seed(0)
    params = {"embed_dim": 6, "hidden_dim": 5, "max_tokens": 8, "bidirectional": bidirectional, "prior_dim": 2}
    params |= {"output_dropout_p": 0.0}
    plain = DropoutGRU(12, 2, bag_skip=True, **params).eval()
    plain.token_prior.copy_(torch.rand(12, 2))
    plain.token_prior[0] = 0.0
    gates = DropoutGRU(12, 2, gate_dropout_p=0.4, bag_skip=True, **params).eval()
    gates.load_state_dict(plain.state_dict())
    batch = plain.make_input(IDS)
    torch.testing.assert_close(gates(batch), plain(batch))
    # a sampler with p = 0 masks changes nothing either: every sample is the plain GRU
    gates.gate_dropout_p = 0.0
    assert gates.dropout_placement == "after_recurrence"
    gates.gate_dropout_p = 1e-9
    sampled = gates.stochastic_tail(gates.prefix(batch), MaskSampler(3, [1]))
    torch.testing.assert_close(sampled, plain(batch).expand(3, -1, -1))


def test_gate_placement_samples_do_not_depend_on_train_mode_and_train_with_gradients() -> None:
    torch.manual_seed(0)
    model = DropoutGRU(12, 2, embed_dim=6, hidden_dim=5, max_tokens=8, gate_dropout_p=0.3, token_dropout_p=0.5)
    batch = model.make_input(IDS)
    model.eval()
    in_eval = model.stochastic_tail(model.prefix(batch), MaskSampler(5, [1]))
    model.train()
    in_train = model.stochastic_tail(model.prefix(batch), MaskSampler(5, [1]))
    torch.testing.assert_close(in_eval, in_train)  # token dropout is for training passes only
    assert not torch.allclose(model(batch), model(batch))  # a training pass draws fresh masks
    model(batch).sum().backward()  # type: ignore[no-untyped-call]
    for name in ("embedding.weight", "gru.weight_ih_l0", "gru.weight_hh_l0_reverse", "gru.bias_hh_l0"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.eval()
    assert torch.equal(model(batch), model(batch))


def test_gate_masks_are_locked_over_time_and_come_from_the_sampler() -> None:
    """One mask per sample over the 2 x 3H gate projections: the sampler's first layer, then output dropout."""
    model = DropoutGRU(12, 2, embed_dim=6, hidden_dim=5, max_tokens=8, gate_dropout_p=0.3).eval()
    sampler = MaskSampler(4, [7])
    model.stochastic_tail(model.prefix(model.make_input(IDS)), sampler)
    assert sampler._shapes == [(1, 30), (20,)]


@pytest.mark.parametrize(
    "params",
    [
        {"gate_dropout_p": 0.3, "input_dropout_p": 0.1},
        {"gate_dropout_p": 0.3, "word_dropout_p": 0.1},
        {"gate_dropout_p": 0.3, "weight_dropout_p": 0.1},
        {"gate_dropout_p": 0.3, "num_layers": 2},
    ],
)
def test_gate_dropout_replaces_the_other_recurrent_dropouts(params: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="gate_dropout_p needs num_layers 1 and no word, input or weight dropout"):
        DropoutGRU(12, 2, **params)  # type: ignore[arg-type]


def test_build_model_errors() -> None:
    with pytest.raises(ConfigError, match="unknown architecture 'cnn'"):
        build_model("cnn", 10, 2, {})
    with pytest.raises(ConfigError, match="at least two labels"):
        build_model("mlp", 10, 1, {})
    with pytest.raises(ConfigError, match="invalid gru parameters"):
        build_model("gru", 10, 2, {"bogus": 1})
    with pytest.raises(ConfigError, match=r"word_dropout_p must be a probability in \[0, 1\]"):
        build_model("gru", 10, 2, {"word_dropout_p": 1.2})
    with pytest.raises(ConfigError, match=r"gate_dropout_p must be a probability in \[0, 1\]"):
        build_model("gru", 10, 2, {"gate_dropout_p": -0.1})
    with pytest.raises(ConfigError, match="invalid mlp parameters"):
        build_model("mlp", 10, 2, {"embed_dim": -4})


def test_a_gru_with_subwords_adds_each_steps_pieces_to_its_word() -> None:
    """Each step's input is its word's embedding plus the mean of that word's subword embeddings; padding and
    a batch of texts give what each text gives alone."""
    from mcdrop.core.text import TextEncoder, Vocabulary

    encoder = TextEncoder(Vocabulary(["<pad>", "<unk>", "a", "fine", "film"]), 1, 16, subword_buckets=32)
    model = DropoutGRU(encoder.n_ids, 2, embed_dim=8, hidden_dim=4, input_dropout_p=0.5, subword_buckets=32).eval()
    ids = encoder.encode(["a fine flim", "film"]).ids
    batch = model.make_input(ids)
    assert batch.ids.tolist() == [[2, 3, 1], [4, 0, 0]] and batch.lengths.tolist() == [3, 1]
    assert batch.pieces is not None and batch.piece_offsets is not None
    counts = [len(encoder.encode([w]).ids[0]) - 1 for w in ("a", "fine", "flim", "film")]
    assert batch.pieces.numel() == sum(counts)
    embedded = model._embed(batch)
    table = model.embedding.weight
    first_pieces = torch.tensor(ids[0][1 : 1 + counts[0]])
    torch.testing.assert_close(embedded[0, 0], table[2] + table[first_pieces].mean(0))
    torch.testing.assert_close(embedded[1, 1], torch.zeros(8))  # padding: no word, no pieces
    together = model(batch)
    alone = torch.cat([model(model.make_input([row])) for row in ids])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert model.check_encoder(1, 16, 32) is None
    assert "hashes subwords into 0 buckets but the GRU reads 32" in str(model.check_encoder(1, 16, 0))
    with pytest.raises(ConfigError, match="subword_buckets must be in"):
        DropoutGRU(10, 2, subword_buckets=9)


def test_a_gru_with_subwords_drops_a_training_word_to_unk_and_keeps_its_pieces() -> None:
    """Token dropout with subwords turns a training word into what an unseen word is at serving time: <unk> plus
    its own subwords; Monte Carlo and eval passes keep every word."""
    from mcdrop.core.text import TextEncoder, Vocabulary

    encoder = TextEncoder(Vocabulary(["<pad>", "<unk>", "a", "fine", "film"]), 1, 16, subword_buckets=32)
    params = {"embed_dim": 8, "hidden_dim": 4, "input_dropout_p": 0.5, "subword_buckets": 32}
    model = DropoutGRU(encoder.n_ids, 2, token_dropout_p=1.0, **params)
    batch = model.make_input(encoder.encode(["fine film", "a"]).ids)
    unseen = model.make_input(encoder.encode(["qfine qfilm", "qa"]).ids)  # unknown words
    table = model.embedding.weight.detach()
    model.eval()
    kept = model._embed(batch).detach()
    pieces = kept - table[batch.ids]  # what the subwords add
    model.train()
    dropped = model._embed(batch).detach()
    torch.testing.assert_close(dropped[0], table[1] + pieces[0])
    torch.testing.assert_close(dropped[1, 0], table[1] + pieces[1, 0])
    torch.testing.assert_close(dropped[1, 1], torch.zeros(8))  # padding stays padding
    assert unseen.ids.tolist() == [[1, 1], [1, 0]]  # unknown words: <unk> with their own pieces
    assert not torch.equal(dropped[0], table[1].expand(2, 8))  # the pieces are kept
