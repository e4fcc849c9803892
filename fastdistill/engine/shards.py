"""Sharded checkpoint tensors (``distributed.strategy=fsdp``): torch.distributed.checkpoint (DCP)
directories read without executing anything from them.

DCP's own reader unpickles ``.metadata`` with plain ``pickle`` and its planner loads every
non-tensor entry with ``torch.load(weights_only=False)``: both run whatever code a planted file
names. :class:`SafeShardReader` reads the metadata through an unpickler that builds only DCP's
metadata classes, ``torch.Size``, dtypes, layouts and paths, and :class:`SafeLoadPlanner` reads
the non-tensor entries (Adam's param groups) with ``weights_only=True``. Every read here goes
through both.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo

from .checkpoint import CheckpointCorruptError

__all__ = ["SHARDS_DIR", "UnsafeShardsError", "SafeShardReader", "SafeLoadPlanner", "load_shards",
           "read_shards"]

SHARDS_DIR = "shards"

_ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
            ("pathlib", "PurePosixPath"), ("collections", "OrderedDict"),
            ("torch.distributed.checkpoint.filesystem", "_StorageInfo")}


class UnsafeShardsError(pickle.UnpicklingError):
    """A shard metadata file names something other than DCP's own metadata classes."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == dcp_metadata.__name__:
            obj = getattr(dcp_metadata, name, None)
            if (isinstance(obj, type) and obj.__module__ == module) or name == "_MEM_FORMAT_ENCODING":
                return obj
        raise UnsafeShardsError(f"shard metadata names {module}.{name}, which a DCP checkpoint never holds")


def _load_metadata(data: bytes) -> dcp_metadata.Metadata:
    meta = _MetadataUnpickler(io.BytesIO(data)).load()
    if not isinstance(meta, dcp_metadata.Metadata) or not isinstance(meta.storage_data, dict) or not all(
            isinstance(v, _StorageInfo) for v in meta.storage_data.values()):
        raise UnsafeShardsError("shard metadata is not a DCP Metadata record")
    return meta


class SafeShardReader(FileSystemReader):
    """DCP's file reader with the metadata read by :class:`_MetadataUnpickler`."""

    def read_metadata(self, *args, **kwargs) -> dcp_metadata.Metadata:
        rank = kwargs.get("rank")
        path = self._get_metadata_path(rank)
        with self.fs.create_stream(path, "rb") as f:
            meta = _load_metadata(f.read())
        if getattr(meta, "storage_meta", None) is None:
            meta.storage_meta = dcp_metadata.StorageMeta()
        meta.storage_meta.load_id = self.load_id
        return meta


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, with non-tensor entries read as weights only."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        # read as weights only, then hand the planner bytes of our own making (safe for its plain load)
        safe = io.BytesIO()
        torch.save(torch.load(value, weights_only=True), safe)
        safe.seek(0)
        super().load_bytes(read_item, safe)


def load_shards(state_dict: dict, checkpoint, *, no_dist: bool = False) -> None:
    """Fill ``state_dict`` in place from ``<checkpoint>/shards`` (collective unless ``no_dist``);
    a metadata file naming anything but DCP's records raises :class:`CheckpointCorruptError`."""
    shards = Path(checkpoint) / SHARDS_DIR
    try:
        dcp.load(state_dict, storage_reader=SafeShardReader(str(shards)), planner=SafeLoadPlanner(), no_dist=no_dist)
    except (pickle.UnpicklingError, dcp.CheckpointException) as exc:  # the latter: DCP's wrapper on every rank
        raise CheckpointCorruptError(checkpoint, SHARDS_DIR, f"is refused ({exc})") from exc


def read_shards(checkpoint, prefix: str) -> dict[str, torch.Tensor]:
    """The whole tensors of one entry (``ema``, ``generator`` or ``fake``) of a sharded checkpoint,
    assembled in this process from every rank's shards (no process group), keyed as the network's
    ``state_dict``. Verify the checkpoint first (its ``state.json`` must say it is sharded)."""
    shards = Path(checkpoint) / SHARDS_DIR
    try:
        meta = SafeShardReader(str(shards)).read_metadata().state_dict_metadata
    except pickle.UnpicklingError as exc:
        raise CheckpointCorruptError(checkpoint, f"{SHARDS_DIR}/.metadata", f"is refused ({exc})") from exc
    except (OSError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointCorruptError(checkpoint, f"{SHARDS_DIR}/.metadata", f"is unreadable ({exc})") from exc
    start = prefix + "."
    whole = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
             if k.startswith(start) and isinstance(m, dcp_metadata.TensorStorageMetadata)}
    if not whole:
        raise CheckpointCorruptError(checkpoint, SHARDS_DIR, f"holds no {prefix} tensors")
    load_shards(whole, checkpoint, no_dist=True)
    return {k[len(start):]: v for k, v in whole.items()}
