"""Read NVIDIA EDM / SiD network pickles without their code and without executing the file.

EDM and SiD save ``pickle.dump(dict(ema=net, ...))`` where every network class is an EDM
"persistent" class: the pickle rebuilds each object through
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, ``meta`` holding the class
name, the *source code of its module* (which EDM would exec) and the object's ``__dict__``
(``_init_args``, ``_init_kwargs``, ``_parameters``, ``_buffers``, ``_modules``, ...).

This loader uses a restricted unpickler:

- ``find_class`` admits only an explicit list of ``(module, name)`` pairs (exact match) and
  maps each to a harmless function of ours; anything else raises
  :class:`UnsafeCheckpointError` naming ``module.name`` before it is imported;
- the persistence hook returns an inert record (``module_src`` is never looked at);
- tensors are rebuilt from storages that ``torch.load(weights_only=True)`` decodes from the
  embedded byte strings; numpy scalars (EDM stores ``np.sqrt(...)`` init arguments) are
  decoded with ``struct``; ``persistent_load`` is refused;
- object construction opcodes (``NEWOBJ``, ``BUILD``, ``INST``, ``OBJ``) only act on our own
  inert record types.

The network is then rebuilt as *our* class (:mod:`.precond`, :mod:`.networks`) from the
recorded class name and constructor arguments, its structure is checked against the
records (class of every submodule) and the weights are loaded with ``strict=True``.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict

import torch
from torch import nn

from .checkpoint import CheckpointError, TEACHER_CLASSES, build_teacher, load_state_dict_checked
from .networks import NETWORK_CLASSES
from .precond import PRECOND_CLASSES

__all__ = [
    "UnsafeCheckpointError",
    "EDMObjectData",
    "read_edm_pickle",
    "load_edm_pickle",
    "EDM_LAYER_CLASSES",
]


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The pickle asks for something outside the whitelist (possibly malicious)."""


# EDM persistent classes that may appear inside a network, with the class of ours that
# stands at the same place in the module tree.
EDM_LAYER_CLASSES = {
    "Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding",
}
EDM_NETWORK_CLASSES = set(PRECOND_CLASSES) | set(NETWORK_CLASSES)
# Persistent classes of EDM/SiD that are not networks; returned as plain data.
EDM_DATA_CLASSES = {"EDMLoss", "VPLoss", "VELoss", "AugmentPipe", "SID_EDMLoss", "SID_Loss"}


# ---------------------------------------------------------------------------------------
# Inert stand-ins produced while unpickling.

class _PersistentRecord:
    """What ``_reconstruct_persistent_obj`` yields: the class name and recorded state."""

    __slots__ = ("class_name", "state", "version")

    def __init__(self, class_name: str, state: dict, version):
        self.class_name = class_name
        self.state = state
        self.version = version

    def __repr__(self):
        return f"<EDM persistent {self.class_name}>"


class _TorchModuleRecord:
    """A plain torch container (``ModuleDict`` ...) created by NEWOBJ + BUILD."""

    torch_class = "?"

    def __init__(self):  # never called by the unpickler (NEWOBJ uses __new__)
        self.state = {}

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise UnsafeCheckpointError(f"{self.torch_class}: unexpected state of type {type(state).__name__}")
        self.state = state

    def __repr__(self):
        return f"<torch {self.torch_class}>"


def _container_record(name: str) -> type:
    return type(f"_{name}Record", (_TorchModuleRecord,), {"torch_class": name, "__slots__": ()})


_TORCH_CONTAINERS = {
    ("torch.nn.modules.container", n): _container_record(n)
    for n in ("ModuleDict", "ModuleList", "Sequential")
}


