"""Prompt lists for text-to-image distillation, read by `read_prompts(path)` from UTF-8 files:
.csv: a header row and a "prompt", "caption" or "text" column; .jsonl: one object per line
with a "prompt", "caption" or "text" string; anything else: one prompt per line. Blank prompts are skipped.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Union

__all__ = ["read_prompts", "PROMPT_FIELDS"]

PROMPT_FIELDS = ("prompt", "caption", "text")  # in order of preference


def read_prompts(path: Union[str, os.PathLike]) -> list[str]:
    """The prompts in `path`, whitespace-stripped, in file order.

    Errors name the file (and the line, where one is at fault), so a bad prompt file fails
    before a run starts rather than part way through it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such prompt file")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a prompt file (.txt, .csv or .jsonl)")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        raise ValueError(f"{path}: .json is not supported; write one JSON object per line as .jsonl")
    reader = {".csv": _read_csv, ".jsonl": _read_jsonl}.get(suffix, _read_lines)
    prompts = [p.strip() for p in reader(text, path)]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"{path}: no prompts found (the file is empty or blank)")
    return prompts


def _read_lines(text: str, path: Path) -> list[str]:
    return text.split("\n")  # not splitlines(): prompts may hold form feeds or U+2028


def _read_csv(text: str, path: Path) -> list[str]:
    try:
        return _csv_column(csv.reader(io.StringIO(text, newline=""), skipinitialspace=True), path)
    except csv.Error as e:
        raise ValueError(f"{path}: malformed CSV ({e})") from None


def _csv_column(rows, path: Path) -> list[str]:
    header = next(rows, None)
    if not header:
        return []
    names = [h.strip().lower() for h in header]
    column = next((names.index(f) for f in PROMPT_FIELDS if f in names), None)
    if column is None:
        raise ValueError(f"{path}: no prompt column; expected one of {', '.join(PROMPT_FIELDS)}, found {header}")
    prompts = []
    for row in rows:
        if not row:  # a blank line
            continue
        if column >= len(row):
            raise ValueError(f"{path}:{rows.line_num}: row has {len(row)} fields, no {header[column]!r} value")
        prompts.append(row[column])
    return prompts


def _read_jsonl(text: str, path: Path) -> list[str]:
    prompts = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        field = next((f for f in PROMPT_FIELDS if f in record), None)
        if field is None:
            raise ValueError(f"{path}:{lineno}: no {' / '.join(PROMPT_FIELDS)} field (keys: {sorted(record)})")
        if not isinstance(record[field], str):
            raise ValueError(f"{path}:{lineno}: {field!r} is {type(record[field]).__name__}, expected a string")
        prompts.append(record[field])
    return prompts
