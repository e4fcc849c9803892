"""Prompts for the digits text-to-image teacher: templates over the ten digit names.

Each template has one ``{digit}`` slot, filled with the digit's name ("seven") or its numeral
("7"); which of the two a template takes is part of the template. The held-out templates are
never seen in training: a student that follows them reads the digit, not the sentence.
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["DIGIT_NAMES", "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES", "digit_prompts", "prompt_words"]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: (template, form): form "name" fills in "seven", "numeral" fills in "7"
TRAIN_TEMPLATES = (
    ("a handwritten {digit}", "name"),
    ("the digit {digit}", "numeral"),
    ("the digit {digit}", "name"),
    ("a picture of the number {digit}", "name"),
    ("{digit}", "numeral"),
    ("a scanned {digit}, written by hand", "name"),
)
HELDOUT_TEMPLATES = (
    ("an image of a handwritten {digit}", "numeral"),
    ("a drawing of the number {digit}", "name"),
)


def digit_prompts(templates: Sequence[tuple[str, str]] = TRAIN_TEMPLATES) -> list[tuple[str, int]]:
    """Every (prompt, digit) pair of ``templates``, digit-major: all templates of 0, then of 1, ..."""
    out = []
    for d in range(10):
        for template, form in templates:
            if form not in ("name", "numeral"):
                raise ValueError(f"template form must be 'name' or 'numeral', got {form!r}")
            out.append((template.format(digit=DIGIT_NAMES[d] if form == "name" else str(d)), d))
    return out


def prompt_words() -> list[str]:
    """The words of every template and digit name (the tokenizer makes each one token)."""
    words = list(DIGIT_NAMES)
    for template, _ in TRAIN_TEMPLATES + HELDOUT_TEMPLATES:
        words += template.replace("{digit}", " ").replace(",", " ").split()
    return list(dict.fromkeys(words))
