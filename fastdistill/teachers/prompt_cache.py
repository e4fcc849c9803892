"""A pipeline teacher's prompts (:mod:`.pipelines`), encoded once and cached on disk.

The cache file is safetensors, named by a hash of what the embeddings depend on: the text
encoders' weights, the tokenizer's vocabulary, the teacher family and resolution (SDXL's time
ids), and the prompts themselves; any change is another file. The file records that key and a
checksum of its tensors: one that is unreadable, altered, written for another key, of another
count or width, or not finite is said in one line and encoded again. Writes are atomic (a
temporary file renamed into place), so an interrupted run leaves no half-written cache. After
encoding the text encoders are released: training needs only the embeddings.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..conditioning import Conditioning, ConditioningBank
from .hashing import tensors_sha256, weights_hash

__all__ = ["cache_key", "prompt_bank"]


def cache_key(teacher, prompts: list) -> str:
    guidance = getattr(teacher, "embedded_guidance", None)  # Flux-dev's guidance input is part of the encoding
    h = hashlib.sha256(json.dumps([teacher.family, teacher.resolution, prompts]
                                  + ([guidance] if guidance is not None else [])).encode())
    for enc in teacher.text_encoders:
        h.update(weights_hash(enc).encode())
    for tok in teacher.tokenizers:
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    return h.hexdigest()


def _read_cache(path: Path, key: str, n: int) -> Conditioning:
    """The cached conditioning of ``n`` prompts, or ValueError saying what is wrong with the file."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors' own error for a truncated or garbled file, or an OSError
        raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None
    if meta.get("key") != key:
        raise ValueError("written for other prompts or encoders")
    if meta.get("sha256") != tensors_sha256(tensors):
        raise ValueError("altered since it was written (checksum mismatch)")
    cond = Conditioning.from_tensors(tensors)
    if cond.batch_size != n:
        raise ValueError(f"holding {cond.batch_size} prompt embeddings, not {n}")
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point()):
        raise ValueError("holding non-finite values")
    return cond


def prompt_bank(teacher, prompts: list, cache_dir: Optional[Path],
                log: Callable[[str], None] = print) -> ConditioningBank:
    """The bank of ``prompts``' conditionings: from ``cache_dir`` when a verified entry for them
    exists, else encoded (and cached there; a damaged or mismatched entry is said in one line and
    replaced); then the teacher's text encoders are released."""
    key = cache_key(teacher, prompts)
    path = None if cache_dir is None else Path(cache_dir) / f"prompts-{key[:24]}.safetensors"
    cond = None
    if path is not None and path.is_file():
        try:
            cached = _read_cache(path, key, len(prompts))
            if cached.embeds is not None and cached.embeds.shape[-1] != int(teacher.cond_dim):
                raise ValueError(f"holding embeddings of width {cached.embeds.shape[-1]}; this teacher reads "
                                 f"{int(teacher.cond_dim)}")
            cond = cached
            log(f"fastdistill: {len(prompts)} prompt embeddings from the cache {path}")
        except ValueError as exc:
            log(f"fastdistill: the prompt cache {path} is {exc}; encoding the prompts again")
    if cond is None:
        log(f"fastdistill: encoding {len(prompts)} prompts")
        cond = teacher.encode_prompt(prompts)
        if path is not None:
            tensors = {k: v.contiguous() for k, v in cond.to_tensors().items()}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
            save_file(tensors, str(tmp), metadata={"key": key, "sha256": tensors_sha256(tensors)})
            os.replace(tmp, path)
    teacher.release_text_encoders()
    return ConditioningBank(cond)
