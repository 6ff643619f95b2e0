"""``mcdrop predict CHECKPOINT_DIR``: MC predictions for texts, one JSON object per line (DESIGN §5).

Reads one text per line, or JSONL with a ``text`` field, from a file or stdin; writes the same prediction fields
as ``POST /v1/predict``, so an offline run and the service answer alike (same seed, same numbers)::

    printf 'a gripping drama\nthe plot never makes sense\n' | mcdrop predict models/rt-mlp --seed 7
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from typing import TextIO

from mcdrop.core.decisions import DEFAULT_COVERAGE, DecisionPolicy
from mcdrop.core.engine import MCEngine, load_engine, random_seed
from mcdrop.core.errors import InputError, McdropError
from mcdrop.serving.presentation import PredictionDict, prediction_dict
from mcdrop.serving.schemas import check_decision_fields

logger = logging.getLogger(__name__)


def positive_int(value: str) -> int:
    """argparse type: an integer ≥ 1, with a message that names the rule."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {number}")
    return number


def _json_text(line: str) -> str | None:
    """The ``text`` field of a JSON object line, or None if the line is not such an object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record["text"] if isinstance(record, dict) and isinstance(record.get("text"), str) else None


def _read_texts(stream: TextIO, source: str, fmt: str) -> Iterator[str]:
    """Texts from ``stream``: one per line (``text``), or the ``text`` field of each JSON line (``jsonl``).

    ``auto`` decides on the first line: JSONL if it is a JSON object with a string ``text``, plain text otherwise,
    so a plain line such as ``{spoiler} great ending`` is read as text.
    """
    for number, raw in enumerate(stream, start=1):
        line = raw.rstrip("\r\n")
        if fmt == "auto":
            fmt = "jsonl" if _json_text(line) is not None else "text"
        if fmt == "text":
            yield line
            continue
        if not line.strip():
            continue  # blank lines between JSON records carry nothing
        text = _json_text(line)
        if text is None:
            raise McdropError(f'{source}:{number}: expected a JSON object with a string field "text" (--format jsonl)')
        yield text


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _policy(args: argparse.Namespace, engine: MCEngine) -> DecisionPolicy:
    """The decision flags, range-checked as the HTTP API checks them; refused for an uncalibrated model."""
    check_decision_fields(args.max_risk, args.coverage, args.max_novelty)
    wanted = {"--max-risk": args.max_risk, "--coverage": args.coverage, "--max-novelty": args.max_novelty}
    if engine.calibration is None:
        asked = [flag for flag, value in wanted.items() if value is not None]
        if asked:
            raise InputError(
                f"{asked[0]}: model {engine.name} has no calibration; calibrate it with "
                "`mcdrop calibrate CHECKPOINT --data FILE --out DIR`"
            )
        return DecisionPolicy()
    return DecisionPolicy(
        max_risk=args.max_risk,
        coverage=DEFAULT_COVERAGE if args.coverage is None else args.coverage,
        max_novelty=engine.calibration.max_novelty if args.max_novelty is None else args.max_novelty,
    )


def _json_line(prediction: PredictionDict, model: str) -> str:
    """One output line; a NaN or infinity (which JSON cannot hold) is an error, never a line no parser reads."""
    try:
        return json.dumps(prediction, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:
        raise McdropError(
            f"model {model} produced a non-finite prediction (NaN or infinity); check its checkpoint"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mcdrop predict``."""
    engine = load_engine(args.checkpoint, device=args.device, max_batch_rows=args.max_batch_rows)
    policy = _policy(args, engine)
    n_samples = args.n_samples or engine.default_n_samples
    seed = random_seed() if args.seed is None else args.seed
    if args.seed is None:
        logger.info("no --seed given: using seed %d (pass it to reproduce this output)", seed)
    source = "<stdin>" if args.input == "-" else args.input
    try:
        stream: TextIO = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    except OSError as error:
        raise McdropError(f"cannot read input file {source}: {error.strerror}") from error
    try:
        fmt = args.format
        if fmt == "auto" and source.endswith((".jsonl", ".ndjson")):
            fmt = "jsonl"
        for batch in _batches(_read_texts(stream, source, fmt), args.batch_size):
            for prediction in engine.predict(batch, n_samples=n_samples, seed=seed, policy=policy):
                sys.stdout.write(_json_line(prediction_dict(prediction), engine.name))
    except UnicodeDecodeError as error:
        raise McdropError(f"{source}: not valid UTF-8 text ({error.reason})") from error
    finally:
        if stream is not sys.stdin:
            stream.close()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mcdrop predict``."""
    parser.add_argument("checkpoint", help="checkpoint directory (e.g. models/rt-mlp)")
    parser.add_argument(
        "--input", default="-", help="file with one text per line, or JSONL with a 'text' field; - is stdin"
    )
    parser.add_argument(
        "--format",
        choices=["auto", "text", "jsonl"],
        default="auto",
        help="text: one text per line; jsonl: a JSON object with a 'text' field per line; auto: .jsonl/.ndjson "
        "files, or a first line that is such an object, are JSONL (default)",
    )
    parser.add_argument("--n-samples", type=positive_int, default=None, help="MC samples (default: the model's)")
    parser.add_argument("--seed", type=non_negative_int, default=None, help="seed; the same seed reproduces exactly")
    parser.add_argument("--max-risk", type=float, default=None, help="decide accept/abstain at this risk (0.01-0.5)")
    parser.add_argument("--coverage", type=float, default=None, help="conformal set coverage (0.5-0.99; 0.9)")
    parser.add_argument("--max-novelty", type=float, default=None, help="abstain as novel above this (0-1; 0.99)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="texts read per engine call")
    parser.add_argument("--max-batch-rows", type=positive_int, default=4096, help="rows (texts x samples) per pass")