class _EasyDictData(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict subclass): kept as a plain dict."""


class _NumpyDType:
    """Stand-in for ``numpy.dtype`` supporting the fixed-size numeric scalar kinds."""

    _CODES = {"f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
              "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?"}

    def __init__(self, code, align=False, copy=True):
        if not isinstance(code, str) or code not in self._CODES:
            raise UnsafeCheckpointError(f"numpy.dtype({code!r}) is not a supported numeric scalar type")
        self.code = code
        self.byteorder = "<"

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise UnsafeCheckpointError(f"numpy.dtype: unexpected state {state!r}")
        self.byteorder = "<" if state[1] in ("|", "=") else state[1]


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, (bytes, bytearray)):
        raise UnsafeCheckpointError("numpy scalar: only numeric dtypes with raw bytes are accepted")
    fmt = dtype.byteorder + dtype._CODES[dtype.code]
    if struct.calcsize(fmt) != len(data):
        raise CheckpointError(f"numpy scalar: {len(data)} bytes for dtype {dtype.code}")
    (value,) = struct.unpack(fmt, bytes(data))
    return value


# ---------------------------------------------------------------------------------------
# Safe versions of the callables a pickled tensor refers to.

def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict):
        raise CheckpointError("persistent object: meta is not a dict")
    if meta.get("type") != "class":
        raise UnsafeCheckpointError(f"persistent object of type {meta.get('type')!r}: only "
                                    "persistent classes are supported")
    class_name = meta.get("class_name")
    state = meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise CheckpointError("persistent object: class_name/state missing")
    # meta["module_src"] is deliberately ignored: it is code, and we never run it.
    return _PersistentRecord(class_name, state, meta.get("version"))


_STORAGE_TYPES = (torch.UntypedStorage, torch.storage.TypedStorage)


def _load_from_bytes(data):
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafeCheckpointError("torch.storage._load_from_bytes: argument is not bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(f"embedded tensor storage refused by torch's weights-only loader: {e}") from e
    except Exception as e:
        raise CheckpointError(f"embedded tensor storage is corrupt: {type(e).__name__}: {e}") from e
    if not isinstance(obj, _STORAGE_TYPES):
        raise UnsafeCheckpointError(f"embedded storage decoded to {type(obj).__name__}, not a storage")
    return obj


def _check_ints(name, v):
    if not isinstance(v, (tuple, list, torch.Size)) or not all(isinstance(i, int) and i >= 0 for i in v):
        raise CheckpointError(f"tensor rebuild: bad {name} {v!r}")
    return tuple(v)


def _check_hooks(hooks):
    if hooks is not None and (not isinstance(hooks, dict) or len(hooks) != 0):
        raise UnsafeCheckpointError("tensor rebuild: backward hooks are not allowed in a checkpoint")


def _tensor_from_storage(storage, offset, size, stride, dtype=None):
    if not isinstance(storage, _STORAGE_TYPES):
        raise UnsafeCheckpointError(f"tensor rebuild: {type(storage).__name__} is not a storage")
    if not isinstance(offset, int) or offset < 0:
        raise CheckpointError(f"tensor rebuild: bad storage offset {offset!r}")
    size, stride = _check_ints("size", size), _check_ints("stride", stride)
    if len(size) != len(stride):
        raise CheckpointError("tensor rebuild: size and stride differ in length")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(storage, torch.storage.TypedStorage):
            dtype = storage.dtype if dtype is None else dtype
            storage = storage._untyped_storage
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError("tensor rebuild: dtype unknown")
        # Tensor.set_ does not bounds-check: make sure every element lies inside the storage.
        if all(n > 0 for n in size):
            itemsize = torch.empty((), dtype=dtype).element_size()
            available = storage.nbytes() // itemsize
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= available:
                raise CheckpointError(f"tensor rebuild: size {size} / stride {stride} / offset {offset} "
                                      f"reach element {last} of a storage of {available} elements")
        try:
            return torch.empty((0,), dtype=dtype).set_(storage, offset, size, stride)
        except RuntimeError as e:
            raise CheckpointError(f"tensor rebuild: size/stride do not fit the storage: {e}") from e


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    _check_hooks(backward_hooks)
    t = _tensor_from_storage(storage, storage_offset, size, stride)
    t.requires_grad = bool(requires_grad) and t.is_floating_point()
    return t


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    _check_hooks(backward_hooks)
    if not isinstance(dtype, torch.dtype):
        raise UnsafeCheckpointError("tensor rebuild: dtype argument is not a torch.dtype")
    t = _tensor_from_storage(storage, storage_offset, size, stride, dtype)
    t.requires_grad = bool(requires_grad) and t.is_floating_point()
    return t


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    _check_hooks(backward_hooks)
    if not isinstance(data, torch.Tensor):
        raise UnsafeCheckpointError("parameter rebuild: data is not a tensor")
    if state not in (None, {}) and not (isinstance(state, tuple) and all(not s for s in state)):
        raise UnsafeCheckpointError("parameter rebuild: extra Python state is not allowed")
    return nn.Parameter(data.detach(), requires_grad=bool(requires_grad))


def _codecs_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("_codecs.encode: only latin1 text (protocol-2 bytes) is allowed")
    return text.encode("latin1")


_ALLOWED: Dict[tuple, Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "Size"): torch.Size,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("dnnlib.util", "EasyDict"): _EasyDictData,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _codecs_encode,
    **_TORCH_CONTAINERS,
}
for _name in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
              "uint8", "bool", "complex64", "complex128"):
    _ALLOWED[("torch", _name)] = getattr(torch, _name)

# Types the object-construction opcodes may act on.
_NEWOBJ_TYPES = tuple(_TORCH_CONTAINERS.values()) + (_EasyDictData, collections.OrderedDict)
_BUILD_TYPES = tuple(_TORCH_CONTAINERS.values()) + (_NumpyDType,)


class RestrictedUnpickler(pickle._Unpickler):
    """A pure-Python unpickler that can only produce inert data (see module docstring)."""

    def __init__(self, file, source: str = "pickle"):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        raise UnsafeCheckpointError(
            f"{self.source}: refusing to load '{module}.{name}': it is not part of an EDM/SiD "
            f"network checkpoint (the file may be malicious); nothing from the file was executed")

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(
            f"{self.source}: pickle uses persistent ids ({pid!r:.60}); this looks like a torch.save "
            f"payload, not an EDM/SiD pickle")

    dispatch = dict(pickle._Unpickler.dispatch)

    def _load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        if not (isinstance(cls, type) and issubclass(cls, _NEWOBJ_TYPES)) or not isinstance(args, tuple):
            raise UnsafeCheckpointError(f"{self.source}: NEWOBJ of {cls!r} is not allowed")
        obj = cls.__new__(cls, *args)
        if isinstance(obj, _TorchModuleRecord):
            obj.state = {}
        self.append(obj)

    def _load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if kwargs:
            raise UnsafeCheckpointError(f"{self.source}: NEWOBJ_EX with keyword arguments is not allowed")
        self.stack.extend([cls, args])
        self._load_newobj()

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _BUILD_TYPES):
            raise UnsafeCheckpointError(f"{self.source}: setting the state of a {type(inst).__name__} "
                                        f"object is not allowed")
        inst.__setstate__(state)

    def _refuse(self):
        raise UnsafeCheckpointError(f"{self.source}: INST/OBJ opcodes (protocol 0/1 object "
                                    f"construction) are not allowed")

    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.INST[0]] = _refuse
    dispatch[pickle.OBJ[0]] = _refuse


# ---------------------------------------------------------------------------------------
# From records to fastdistill objects.

@dataclass
class EDMObjectData:
    """A non-network EDM persistent object (loss, augment pipe, ...) kept as plain data."""

    class_name: str
    init_args: tuple = ()
    init_kwargs: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)


def _plain(obj):
    """Records -> plain data recursively (for non-network entries)."""
    if isinstance(obj, _PersistentRecord):
        st = obj.state
        return EDMObjectData(obj.class_name, tuple(_plain(a) for a in st.get("_init_args", ())),
                             _plain(dict(st.get("_init_kwargs", {}))),
                             {k: _plain(v) for k, v in st.items() if k not in ("_init_args", "_init_kwargs")})
    if isinstance(obj, _TorchModuleRecord):
        return {"torch_class": obj.torch_class, **{k: _plain(v) for k, v in obj.state.items()}}
    if isinstance(obj, dict):
        return type(obj)((k, _plain(v)) for k, v in obj.items()) if not isinstance(obj, _EasyDictData) \
            else {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


def _collect(record, prefix, tensors, classes, source):
    """Walk a record tree like ``nn.Module.state_dict`` does."""
    if isinstance(record, _PersistentRecord):
        classes[prefix] = record.class_name
        state = record.state
    elif isinstance(record, _TorchModuleRecord):
        classes[prefix] = record.torch_class
        state = record.state
    else:
        raise CheckpointError(f"{source}: submodule '{prefix}' is a {type(record).__name__}, not a module")
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if t is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"{source}: {prefix}{name} is a {type(t).__name__}, not a tensor")
            tensors[prefix + name] = t.detach()
    for name, sub in (state.get("_modules") or {}).items():
        if sub is not None:
            _collect(sub, prefix + name + ".", tensors, classes, source)


def _init_kwargs_of(record: _PersistentRecord, source: str) -> dict:
    args = record.state.get("_init_args", ())
    kwargs = record.state.get("_init_kwargs", {})
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{source}: {record.class_name} has no recorded constructor arguments")
    kwargs = _plain(dict(kwargs))
    if args:  # map positional arguments onto the EDM signature (same as ours)
        import inspect

        cls = TEACHER_CLASSES[record.class_name]
        try:
            bound = inspect.signature(cls).bind_partial(*_plain(tuple(args)))
        except TypeError as e:
            raise CheckpointError(f"{source}: {record.class_name} positional arguments do not fit: {e}") from e
        overlap = set(bound.arguments) & set(kwargs)
        if overlap:
            raise CheckpointError(f"{source}: {record.class_name} arguments given twice: {sorted(overlap)}")
        kwargs = {**bound.arguments, **kwargs}
    # EDM records the full class path for model_type sometimes; keep the last component.
    if isinstance(kwargs.get("model_type"), str):
        kwargs["model_type"] = kwargs["model_type"].rsplit(".", 1)[-1]
    return kwargs


def _build_network(record, source: str) -> nn.Module:
    if not isinstance(record, _PersistentRecord):
        raise CheckpointError(f"{source}: expected an EDM network, found {type(record).__name__}")
    if record.class_name not in EDM_NETWORK_CLASSES:
        raise CheckpointError(
            f"{source}: unknown EDM network class {record.class_name!r}; supported: "
            f"{sorted(EDM_NETWORK_CLASSES)}")
    tensors: Dict[str, torch.Tensor] = {}
    classes: Dict[str, str] = {}
    _collect(record, "", tensors, classes, source)
    allowed = EDM_NETWORK_CLASSES | EDM_LAYER_CLASSES | {r.torch_class for r in _TORCH_CONTAINERS.values()}
    unknown = sorted({c for c in classes.values() if c not in allowed})
    if unknown:
        raise CheckpointError(f"{source}: network contains unknown EDM classes {unknown}; "
                              f"fastdistill implements {sorted(allowed)}")
    net = build_teacher(record.class_name, _init_kwargs_of(record, source), source)
    # Structure check: every recorded submodule must sit at the same place in ours, same class.
    ours = dict(net.named_modules())
    for path, cname in classes.items():
        key = path[:-1]
        mod = ours.get(key)
        if mod is None:
            raise CheckpointError(f"{source}: checkpoint has submodule '{key}' ({cname}) that "
                                  f"{record.class_name} built from its arguments does not have")
        if type(mod).__name__ != cname:
            raise CheckpointError(f"{source}: submodule '{key}' is {cname} in the checkpoint but "
                                  f"{type(mod).__name__} here")
    load_state_dict_checked(net, tensors, source)
    return net.eval().requires_grad_(False)


def _open_checked(path: str):
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        raise CheckpointError(f"{path}: this is a zip archive (a torch.save file?), not an EDM/SiD "
                              f"network pickle")
    if len(head) == 0:
        raise CheckpointError(f"{path}: file is empty")
    if head == b"\x80":
        raise CheckpointError(f"{path}: truncated pickle (1 byte)")
    if head[:1] != b"\x80" or head[1:2] not in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointError(f"{path}: not a pickle of protocol 2 or later (starts with {head!r}); "
                              f"EDM/SiD network pickles start with b'\\x80'")


def _unpickle(path: str):
    _open_checked(path)
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, source=path).load()
        except CheckpointError:
            raise
        except (EOFError, pickle.UnpicklingError, struct.error) as e:
            raise CheckpointError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from e
        except (IndexError, KeyError, ValueError, TypeError, AttributeError, MemoryError,
                UnicodeDecodeError, RecursionError, OverflowError) as e:
            raise CheckpointError(f"{path}: malformed pickle ({type(e).__name__}: {e})") from e


def read_edm_pickle(path: "str | os.PathLike", device="cpu") -> Dict[str, Any]:
    """Read a whole EDM/SiD pickle. Network entries become fastdistill modules (eval mode,
    frozen, on ``device``); other persistent objects become :class:`EDMObjectData`; the rest
    (e.g. ``dataset_kwargs``) is returned as plain data."""
    path = os.fspath(path)
    data = _unpickle(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict (EDM/SiD snapshot), found {type(data).__name__}")
    out = {}
    try:
        for key, value in data.items():
            if isinstance(value, _PersistentRecord) and value.class_name in EDM_NETWORK_CLASSES:
                out[key] = _build_network(value, f"{path}[{key!r}]").to(device)
            else:
                out[key] = _plain(value)
    except RecursionError as e:
        raise CheckpointError(f"{path}: structure nested too deeply") from e
    return out


def load_edm_pickle(path: "str | os.PathLike", device="cpu", key: str = "ema") -> nn.Module:
    """The network stored under ``key`` (default ``ema``) of an EDM/SiD pickle, as a
    fastdistill module (eval mode, ``requires_grad=False``, on ``device``)."""
    path = os.fspath(path)
    data = _unpickle(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict (EDM/SiD snapshot), found {type(data).__name__}")
    if key not in data:
        raise CheckpointError(f"{path}: no {key!r} entry (entries: {sorted(map(str, data))})")
    try:
        return _build_network(data[key], f"{path}[{key!r}]").to(device)
    except RecursionError as e:
        raise CheckpointError(f"{path}: structure nested too deeply") from e
