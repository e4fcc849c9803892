"""A small CLIP BPE tokenizer written from a word list, for teachers built here.

Every text tokenizes without unknown tokens (byte by byte at worst, as CLIP's byte-level BPE
does), and each listed word is one token, so a small text encoder sees one embedding per word.
The files are the ones transformers' ``CLIPTokenizer`` reads (vocab.json, merges.txt,
tokenizer_config.json), so diffusers pipelines load the folder like any CLIP tokenizer.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Union

__all__ = ["BOS", "EOS", "clip_vocab", "write_clip_tokenizer"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_chars() -> list[str]:
    """The byte-level alphabet CLIP's pre-tokenizer maps bytes to (GPT-2's): printable Latin-1 bytes
    stand for themselves, the other bytes for the characters from U+0100 on, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = iter(range(0x100, 0x200))
    return [chr(b) if b in kept else chr(next(shifted)) for b in range(256)]


def clip_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges): CLIP's 256 byte-level characters alone and as word ends, plus each of
    ``words`` (lower-case, no spaces) as a single token.

    Each word is built by a chain of merges over its prefixes (c a -> ca, ca t</w> -> cat</w>);
    bos/eos come last, as in CLIP, so pooling at the largest id and at the first eos agree.
    """
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in words:
        if not word or word != word.lower() or any(c.isspace() for c in word):
            raise ValueError(f"tokenizer words are lower-case and without spaces, got {word!r}")
        for i in range(2, len(word) + 1):
            left, right = word[: i - 1], word[i - 1]
            if i == len(word):
                right += "</w>"
            merge, merged = f"{left} {right}", left + right
            if merge not in merges:
                merges.append(merge)
                tokens.append(merged)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens + [BOS, EOS]))}
    return vocab, merges


def write_clip_tokenizer(folder: Union[str, os.PathLike], words: Iterable[str], model_max_length: int) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json to ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = dict(
        tokenizer_class="CLIPTokenizer", model_max_length=int(model_max_length),
        bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS, do_lower_case=True,
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder
