"""Labelled text files: CSV, TSV or JSONL with a text column and a label column (any number of labels).

``read_labelled_rows(path, text_column, label_column, label_names)`` returns the texts, their label ids and the
label names (:func:`mcdrop.training.data.read_labelled_file` makes a ``Dataset`` of them); every problem (missing
file or column, bad encoding, empty label, unknown label) is a :class:`~mcdrop.core.errors.DatasetError` naming the
file and the column or row.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mcdrop.core.errors import DatasetError

logger = logging.getLogger(__name__)

_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


def read_labelled_rows(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Read a CSV, TSV or JSONL file of labelled texts: (texts, label ids, label names).

    ``label_names`` fixes the label order (e.g. a checkpoint's labels); without it the distinct labels found are
    sorted. Rows with an empty text are skipped; an empty label is an error naming the row.
    """
    file = Path(path)
    records = _read_records(file)
    if not records:
        raise DatasetError(f"{file}: no rows found; the file needs a header and at least two labelled rows")
    _check_columns(file, records[0].keys(), {text_column: "--text-column", label_column: "--label-column"})
    texts, raw_labels = _extract(file, records, text_column, label_column)
    names = tuple(label_names) if label_names is not None else tuple(sorted(set(raw_labels)))
    if label_names is None and len(names) < 2:
        raise DatasetError(
            f"{file}: column {label_column!r} has {len(names)} distinct label(s) {list(names)}; "
            f"a classifier needs at least two (check --label-column)"
        )
    label_id = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(raw_labels) - set(label_id))
    if unknown:
        raise DatasetError(
            f"{file}: column {label_column!r} has labels {unknown[:5]} that the model does not know "
            f"(known: {list(names)})"
        )
    return texts, [label_id[label] for label in raw_labels], names


def _read_records(file: Path) -> list[dict[str, Any]]:
    if not file.is_file():
        raise DatasetError(f"{file}: no such file; pass --data rt or the path of a CSV, TSV or JSONL file")
    suffix = file.suffix.lower()
    try:
        if suffix in _JSONL_SUFFIXES:
            return _read_jsonl(file)
        if suffix in _DELIMITERS:
            with file.open(encoding="utf-8", newline="") as handle:
                return list(csv.DictReader(handle, delimiter=_DELIMITERS[suffix]))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DatasetError(f"{file}: malformed {suffix[1:].upper()} ({exc})") from None
    raise DatasetError(f"{file}: unknown file type {suffix!r}; use .csv, .tsv or .jsonl")


def _read_jsonl(file: Path) -> list[dict[str, Any]]:
    records = []
    with file.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{file}: line {line_no} is not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{file}: line {line_no} is not a JSON object")
            records.append(record)
    return records


def _check_columns(file: Path, present: Iterable[str], wanted: dict[str, str]) -> None:
    """``wanted`` maps each required column to the flag that chooses it."""
    columns = [c for c in present if c is not None]
    for column, flag in wanted.items():
        if column not in columns:
            raise DatasetError(f"{file}: no column {column!r} (columns: {columns}); choose one with {flag}")


def _extract(
    file: Path, records: Sequence[dict[str, Any]], text_column: str, label_column: str
) -> tuple[list[str], list[str]]:
    texts, labels, skipped = [], [], 0
    for row_no, record in enumerate(records, start=1):
        text, label = record.get(text_column), record.get(label_column)
        if text is None or not str(text).strip():
            skipped += 1
            continue
        if label is None or not str(label).strip():
            raise DatasetError(f"{file}: row {row_no} has an empty {label_column!r}; every text needs a label")
        texts.append(str(text).strip())
        labels.append(str(label).strip())
    if skipped:
        logger.warning("%s: skipped %d rows with an empty %r", file, skipped, text_column)
    return texts, labels
