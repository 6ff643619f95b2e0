"""The shipped models as plain torch modules, and the MC dropout libraries a user would reach for without mcdrop.

``PlainMLP`` and ``PlainGRU`` compute exactly what :class:`~mcdrop.core.mlp.DropoutMLP` and
:class:`~mcdrop.core.gru.DropoutGRU` compute (their fixed token prior included), with ``nn.Dropout`` layers
(switched on the way each library switches dropout on) instead of mcdrop's samplers, and take one padded id tensor
``(B, L)`` as their only input, as those libraries expect. An ensemble checkpoint becomes one plain module per
member, and each library runs them the way a user would: member ``k`` for the samples ``s`` with ``s mod K = k``.
``peer_runners`` returns, per library, a function ``(ids, n_samples) -> probabilities (n_samples, B, C)``:

* ``baal``: ``patch_module`` + ``ModelWrapper.predict_on_batch`` (the input replicated N times in memory),
* ``torch-uncertainty``: ``mc_dropout(..., on_batch=True)``, loaded from its module file (the package's
  ``__init__`` needs lightning, which the wrapper itself does not),
* ``loop``: N forward passes with the dropout layers in training mode.

Used by ``benchmarks/bench_peers.py`` and ``benchmarks/bench_litserve.py``; needs ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mcdrop.core.checkpoint import Checkpoint
from mcdrop.core.ensemble import DropoutEnsemble
from mcdrop.core.gru import DropoutGRU
from mcdrop.core.mlp import DropoutMLP
from mcdrop.core.sequence_input import with_pieces

Runner = Callable[[Tensor, int], Tensor]


class PlainMLP(nn.Module):
    """Bag-of-words MLP: mean of the (non-padding) token embeddings + bias → ReLU → [Dropout → Linear → ReLU]* →
    Dropout → Linear."""

    def __init__(self, source: DropoutMLP) -> None:
        super().__init__()
        self.bag = copy.deepcopy(source.bag)
        self.bag_bias = nn.Parameter(source.bag_bias.detach().clone())
        self.prior = (
            nn.EmbeddingBag.from_pretrained(source.token_prior.clone(), mode="mean", padding_idx=0)
            if source.prior_dim
            else None
        )
        self.dropouts = nn.ModuleList(nn.Dropout(d.p) for d in source.dropouts)
        self.hidden = copy.deepcopy(source.hidden)
        self.classifier = copy.deepcopy(source.classifier)

    def forward(self, ids: Tensor) -> Tensor:
        x = torch.relu(self.bag(ids) + self.bag_bias)  # a 2-D input: padding_idx 0 is left out of each mean
        if self.prior is not None:
            x = torch.cat([x, self.prior(ids)], dim=-1)
        for dropout, linear in zip(self.dropouts, self.hidden, strict=False):
            x = torch.relu(linear(dropout(x)))
        logits: Tensor = self.classifier(self.dropouts[-1](x))
        return logits


class PlainGRU(nn.Module):
    """Embedding → locked dropout (one ``nn.Dropout`` mask per text, the same at every step) → packed GRU →
    max + mean pooling → Dropout → Linear."""

    def __init__(self, source: DropoutGRU) -> None:
        super().__init__()
        if source.word_dropout.p or source.weight_dropout_p or source.bag_skip:
            raise ValueError("the plain GRU covers input and output dropout and the prior only")
        self.embedding = copy.deepcopy(source.embedding)
        self.prior = nn.Embedding.from_pretrained(source.token_prior.clone()) if source.prior_dim else None
        self.input_dropout = nn.Dropout(source.input_dropout.p)
        self.gru = copy.deepcopy(source.gru)
        self.output_dropout = nn.Dropout(source.output_dropout.p)
        self.classifier = copy.deepcopy(source.classifier)

    def forward(self, ids: Tensor) -> Tensor:
        """``ids`` ``(B, T)`` word ids, or ``(B, T, 1 + P)`` each step's word id then its subword ids (0: none)."""
        if ids.dim() == 3:  # a step's input: its word's embedding plus the mean of its subwords' (padding is zero)
            ids, pieces = ids[..., 0], ids[..., 1:]
            bags = nn.functional.embedding_bag(
                pieces.flatten(0, 1), self.embedding.weight, mode="mean", padding_idx=0
            )  # one fixed-width bag per step, its padding left out
            x = self.embedding(ids) + bags.view(*ids.shape, -1)
        else:
            x = self.embedding(ids)
        lengths = (ids != 0).sum(dim=1).clamp_min(1)
        x = x * self.input_dropout(x.new_ones(x.shape[0], 1, x.shape[2]))  # locked: one mask per text
        if self.prior is not None:
            x = torch.cat([x, self.prior(ids)], dim=-1)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True)
        valid = (torch.arange(states.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
        pooled = torch.cat(
            [states.masked_fill(~valid, float("-inf")).amax(dim=1), states.sum(dim=1) / lengths[:, None]], -1
        )
        logits: Tensor = self.classifier(self.output_dropout(pooled))
        return logits


def _plain(model: object) -> nn.Module:
    if isinstance(model, DropoutMLP):
        return PlainMLP(model).eval()
    if isinstance(model, DropoutGRU):
        return PlainGRU(model).eval()
    raise TypeError(f"no plain counterpart for {type(model).__name__}")


def plain_models(checkpoint: Checkpoint) -> list[nn.Module]:
    """One plain module per member (one for a single model)."""
    model = checkpoint.model
    if isinstance(model, DropoutEnsemble):
        return [_plain(member) for member in model.members]
    return [_plain(model)]


def padded_ids(checkpoint: Checkpoint, texts: Sequence[str]) -> Tensor:
    """The checkpoint's token ids of ``texts``, padded with 0 to the longest: ``(B, L)``; for a GRU that reads
    subwords ``(B, T, 1 + P)``, each step's word id followed by its subword ids."""
    ids = checkpoint.encoder.encode(texts).ids
    model = checkpoint.model
    first = model.members[0] if isinstance(model, DropoutEnsemble) else model
    if isinstance(first, DropoutGRU) and first.subword_buckets:
        return _steps_with_pieces(ids, first.n_words)
    out = torch.zeros(len(ids), max(1, *(len(i) for i in ids)), dtype=torch.long)
    for row, seq in enumerate(ids):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def _steps_with_pieces(ids: Sequence[Sequence[int]], n_words: int) -> Tensor:
    """Rows of word ids each followed by its subword ids (from ``n_words`` on) → ``(B, T, 1 + P)``, 0-padded: the
    regrouping of :func:`~mcdrop.core.sequence_input.with_pieces`, laid out as fixed-width steps."""
    batch = with_pieces(ids, n_words)
    assert batch.pieces is not None and batch.piece_offsets is not None
    ends = torch.cat([batch.piece_offsets[1:], torch.tensor([batch.pieces.numel()])])
    counts = ends - batch.piece_offsets  # (B·T,) subwords of each step
    step_of = torch.repeat_interleave(torch.arange(len(counts)), counts)
    width = 1 + int(counts.max()) if len(counts) else 1
    out = torch.zeros(len(counts), width, dtype=torch.long)
    out[:, 0] = batch.ids.flatten()
    out[step_of, 1 + torch.arange(len(step_of)) - batch.piece_offsets[step_of]] = batch.pieces
    return out.view(*batch.ids.shape, -1)


def check_equivalent(checkpoint: Checkpoint, plains: Sequence[nn.Module], texts: Sequence[str]) -> float:
    """Largest difference between the plain modules' and mcdrop's deterministic probabilities (dropout off; an
    ensemble's are its members' mean)."""
    batch = checkpoint.model.make_input(checkpoint.encoder.encode(texts).ids)
    ids = padded_ids(checkpoint, texts)
    with torch.inference_mode():
        plain = torch.stack([torch.softmax(m.eval()(ids), dim=-1) for m in plains]).mean(0)
        return float((plain - torch.softmax(checkpoint.model(batch), dim=-1)).abs().max())


def load_module_file(package: str, relative: str, name: str) -> ModuleType:
    """One module of an installed package, without running the package's ``__init__``."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError(f"{package} is not installed: pip install -e '.[bench]'")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def baal_runner(plain: nn.Module, temperature: float) -> Runner:
    from baal.bayesian.dropout import patch_module
    from baal.modelwrapper import ModelWrapper, TrainingArgs

    wrapper = ModelWrapper(patch_module(copy.deepcopy(plain)).eval(), TrainingArgs(replicate_in_memory=True))

    def run(ids: Tensor, n_samples: int) -> Tensor:
        logits = wrapper.predict_on_batch(ids, iterations=n_samples)  # (B, C, N)
        return torch.softmax(logits.permute(2, 0, 1) / temperature, dim=-1)

    return run


def torch_uncertainty_runner(plain: nn.Module, temperature: float) -> Runner:
    module = load_module_file("torch_uncertainty", "methods/mc_dropout.py", "tu_mc_dropout")
    wrappers: dict[int, nn.Module] = {}

    def run(ids: Tensor, n_samples: int) -> Tensor:
        if n_samples not in wrappers:
            wrappers[n_samples] = module.mc_dropout(copy.deepcopy(plain), num_estimators=n_samples).eval()
        with torch.no_grad():
            logits = wrappers[n_samples](ids)  # (N * B, C), sample-major
        return torch.softmax(logits.view(n_samples, ids.shape[0], -1) / temperature, dim=-1)

    return run


def loop_runner(plain: nn.Module, temperature: float) -> Runner:
    model = copy.deepcopy(plain).eval()
    for layer in model.modules():
        if isinstance(layer, nn.Dropout):
            layer.train()

    def run(ids: Tensor, n_samples: int) -> Tensor:
        with torch.no_grad():
            return torch.stack([torch.softmax(model(ids) / temperature, dim=-1) for _ in range(n_samples)])

    return run


def members_in_turn(runners: Sequence[Runner]) -> Runner:
    """One runner over an ensemble's members: member ``k`` computes the samples ``s`` with ``s mod K = k``."""
    if len(runners) == 1:
        return runners[0]

    def run(ids: Tensor, n_samples: int) -> Tensor:
        size = len(runners)
        parts = [r(ids, len(range(k, n_samples, size))) for k, r in enumerate(runners) if k < n_samples]
        out = parts[0].new_empty(n_samples, *parts[0].shape[1:])
        for k, part in enumerate(parts):
            out[k::size] = part
        return out

    return run


def peer_runners(plains: Sequence[nn.Module], temperature: float) -> dict[str, Runner]:
    makers: dict[str, Callable[[nn.Module, float], Runner]] = {
        "baal": baal_runner,
        "torch-uncertainty": torch_uncertainty_runner,
        "loop": loop_runner,
    }
    return {name: members_in_turn([make(p, temperature) for p in plains]) for name, make in makers.items()}
