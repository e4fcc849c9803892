"""``load_teacher(spec)``: the one place a teacher is resolved from a name or a path.

- ``"digits"``: the digits teacher shipped with the package (unless a file of that name exists);
- ``"digits-t2i"``: the digits text-to-image pipeline shipped with the package (a Stable
  Diffusion folder, :mod:`.digits_t2i`; needs diffusers);
- ``"analytic:NAME"``: an exact Gaussian-mixture teacher, named like the datasets it equals
  (``analytic:8gaussians``, ``analytic:25gaussians``, ``analytic:ring64``, ...);
- a path, dispatched on what it *is* (content first, extension only for messages):

- a file starting like a pickle (``b'\\x80'``): an EDM / SiD network pickle, read by the
  restricted unpickler of :mod:`.edm_pickle` (its ``ema`` entry);
- a safetensors file: fastdistill's format, or the test-vector layout (``state.*`` +
  ``network_kwargs``), see :mod:`.checkpoint`;
- a directory with ``fastdistill_teacher.json``: fastdistill's directory format;
- a directory that looks like a diffusers model/pipeline (``model_index.json``,
  ``config.json``, ``unet/``): a text-to-image pipeline by
  :func:`fastdistill.teachers.pipelines.load_pipeline_teacher`, a ``UNet2DModel`` by
  :func:`fastdistill.teachers.diffusers_adapter.load_diffusers_teacher`.

The result is an ``nn.Module`` satisfying the Denoiser protocol, in eval mode with
``requires_grad=False`` (a frozen teacher; copy it and re-enable gradients for a generator).
"""
from __future__ import annotations

import os
import struct
from typing import Callable

from torch import nn

from .checkpoint import CheckpointError, is_fastdistill_checkpoint_dir
from .digits_t2i import digits_t2i_path
from .families import checkpoint_family, named_family
from .families.analytic import ANALYTIC_PREFIX
from .pipelines import is_pipeline_folder, load_pipeline_teacher

__all__ = ["load_teacher", "sniff_format", "ANALYTIC_PREFIX"]


def _looks_like_safetensors(head: bytes, file_size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= file_size - 8 and head[8:9] == b"{"


def sniff_format(path: "str | os.PathLike") -> str:
    """``'edm_pickle' | 'safetensors' | 'fastdistill_dir' | 'diffusers_pipeline' | 'diffusers_model'``; raises
    :class:`CheckpointError` for anything else (with what the file appears to be)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    if os.path.isdir(path):
        if is_fastdistill_checkpoint_dir(path):
            return "fastdistill_dir"
        names = set(os.listdir(path))
        if is_pipeline_folder(path):
            return "diffusers_pipeline"
        if names & {"model_index.json", "config.json"} or os.path.isdir(os.path.join(path, "unet")):
            return "diffusers_model"
        raise CheckpointError(f"{path}: directory is neither a fastdistill teacher "
                              f"(fastdistill_teacher.json) nor a diffusers model (config.json / "
                              f"model_index.json)")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        raise CheckpointError(f"{path}: file is empty")
    # safetensors first: its little-endian header length may itself start with byte 0x80.
    if _looks_like_safetensors(head, size):
        return "safetensors"
    if head[:1] == b"\x80" and (size < 2 or head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "edm_pickle"  # (a 1-byte file is reported as a truncated pickle by the loader)
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes "
                              f"announced, file has {size} bytes)")
    if head.startswith(b"PK\x03\x04"):
        what = "a zip archive (torch.save / .pt checkpoint?)"
    elif head.startswith(b"\x89PNG"):
        what = "a PNG image"
    elif head.startswith(b"\x89HDF"):
        what = "an HDF5 file"
    elif head.lstrip()[:1] in (b"{", b"["):
        what = "a JSON/text file"
    else:
        what = f"an unknown format (starts with {head[:8]!r})"
    raise CheckpointError(
        f"{path}: cannot load a teacher from {what}; supported: EDM/SiD network pickles (.pkl), "
        f"safetensors teachers (.safetensors), fastdistill or diffusers directories")


def _library_errors() -> tuple[type, ...]:
    """What diffusers, transformers and safetensors raise for a broken or refused file in a model
    folder (a missing or mislabelled weights file, a lying safetensors header, a pickled ``.bin``
    that torch's weights-only loader refuses, an unreadable config)."""
    errors: list[type] = [OSError, OverflowError, UnicodeDecodeError, RecursionError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:
        pass
    return tuple(errors)


def _innermost_message(exc: BaseException) -> str:
    """The outer message, and the first cause's when it says more (diffusers wraps the real reason)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    while cause is not None and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text += f" ({type(cause).__name__}: {' '.join(str(cause).split())})"
    return text


def _load_diffusers(load: Callable[[], nn.Module], path: str) -> nn.Module:
    """``load()`` of a diffusers folder; what the libraries raise for a broken one becomes one
    :class:`CheckpointError` naming it."""
    try:
        return load()
    except (FileNotFoundError, PermissionError):
        raise  # our own checks, and the OS's, already name the file
    except ImportError as e:
        raise CheckpointError(f"{path}: looks like a diffusers model, but the diffusers adapter or diffusers itself "
                              f"is not available ({_innermost_message(e)})") from e
    except _library_errors() as exc:
        raise CheckpointError(f"teacher {path} could not be loaded: {_innermost_message(exc)}") from exc


DIGITS_T2I = "digits-t2i"


def teacher_location(spec: "str | os.PathLike") -> str:
    """The path ``spec`` stands for: the shipped pipeline folder for ``"digits-t2i"`` (unless a
    file of that name exists), ``spec`` itself otherwise."""
    path = os.fspath(spec)
    if path == DIGITS_T2I and not os.path.exists(path):
        return str(digits_t2i_path())
    return path


def load_teacher(spec: "str | os.PathLike", device="cpu", resolution: "int | None" = None) -> nn.Module:
    """The teacher denoiser ``spec`` names (see the module docstring for what is accepted).
    ``resolution``: the image side in pixels of a text-to-image pipeline (default: its own)."""
    path = teacher_location(spec)
    if resolution is not None and not os.path.isdir(path):
        raise ValueError(f"teacher {path!r}: a resolution is chosen only for text-to-image pipeline folders")
    family = named_family(path)
    if family is not None:
        return family.load(path, device)
    if not os.path.exists(path):
        raise FileNotFoundError(f"teacher {path!r}: no such file or directory (use 'digits' for the shipped digits "
                                f"teacher, 'digits-t2i' for the shipped text-to-image one, analytic:NAME for an exact toy teacher, or a checkpoint path)")
    kind = sniff_format(path)
    if kind == "diffusers_pipeline":  # a text-to-image family, found by its pipeline class
        return _load_diffusers(lambda: load_pipeline_teacher(path, device=device, resolution=resolution), path)
    if resolution is not None:
        raise ValueError(f"{path}: a resolution is chosen only for text-to-image pipelines")
    family = checkpoint_family(kind)
    if kind.startswith("diffusers"):
        return _load_diffusers(lambda: family.load(path, device), path)
    return family.load(path, device)
