"""fastdistill's own teacher checkpoint format: safetensors weights + a JSON config.

Two layouts, same content:

- one file ``name.safetensors`` whose metadata holds ``format = "fastdistill.teacher"``,
  ``format_version`` and ``config`` (JSON: ``{"class_name": ..., "init_kwargs": {...}}``);
- a directory holding ``fastdistill_teacher.json`` (the config) and ``weights.safetensors``.

The config names a registered class (EDMPrecond, VPPrecond, VEPrecond, SongUNet,
DhariwalUNet, or anything added with :func:`register_teacher_class`) and the keyword
arguments that rebuild it; the weights are the module's state dict under its own names.
Saving then loading reproduces the state dict exactly (same names, shapes, dtypes, values).

This module also reads the layout of the shared test vectors: ``state.<name>`` tensors plus a
``network_kwargs`` metadata entry holding a Python dict literal (parsed with
``ast.literal_eval``, never evaluated).

Nothing is executed from a checkpoint, and a module is only returned once every tensor was
checked against the architecture (names and shapes), so a failed load leaves nothing behind.
"""
from __future__ import annotations

import ast
import json
import math
import os
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from .networks import NETWORK_CLASSES
from .precond import PRECOND_CLASSES

__all__ = [
    "CheckpointError",
    "TEACHER_CLASSES",
    "register_teacher_class",
    "build_teacher",
    "load_state_dict_checked",
    "save_teacher",
    "load_teacher_checkpoint",
    "load_safetensors_teacher",
    "is_fastdistill_checkpoint_dir",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
]

FORMAT_NAME = "fastdistill.teacher"
FORMAT_VERSION = 1
CONFIG_NAME = "fastdistill_teacher.json"
WEIGHTS_NAME = "weights.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint could not be read: corrupt, wrong type, unsafe, or not fitting the network."""


TEACHER_CLASSES: Dict[str, type] = {**PRECOND_CLASSES, **NETWORK_CLASSES}


def register_teacher_class(cls: type, name: Optional[str] = None) -> type:
    """Make ``cls`` savable/loadable by name. Instances must carry ``init_kwargs`` (a
    JSON-able dict) that rebuilds them via ``cls(**init_kwargs)``. Usable as a decorator."""
    TEACHER_CLASSES[name or cls.__name__] = cls
    return cls


def build_teacher(class_name: str, init_kwargs: Mapping[str, Any], source: str = "checkpoint") -> nn.Module:
    """Instantiate a registered teacher class from its recorded keyword arguments."""
    if class_name not in TEACHER_CLASSES:
        raise CheckpointError(f"{source}: unknown network class {class_name!r}; "
                              f"known classes: {sorted(TEACHER_CLASSES)}")
    try:
        return TEACHER_CLASSES[class_name](**dict(init_kwargs))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: cannot build {class_name} from the recorded arguments "
                              f"{dict(init_kwargs)!r}: {e}") from e


def _fmt_list(items, limit=8):
    items = list(items)
    text = ", ".join(items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items)} in all)"
    return text


def load_state_dict_checked(module: nn.Module, state_dict: Mapping[str, torch.Tensor],
                            source: str = "checkpoint") -> nn.Module:
    """``module.load_state_dict(state_dict, strict=True)`` after checking every name and shape
    first, so that a mismatch raises a :class:`CheckpointError` naming the offending tensors
    before anything is copied."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    bad_shape = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs network {tuple(own[k].shape)}"
                 for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    not_tensor = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_fmt_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_fmt_list(unexpected)}")
    if bad_shape:
        problems.append(f"shape mismatch: {_fmt_list(bad_shape, 5)}")
    if not_tensor:
        problems.append(f"not tensors: {_fmt_list(not_tensor)}")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit {type(module).__name__} "
                              f"({'; '.join(problems)})")
    module.load_state_dict(state_dict, strict=True)
    return module


# ---------------------------------------------------------------------------------------
# JSON config with exact float round trip (inf / nan encoded explicitly).

def _encode(obj):
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return {"__float__": repr(float(obj))}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if isinstance(obj, Mapping):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise TypeError(f"config keys must be strings, got {bad!r}")
        return {k: _encode(v) for k, v in obj.items()}
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _encode(obj.item())
    raise TypeError(f"cannot store {type(obj).__name__} value {obj!r} in a JSON config")


def decode_init_kwargs(obj):
    """Inverse of the JSON encoding of init kwargs (non-finite floats are stored as ``{"__float__": ...}``)."""
    if isinstance(obj, list):
        return [decode_init_kwargs(v) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        return {k: decode_init_kwargs(v) for k, v in obj.items()}
    return obj


def teacher_config(module: nn.Module) -> dict:
    """The JSON-able config that rebuilds ``module``."""
    name = type(module).__name__
    if TEACHER_CLASSES.get(name) is not type(module):
        raise TypeError(f"save_teacher: {name} is not a registered teacher class "
                        f"(known: {sorted(TEACHER_CLASSES)}; see register_teacher_class)")
    kwargs = getattr(module, "init_kwargs", None)
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"save_teacher: {name} instance has no init_kwargs dict")
    return {"class_name": name, "init_kwargs": _encode(dict(kwargs))}


def _state_for_saving(module: nn.Module) -> Dict[str, torch.Tensor]:
    """CPU, contiguous tensors; tensors sharing memory are cloned (safetensors refuses aliases)."""
    out = {}
    seen_ptrs = set()
    for k, v in module.state_dict().items():
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen_ptrs and t.numel() > 0:
            t = t.clone()
        seen_ptrs.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def _atomic_save_file(tensors, path, metadata):
    from safetensors.torch import save_file

    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".safetensors", dir=d)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        # mkstemp creates the file 0600; give it the mode a plain open() would (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_teacher(module: nn.Module, path: "str | os.PathLike", extra: Optional[Mapping[str, Any]] = None) -> str:
    """Save ``module`` in fastdistill's format. ``path`` ending in ``.safetensors`` gives one
    file; any other path is a directory (created) with ``fastdistill_teacher.json`` and
    ``weights.safetensors``. ``extra`` is stored under ``config["extra"]`` (JSON-able).
    Returns the path written."""
    path = os.fspath(path)
    config = teacher_config(module)
    config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config}
    if extra is not None:
        config["extra"] = _encode(dict(extra))
    tensors = _state_for_saving(module)
    text = json.dumps(config, allow_nan=False, indent=1, sort_keys=True)
    if path.endswith(".safetensors"):
        meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "config": text}
        _atomic_save_file(tensors, path, meta)
    else:
        os.makedirs(path, exist_ok=True)
        _atomic_save_file(tensors, os.path.join(path, WEIGHTS_NAME),
                          {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)})
        tmp = os.path.join(path, CONFIG_NAME + ".tmp")
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, os.path.join(path, CONFIG_NAME))
    return path


# ---------------------------------------------------------------------------------------
# Loading.

def _read_safetensors(path: str, with_tensors: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The tensors (none with ``with_tensors=False``) and the metadata of a safetensors file, with clear errors."""
    try:
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover - safetensors is a dependency
        raise CheckpointError("reading .safetensors needs the 'safetensors' package") from e
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except FileNotFoundError:
        raise
    except Exception as e:  # SafetensorError and friends
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from e
    return tensors, meta


