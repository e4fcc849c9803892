"""The safetensors format written as a stream: the header, then each tensor's bytes, so that a
writer holds at most one tensor's copy (of one that is not contiguous or not on the CPU) beyond
the tensors themselves; safetensors' own ``save`` builds the whole file in memory first."""
from __future__ import annotations

import json
import struct
from typing import Iterator

import torch

#: torch dtype -> safetensors' name for it
_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def safetensors_chunks(tensors: dict) -> tuple[Iterator, int]:
    """The safetensors file of ``tensors`` as byte chunks (the header, then each tensor's bytes as a
    view of it, or of its one contiguous CPU copy) and its size: a file written from them never
    holds more than one tensor beyond ``tensors`` themselves."""
    header, offset = {}, 0
    for name, t in tensors.items():
        if t.dtype not in _ST_DTYPES:
            raise TypeError(f"{name}: safetensors has no {t.dtype}")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the tensors start 8-byte aligned

    def chunks():
        yield struct.pack("<Q", len(raw)) + raw
        for t in tensors.values():
            yield t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()

    return chunks(), 8 + len(raw) + offset
