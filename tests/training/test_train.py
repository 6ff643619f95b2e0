"""``mcdrop train`` and ``mcdrop eval`` end to end on a tiny synthetic CSV, and their one-line errors."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mcdrop.cli import main
from mcdrop.core.checkpoint import load_checkpoint
from mcdrop.core.engine import MCEngine, load_engine

WORDS = {
    "bad": ["awful", "dull", "boring", "terrible", "mess"],
    "good": ["great", "moving", "superb", "fun", "wonderful"],
    "meh": ["okay", "average", "fine", "forgettable", "passable"],
}
FILLER = ["the", "film", "was", "a", "plot", "and", "acting", "story"]


@pytest.fixture
def reviews_csv(tmp_path: Path) -> Path:
    """140 three-class reviews: two cue words of the label among filler words."""
    rng = random.Random(0)
    path = tmp_path / "reviews.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["body", "verdict", "source"])
        for i in range(140):
            label = list(WORDS)[i % 3]
            words = rng.sample(FILLER, 4) + rng.sample(WORDS[label], 2)
            rng.shuffle(words)
            writer.writerow([" ".join(words), label, "web"])
    return path


def _train(csv_path: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "--log-level",
            "WARNING",
            "train",
            "--data",
            str(csv_path),
            "--text-column",
            "body",
            "--label-column",
            "verdict",
            "--out",
            str(out),
            "--name",
            "tiny",
            "--epochs",
            "4",
            "--n-samples",
            "8",
            "--batch-size",
            "16",
            *extra,
        ]
    )


MLP_FLAGS = ("--architecture", "mlp", "--embed-dim", "16", "--hidden-dims", "16", "--lr", "0.02", "--epochs", "12")
GRU_FLAGS = ("--architecture", "gru", "--embed-dim", "8", "--hidden-dim", "8", "--input-dropout", "0.2")


def test_train_mlp_writes_a_checkpoint_whose_metrics_round_trip(
    reviews_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train(reviews_csv, tmp_path / "models", *MLP_FLAGS) == 0
    printed = json.loads(capsys.readouterr().out)
    directory = tmp_path / "models" / "tiny"
    assert {p.name for p in directory.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "eval_report.json",
        "reliability.png",
    }
    config = json.loads((directory / "config.json").read_text())
    assert config["labels"] == ["bad", "good", "meh"]
    assert config["default_n_samples"] == 8
    assert config["training"]["sizes"] == {"train": 98, "calibration": 14, "validation": 14, "test": 14, "ood": 0}
    assert set(config["uncertainty_baseline"]) == {
        "mean_entropy",
        "mean_mutual_information",
        "mutual_information_threshold",
        "high_mi_share",
        "mean_oov_fraction",
    }
    assert 0.0 <= config["uncertainty_baseline"]["mean_oov_fraction"] <= 1.0
    assert printed["mc"] == config["metrics"]["mc"]
    assert config["metrics"]["mc"]["accuracy"] > 0.6  # cue words are easy

    # The saved checkpoint re-evaluates to the metrics recorded at training time.
    assert main(["--log-level", "WARNING", "eval", str(directory), "--out", str(tmp_path / "ev")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mc"] == config["metrics"]["mc"]
    assert report["deterministic"] == config["metrics"]["deterministic"]
    assert (tmp_path / "ev" / "reliability.png").is_file()
    assert (tmp_path / "ev" / "risk_coverage.png").is_file()  # the checkpoint is calibrated
    assert set(report["decisions"]) >= {"selective", "conformal", "novelty"}


def test_training_is_reproducible_and_predictions_round_trip(reviews_csv: Path, tmp_path: Path) -> None:
    for out in ("a", "b"):
        assert _train(reviews_csv, tmp_path / out, *GRU_FLAGS, "--seed", "3") == 0
    first, second = (load_checkpoint(tmp_path / out / "tiny") for out in ("a", "b"))
    assert first.config["dropout_placement"] == "before_recurrence"
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    texts = ["great superb film", "awful boring mess", "okay average story"]
    loaded = load_engine(str(tmp_path / "a" / "tiny"), device="cpu").predict_samples(texts, 8, seed=1)
    rebuilt = MCEngine(second, device="cpu").predict_samples(texts, 8, seed=1)
    assert torch.allclose(loaded, rebuilt)
    assert torch.allclose(loaded.sum(-1), torch.ones(8, 3))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--text-column", "text"), "no column 'text'"),
        (("--label-column", "source"), "column 'source' has 1 distinct label(s) ['web']"),
        (("--dropout-p", "1.5"), "--dropout-p[0] must be a probability in [0, 1] (got 1.5)"),
        (("--dropout-p", "0.5,0.5,0.5"), "--dropout-p needs one value per linear layer"),
        (("--n-samples", "0"), "--n-samples must be greater than 0 (got 0)"),
        (("--weight-decay", "-1"), "--weight-decay must be at least 0"),
        (("--gate-dropout", "1.5"), "--gate-dropout must be a probability in [0, 1] (got 1.5)"),
        (("--gate-dropout", "0.3", "--input-dropout", "0.2"), "--gate-dropout replaces --word-dropout"),
    ],
)
def test_train_errors_are_one_line(
    reviews_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], message: str
) -> None:
    # Later flags win, so these override the defaults _train passes.
    assert _train(reviews_csv, tmp_path / "models", *MLP_FLAGS, *flags) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("mcdrop train: error:")
    assert not (tmp_path / "models" / "tiny").exists()


def test_gru_rejects_bad_dropout_before_loading_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--architecture", "gru", "--name", "x", "--out", str(tmp_path), "--word-dropout", "-0.1"])
    assert code == 2
    assert "--word-dropout must be a probability in [0, 1] (got -0.1)" in capsys.readouterr().err


def test_eval_errors_are_one_line(
    reviews_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], make_checkpoint: object
) -> None:
    missing = main(["eval", str(tmp_path / "nothing")])
    assert missing == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
    assert callable(make_checkpoint)
    checkpoint = make_checkpoint()
    code = main(
        ["eval", str(checkpoint), "--data", str(reviews_csv), "--text-column", "body", "--label-column", "verdict"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "that the model does not know" in err and len(err.strip().splitlines()) == 1


def test_a_gru_with_dropout_on_the_gate_inputs_trains_and_serves(reviews_csv: Path, tmp_path: Path) -> None:
    flags = (*GRU_FLAGS, "--input-dropout", "0", "--gate-dropout", "0.3", "--lexicon-prior", "--bag-skip")
    assert _train(reviews_csv, tmp_path / "models", *flags, "--token-dropout", "0.2") == 0
    checkpoint = load_checkpoint(tmp_path / "models" / "tiny")
    assert checkpoint.config["dropout_placement"] == "gate_inputs"
    params = checkpoint.config["model_params"]
    assert params["gate_dropout_p"] == 0.3 and params["input_dropout_p"] == 0.0 and params["bag_skip"]
    report = json.loads((tmp_path / "models" / "tiny" / "eval_report.json").read_text())
    assert set(report["standin_shift"]) == {"validation", "rare_vocabulary", "typos"}
    engine = MCEngine(checkpoint, device="cpu")
    first = engine.predict(["superb fun", "awful boring mess"], n_samples=8, seed=0)
    assert first == engine.predict(["superb fun", "awful boring mess"], n_samples=8, seed=0)
    assert first[0].mutual_information > 0


def test_an_ensemble_with_the_lexicon_prior_trains_and_serves(reviews_csv: Path, tmp_path: Path) -> None:
    flags = (*MLP_FLAGS, "--ensemble-size", "2", "--lexicon-prior", "--token-dropout", "0.2")
    assert _train(reviews_csv, tmp_path / "models", *flags) == 0
    directory = tmp_path / "models" / "tiny"
    config = json.loads((directory / "config.json").read_text())
    assert config["ensemble_size"] == 2
    assert config["model_params"]["prior_dim"] == 4 and config["model_params"]["token_dropout_p"] == 0.2
    assert len(config["training"]["member_best_epochs"]) == 2
    checkpoint = load_checkpoint(directory)
    state = checkpoint.model.state_dict()
    # the lexicon's words joined the vocabulary; the members were trained from different seeds
    assert checkpoint.encoder.vocab.lookup("delicious") != 1
    assert torch.equal(state["members.0.token_prior"], state["members.1.token_prior"])
    assert not torch.equal(state["members.0.bag.weight"], state["members.1.bag.weight"])
    assert float(state["members.0.token_prior"][checkpoint.encoder.vocab.lookup("delicious"), 0]) > 0.3
    report = json.loads((directory / "eval_report.json").read_text())
    assert set(report["standin_shift"]) == {"validation", "rare_vocabulary", "typos"}
    engine = MCEngine(checkpoint, device="cpu")
    assert engine.predict(["superb fun"], n_samples=8, seed=0)[0].label in ("bad", "good", "meh")


def test_a_gru_distilled_from_a_trained_mlp(reviews_csv: Path, tmp_path: Path) -> None:
    assert _train(reviews_csv, tmp_path / "teacher", *MLP_FLAGS) == 0
    teacher = tmp_path / "teacher" / "tiny"
    flags = (*GRU_FLAGS, "--distill-from", str(teacher), "--distill-weight", "0.6", "--bag-skip")
    assert _train(reviews_csv, tmp_path / "student", *flags) == 0
    config = json.loads((tmp_path / "student" / "tiny" / "config.json").read_text())
    assert config["training"]["hyper_parameters"]["distill_from"] == str(teacher)
    assert config["model_params"]["bag_skip"] is True
    assert config["metrics"]["mc"]["accuracy"] > 0.4  # three labels: chance is 1/3


def test_distilling_from_a_model_with_other_labels_is_refused(
    reviews_csv: Path, tmp_path: Path, make_checkpoint: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = make_checkpoint("mlp", labels=("negative", "positive"))
    assert _train(reviews_csv, tmp_path / "student", *GRU_FLAGS, "--distill-from", str(teacher)) == 2
    assert "--distill-from: the teacher's labels ['negative', 'positive'] differ" in capsys.readouterr().err


def test_subwords_train_and_round_trip_for_the_mlp_and_the_gru(
    reviews_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train(reviews_csv, tmp_path / "models", *MLP_FLAGS, "--subword-buckets", "128") == 0
    directory = tmp_path / "models" / "tiny"
    checkpoint = load_checkpoint(directory)
    assert checkpoint.encoder.subword_buckets == 128
    assert checkpoint.model.token_embeddings().shape[0] == len(checkpoint.encoder.vocab) + 128
    report = json.loads((directory / "eval_report.json").read_text())
    engine = MCEngine(checkpoint, device="cpu")
    again = json.loads(json.dumps(engine.predict(["superb fun, wonderfull"], n_samples=8, seed=0)[0].to_dict()))
    assert again["label"] in ("bad", "good", "meh") and report["mc"]["accuracy"] > 0.5
    assert _train(reviews_csv, tmp_path / "gru", *GRU_FLAGS, "--subword-buckets", "128") == 0
    gru = load_checkpoint(tmp_path / "gru" / "tiny")
    assert gru.encoder.subword_buckets == 128 and gru.config["model_params"]["subword_buckets"] == 128
    assert gru.model.token_embeddings().shape[0] == len(gru.encoder.vocab) + 128
    # a misspelt word the vocabulary lacks is <unk> plus its own pieces: unlike another unknown word
    gru_engine = MCEngine(gru, device="cpu")
    a, b = (gru_engine.predict([t], n_samples=8, seed=0)[0].probs for t in ("wonderfull", "qzxv"))
    assert a != b
    assert _train(reviews_csv, tmp_path / "bad", *GRU_FLAGS, "--subword-buckets", "-1") == 2
    assert "--subword-buckets must be at least 0 (got -1)" in capsys.readouterr().err