def _parse_config(text: str, source: str) -> dict:
    try:
        config = decode_init_kwargs(json.loads(text))
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{source}: config is not valid JSON: {e}") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{source}: config does not describe a fastdistill teacher "
                              f"(format {config.get('format') if isinstance(config, dict) else None!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{source}: format_version {version!r} is not supported "
                              f"(this fastdistill reads up to {FORMAT_VERSION})")
    if not isinstance(config.get("class_name"), str) or not isinstance(config.get("init_kwargs"), dict):
        raise CheckpointError(f"{source}: config lacks class_name / init_kwargs")
    return config


def read_teacher_extra(path: "str | os.PathLike") -> dict:
    """The ``extra`` record :func:`save_teacher` stored with a safetensors teacher (``{}`` if none)."""
    _, meta = _read_safetensors(os.fspath(path), with_tensors=False)
    if "config" not in meta:
        return {}
    return _parse_config(meta["config"], os.fspath(path)).get("extra", {}) or {}


def _finish(module: nn.Module, device) -> nn.Module:
    return module.to(device).eval().requires_grad_(False)


def _from_config(config: dict, tensors: Dict[str, torch.Tensor], source: str, device) -> nn.Module:
    module = build_teacher(config["class_name"], config["init_kwargs"], source)
    load_state_dict_checked(module, tensors, source)
    return _finish(module, device)


def is_fastdistill_checkpoint_dir(path: "str | os.PathLike") -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), CONFIG_NAME))


def load_teacher_checkpoint(path: "str | os.PathLike", device="cpu") -> nn.Module:
    """Load a checkpoint written by :func:`save_teacher` (file or directory)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        cfg_path = os.path.join(path, CONFIG_NAME)
        w_path = os.path.join(path, WEIGHTS_NAME)
        for p in (cfg_path, w_path):
            if not os.path.isfile(p):
                raise CheckpointError(f"{path}: not a fastdistill teacher directory ({os.path.basename(p)} missing)")
        with open(cfg_path) as f:
            config = _parse_config(f.read(), cfg_path)
        tensors, _ = _read_safetensors(w_path)
        return _from_config(config, tensors, path, device)
    return load_safetensors_teacher(path, device)


def load_safetensors_teacher(path: "str | os.PathLike", device="cpu") -> nn.Module:
    """Load a single ``.safetensors`` teacher: fastdistill's format (``config`` metadata) or
    the shared test-vector layout (``state.*`` tensors + ``network_kwargs`` metadata)."""
    path = os.fspath(path)
    tensors, meta = _read_safetensors(path)
    if meta.get("format") == FORMAT_NAME and "config" in meta:
        config = _parse_config(meta["config"], path)
        return _from_config(config, tensors, path, device)
    if "network_kwargs" in meta:
        try:
            kwargs = ast.literal_eval(meta["network_kwargs"])
        except (ValueError, SyntaxError) as e:
            raise CheckpointError(f"{path}: network_kwargs metadata is not a Python literal: {e}") from e
        if not isinstance(kwargs, dict) or not isinstance(kwargs.get("class_name"), str):
            raise CheckpointError(f"{path}: network_kwargs metadata must be a dict with class_name")
        kwargs = dict(kwargs)
        class_name = kwargs.pop("class_name").rsplit(".", 1)[-1]
        state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
        if not state:
            raise CheckpointError(f"{path}: no 'state.*' tensors found")
        module = build_teacher(class_name, kwargs, path)
        load_state_dict_checked(module, state, path)
        return _finish(module, device)
    raise CheckpointError(
        f"{path}: safetensors file has no teacher description (neither fastdistill 'config' nor "
        f"'network_kwargs' metadata); it holds only weights. Build the network yourself and use "
        f"load_state_dict, or save it with fastdistill.teachers.save_teacher.")
