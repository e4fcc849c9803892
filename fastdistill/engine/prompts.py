"""A text-to-image run's training prompts: read and checked against the run (the teacher's side,
:mod:`fastdistill.teachers.prompt_cache`, makes them into the bank the training batches draw from)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from ..data.prompts import read_prompts
from ..methods import ConfigError, method_class


def prompts_sha256(prompts: list) -> str:
    """The content hash of a prompt list (order and text), for the run identity."""
    return hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode("utf-8")).hexdigest()


def training_prompts(cfg) -> Optional[list]:
    """The run's training prompts (``prompts``), read and checked against the method before any
    teacher is loaded; None without them."""
    if not cfg.prompts:
        return None
    if not method_class(cfg.method.name).text_conditioning:
        raise ConfigError(f"method.name={cfg.method.name} is for pixel teachers; text-to-image teachers take "
                          f"sid, sim or dmd")
    return read_prompts(cfg.prompts)


def prompt_cache_dir(cfg, out_dir: Path) -> Optional[Path]:
    """Where the prompt embeddings are cached (``prompt_cache``: none, auto = the run's folder, or a path)."""
    return {"none": None, "auto": out_dir / "prompt_cache"}.get(cfg.prompt_cache, cfg.prompt_cache)
