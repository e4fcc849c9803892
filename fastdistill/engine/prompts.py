"""A text-to-image run's training prompts: read, checked against the run, and made by the teacher's side
(:mod:`fastdistill.teachers.prompt_cache`) into the bank the training batches draw from."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..data.prompts import read_prompts
from ..methods import ConfigError, method_class
from ..teachers.prompt_cache import prompt_bank
from ..teachers.traits import TeacherTraits


def prompts_sha256(prompts: list) -> str:
    """The content hash of a prompt list (order and text), for the run identity."""
    return hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode("utf-8")).hexdigest()


def training_conditions(cfg, teacher, t: TeacherTraits, out_dir: Path, main: bool):
    """A text-to-image teacher's training prompts (``prompts``), encoded once: the bank that the
    training batches (and the pictures, in order) draw their conditions from, and the prompts'
    hash; ``(None, None)`` for other teachers."""
    if not t.text:
        if cfg.prompts:
            raise ConfigError(f"prompts={cfg.prompts} given, but the teacher is not a text-to-image pipeline")
        return None, None
    if not cfg.prompts:
        raise ConfigError("a text-to-image teacher needs training prompts: prompts=FILE (one prompt a line, "
                          "or CSV / JSONL with a prompt column)")
    if not method_class(cfg.method.name).text_conditioning:
        raise ConfigError(f"method.name={cfg.method.name} is for pixel teachers; text-to-image teachers take "
                          f"sid, sim or dmd")
    cache = {"none": None, "auto": out_dir / "prompt_cache"}.get(cfg.prompt_cache, cfg.prompt_cache)
    prompts = read_prompts(cfg.prompts)
    bank = prompt_bank(teacher, prompts, cache, print if main else (lambda msg: None))
    return bank, prompts_sha256(prompts)
