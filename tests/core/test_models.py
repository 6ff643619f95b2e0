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


def test_gru_result_does_not_depend_on_padding_of_the_batch() -> None:
    model = DropoutGRU(12, 2, embed_dim=6, hidden_dim=5, input_dropout_p=0.3, max_tokens=8).eval()
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


def test_build_model_errors() -> None:
    with pytest.raises(ConfigError, match="unknown architecture 'cnn'"):
        build_model("cnn", 10, 2, {})
    with pytest.raises(ConfigError, match="at least two labels"):
        build_model("mlp", 10, 1, {})
    with pytest.raises(ConfigError, match="invalid gru parameters"):
        build_model("gru", 10, 2, {"bogus": 1})
    with pytest.raises(ConfigError, match=r"word_dropout_p must be a probability in \[0, 1\]"):
        build_model("gru", 10, 2, {"word_dropout_p": 1.2})
    with pytest.raises(ConfigError, match="invalid mlp parameters"):
        build_model("mlp", 10, 2, {"embed_dim": -4})
