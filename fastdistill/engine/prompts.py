"""A text-to-image run's training prompts, encoded once and cached on disk.

The cache file is safetensors, named by a hash of what the embeddings depend on: the text
encoders' weights, the tokenizer's vocabulary, the teacher family and resolution (SDXL's time
ids), and the prompts themselves; any change is another file. Writes are atomic (a temporary
file renamed into place), so an interrupted run leaves no half-written cache. After encoding the
text encoders are released: training needs only the embeddings.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

from safetensors.torch import load_file, save_file

from ..conditioning import Conditioning
from .identity import weights_hash


def cache_key(teacher, prompts: list) -> str:
    guidance = getattr(teacher, "embedded_guidance", None)  # Flux-dev's guidance input is part of the encoding
    h = hashlib.sha256(json.dumps([teacher.family, teacher.resolution, prompts]
                                  + ([guidance] if guidance is not None else [])).encode())
    for enc in teacher.text_encoders:
        h.update(weights_hash(enc).encode())
    for tok in teacher.tokenizers:
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    return h.hexdigest()


def encoded_prompts(teacher, prompts: list, cache_dir: Optional[Path],
                    log: Callable[[str], None] = print) -> Conditioning:
    """The conditioning of ``prompts``: from ``cache_dir`` when an entry for them exists, else encoded
    (and cached there); then the teacher's text encoders are released."""
    path = None if cache_dir is None else Path(cache_dir) / f"prompts-{cache_key(teacher, prompts)[:24]}.safetensors"
    if path is not None and path.is_file():
        cond = Conditioning.from_tensors(load_file(str(path)))
        if cond.batch_size != len(prompts):
            raise ValueError(f"{path}: holds {cond.batch_size} prompt embeddings, expected {len(prompts)}; delete it")
        log(f"fastdistill: {len(prompts)} prompt embeddings from the cache {path}")
    else:
        log(f"fastdistill: encoding {len(prompts)} prompts")
        cond = teacher.encode_prompt(prompts)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
            save_file({k: v.contiguous() for k, v in cond.to_tensors().items()}, str(tmp))
            os.replace(tmp, path)
    teacher.release_text_encoders()
    return cond
