"""``mcdrop predict`` end to end in a subprocess, and one-line errors for bad input (never a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MakeCheckpoint, assert_predictions_close

FIELDS = {
    "label",
    "probs",
    "variance",
    "entropy",
    "expected_entropy",
    "mutual_information",
    "variation_ratio",
    "std_error",
    "oov_fraction",
    "n_tokens",
    "n_known_tokens",
    "n_samples_used",
    "novelty",
    "prediction_set",
    "decision",
}


def mcdrop(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcdrop", "--log-level", "WARNING", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def texts_file(tmp_path: Path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("a wonderful film\nterrible boring mess\n\n" + json.dumps({"text": "great fun"}) + "\n")
    return path


def test_predict_prints_fields_and_reproduces(make_checkpoint: MakeCheckpoint, texts_file: Path) -> None:
    checkpoint = str(make_checkpoint("gru"))
    args = ("predict", checkpoint, "--input", str(texts_file), "--n-samples", "30", "--seed", "1")
    first = mcdrop(*args)
    assert first.returncode == 0, first.stderr
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    assert len(lines) == 4
    assert all(set(line) == FIELDS for line in lines)
    assert lines[2]["oov_fraction"] == 1.0  # the empty line is an empty text
    assert mcdrop(*args).stdout == first.stdout
    alone = mcdrop("predict", checkpoint, "--n-samples", "30", "--seed", "1", stdin="a wonderful film\n")
    assert_predictions_close([json.loads(alone.stdout)], lines[:1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("predict", "{missing}"), "no such checkpoint directory"),
        (("predict", "{ckpt}", "--input", "{missing}/in.txt"), "cannot read input file"),
        (("predict", "{ckpt}", "--n-samples", "0"), "argument --n-samples: must be at least 1, got 0"),
        (("predict", "{ckpt}", "--seed", "x"), "argument --seed: expected a non-negative integer, got 'x'"),
    ],
)
def test_bad_input_gives_one_line_error(
    make_checkpoint: MakeCheckpoint, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    ckpt = str(make_checkpoint())
    filled = [a.format(ckpt=ckpt, missing=tmp_path / "missing") for a in args]
    result = mcdrop(*filled, stdin="")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_checkpoint_and_bad_jsonl(make_checkpoint: MakeCheckpoint, tmp_path: Path) -> None:
    ckpt = make_checkpoint()
    bad = mcdrop("predict", str(ckpt), "--format", "jsonl", stdin='{"text": "fine"}\n{"txt": 1}\n')
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith('<stdin>:2: expected a JSON object with a string field "text" (--format jsonl)')
    (ckpt / "model.safetensors").write_bytes(b"junk")
    result = mcdrop("predict", str(ckpt), stdin="hello\n")
    assert result.returncode == 2
    assert "model.safetensors: corrupt or unreadable safetensors file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_invalid_utf8_input(make_checkpoint: MakeCheckpoint, tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    result = mcdrop("predict", str(make_checkpoint()), "--input", str(path))
    assert result.returncode == 2
    assert "not valid UTF-8 text" in result.stderr


def test_input_formats(make_checkpoint: MakeCheckpoint, tmp_path: Path) -> None:
    ckpt = str(make_checkpoint())
    # a plain line that starts with a brace is text, not a broken JSON record
    plain = mcdrop("predict", ckpt, "--seed", "0", stdin="{spoiler} the ending was great\nsecond line\n")
    assert plain.returncode == 0, plain.stderr
    assert [json.loads(line)["n_tokens"] for line in plain.stdout.splitlines()] == [5, 2]
    # auto: a first line that is a JSON object with "text" makes the stream JSONL
    jsonl = mcdrop("predict", ckpt, "--seed", "0", stdin='{"text": "second line"}\n\n{"text": "x y z"}\n')
    assert [json.loads(line)["n_tokens"] for line in jsonl.stdout.splitlines()] == [2, 3]
    # a .jsonl file is JSONL, and --format text reads JSON lines as text
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a b"}\n')
    assert json.loads(mcdrop("predict", ckpt, "--input", str(path), "--seed", "0").stdout)["n_tokens"] == 2
    as_text = mcdrop("predict", ckpt, "--format", "text", "--seed", "0", stdin='{"text": "a b"}\n')
    assert json.loads(as_text.stdout)["n_tokens"] == 3  # text, a, b
