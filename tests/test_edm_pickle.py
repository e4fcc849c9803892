"""The restricted EDM/SiD pickle loader: real-format fixtures reproduce NVIDIA's outputs,
hostile pickles are refused with no side effect, and broken files fail with clear errors."""
import copy
import io
import os
import pickle
import sys
import types

import pytest
import torch

from fastdistill.teachers import (CheckpointError, EDMPrecond, UnsafeCheckpointError, load_edm_pickle,
                                  load_teacher, read_edm_pickle)
from fastdistill.teachers import edm_pickle as ep

ARCHS = ["ddpmpp", "ncsnpp", "adm"]


def _vectors(testvectors, arch):
    from safetensors.torch import load_file

    return load_file(str(testvectors / f"edm_{arch}_tiny.safetensors"))


@pytest.mark.parametrize("arch", ARCHS)
def test_pickle_reproduces_nvidia_outputs(testvectors, arch):
    v = _vectors(testvectors, arch)
    net = load_teacher(testvectors / f"edm_{arch}_tiny.pkl")
    assert isinstance(net, EDMPrecond) and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        D = net(v["input.x"], v["input.sigma"], v["input.class_labels"])
        D_aug = net(v["input.x"], v["input.sigma"], v["input.class_labels"],
                    augment_labels=v["input.augment_labels"])
    torch.testing.assert_close(D, v["output.D"], rtol=0, atol=1e-5)
    torch.testing.assert_close(D_aug, v["output.D_aug"], rtol=0, atol=1e-5)
    # Same weights as the safetensors copy of the network.
    ref = {k[len("state."):]: t for k, t in v.items() if k.startswith("state.")}
    sd = net.state_dict()
    assert sorted(sd) == sorted(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)


def test_read_whole_snapshot(testvectors):
    data = read_edm_pickle(testvectors / "edm_adm_tiny.pkl")
    assert isinstance(data["ema"], EDMPrecond)
    assert data["dataset_kwargs"] == {"class_name": "training.dataset.ImageFolderDataset", "resolution": 16}
    assert data["ema"].init_kwargs["model_type"] == "DhariwalUNet"
    assert data["ema"].init_kwargs["augment_dim"] == 9


# ---------------------------------------------------------------------------------------
# Writing EDM-format pickles for the tests: read a fixture into inert records, edit them,
# and serialise them back exactly as torch_utils.persistence would (its reconstruct hook
# and torch.nn containers referenced by name), using stand-in modules only while dumping.

def _records(path):
    return ep._unpickle(str(path))


def _fake_persistence(monkeypatch):
    def _reconstruct_persistent_obj(meta):  # never called: only its name goes in the pickle
        raise AssertionError

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pkg = types.ModuleType("torch_utils")
    mod = types.ModuleType("torch_utils.persistence")
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    monkeypatch.setitem(sys.modules, "torch_utils", pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", mod)
    return _reconstruct_persistent_obj


class _EDMPickler(pickle.Pickler):
    def __init__(self, f, hook, module_src="# placeholder\n"):
        super().__init__(f, protocol=4)
        self.hook = hook
        self.module_src = module_src

    def reducer_override(self, obj):
        if isinstance(obj, ep._PersistentRecord):
            meta = dict(type="class", version=6, module_src=self.module_src,
                        class_name=obj.class_name, state=obj.state)
            return self.hook, (meta,)
        return NotImplemented


def _shells(obj):
    """Replace container records by real (empty-shell) torch containers holding their state."""
    if isinstance(obj, ep._TorchModuleRecord):
        cls = getattr(torch.nn, obj.torch_class)
        shell = cls.__new__(cls)
        shell.__dict__.update({k: _shells(v) for k, v in obj.state.items()})
        return shell
    if isinstance(obj, ep._PersistentRecord):
        obj.state = {k: _shells(v) for k, v in obj.state.items()}
        return obj
    if isinstance(obj, dict):
        return type(obj)((k, _shells(v)) for k, v in obj.items())
    return obj


def _dump(data, monkeypatch, module_src="# placeholder\n") -> bytes:
    hook = _fake_persistence(monkeypatch)
    buf = io.BytesIO()
    _EDMPickler(buf, hook, module_src).dump(_shells(data))
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")
    monkeypatch.delitem(sys.modules, "torch_utils")
    return buf.getvalue()


def _write(tmp_path, name, blob):
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def test_rewritten_pickle_still_loads(testvectors, tmp_path, monkeypatch):
    """Sanity check of the writer used below: an unedited round trip loads and matches."""
    data = _records(testvectors / "edm_ddpmpp_tiny.pkl")
    p = _write(tmp_path, "same.pkl", _dump(data, monkeypatch))
    v = _vectors(testvectors, "ddpmpp")
    with torch.no_grad():
        D = load_edm_pickle(p)(v["input.x"], v["input.sigma"], v["input.class_labels"])
    torch.testing.assert_close(D, v["output.D"], rtol=0, atol=1e-5)


def test_embedded_module_source_is_never_executed(testvectors, tmp_path, monkeypatch):
    marker = tmp_path / "pwned_by_module_src"
    src = f"open({str(marker)!r}, 'w').write('x')\nimport os\nos.system('touch {marker}')\n"
    data = _records(testvectors / "edm_adm_tiny.pkl")
    p = _write(tmp_path, "src.pkl", _dump(data, monkeypatch, module_src=src))
    net = load_edm_pickle(p)
    assert isinstance(net, EDMPrecond)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------
# Hostile pickles.

def _call_pickle(module: str, name: str, *args, wrap_in_ema=True) -> bytes:
    """Protocol-2 pickle calling module.name(*args) (optionally as dict(ema=<call>))."""
    body = pickle.dumps(args, protocol=2)[2:-1]  # the args tuple, without PROTO and STOP
    call = b"c" + module.encode() + b"\n" + name.encode() + b"\n" + body + b"R"
    if wrap_in_ema:
        return b"\x80\x02}X\x03\x00\x00\x00ema" + call + b"s."
    return b"\x80\x02" + call + b"."


def _hostile_payloads(marker):
    m = str(marker)
    return {
        "os.system": _call_pickle("os", "system", f"touch {m}"),
        "posix.system": _call_pickle("posix", "system", f"touch {m}", wrap_in_ema=False),
        "builtins.eval": _call_pickle("builtins", "eval", f"open({m!r}, 'w').write('x')"),
        "builtins.exec": _call_pickle("builtins", "exec", f"open({m!r}, 'w').write('x')"),
        "builtins.open": _call_pickle("builtins", "open", m, "w"),
        "subprocess.call": _call_pickle("subprocess", "call", ["touch", m]),
        "builtins.getattr": _call_pickle("builtins", "getattr", "abc", "upper"),
        "torch.load": _call_pickle("torch", "load", m),
        # attribute paths through an allowed name are refused too (exact-match whitelist)
        "collections.OrderedDict.fromkeys": _call_pickle("collections", "OrderedDict.fromkeys", [1]),
    }


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_payloads_are_real(tmp_path):
    """Control: with the standard unpickler the same bytes do create the file."""
    marker = tmp_path / "created_by_plain_pickle"
    pickle.loads(_hostile_payloads(marker)["builtins.open"]).get("ema").close()
    assert marker.exists()


@pytest.mark.parametrize("name", list(_hostile_payloads("x")))
def test_hostile_pickle_refused_without_side_effect(tmp_path, name):
    marker = tmp_path / "pwned"
    p = _write(tmp_path, "evil.pkl", _hostile_payloads(marker)[name])
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to load '{name}'"):
        load_teacher(p)
    with pytest.raises(UnsafeCheckpointError):
        read_edm_pickle(p)
    assert not marker.exists()


def test_hostile_reduce_object(tmp_path):
    marker = tmp_path / "pwned_reduce"
    p = _write(tmp_path, "evil2.pkl", pickle.dumps(dict(ema=_Evil(marker), dataset_kwargs={}), protocol=4))
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load '(posix|os)\.system'"):
        load_edm_pickle(p)
    assert not marker.exists()


def test_hostile_object_nested_inside_network_state(testvectors, tmp_path, monkeypatch):
    marker = tmp_path / "pwned_nested"
    data = _records(testvectors / "edm_ddpmpp_tiny.pkl")
    data["ema"].state["_modules"]["model"].state["innocent"] = _Evil(marker)
    p = _write(tmp_path, "nested.pkl", _dump(data, monkeypatch))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_edm_pickle(p)
    assert not marker.exists()


def test_hostile_tensor_storage_refused(tmp_path):
    """The embedded storage bytes go through torch's weights-only loader."""
    marker = tmp_path / "pwned_storage"
    inner = pickle.dumps(_Evil(marker), protocol=2)
    p = _write(tmp_path, "storage.pkl", _call_pickle("torch.storage", "_load_from_bytes", inner))
    with pytest.raises(CheckpointError):
        load_edm_pickle(p)
    assert not marker.exists()


def test_build_on_disallowed_object_refused(tmp_path):
    # {'ema': OrderedDict()} then BUILD with a state dict: setting attributes is refused.
    blob = (b"\x80\x02}X\x03\x00\x00\x00emaccollections\nOrderedDict\n)R}X\x01\x00\x00\x00a"
            b"K\x01sbs.")
    p = _write(tmp_path, "build.pkl", blob)
    with pytest.raises(UnsafeCheckpointError, match="not allowed"):
        load_edm_pickle(p)


# ---------------------------------------------------------------------------------------
# Broken files.

def test_truncated_pickle(testvectors, tmp_path):
    blob = (testvectors / "edm_ncsnpp_tiny.pkl").read_bytes()
    for n in (1, 40, len(blob) // 3, len(blob) - 1):
        p = _write(tmp_path, f"trunc{n}.pkl", blob[:n])
        with pytest.raises(CheckpointError, match="truncated|corrupt|malformed"):
            load_teacher(p)


def test_corrupt_pickle(testvectors, tmp_path):
    blob = bytearray((testvectors / "edm_adm_tiny.pkl").read_bytes())
    blob[11:200] = b"\xff" * 189
    p = _write(tmp_path, "corrupt.pkl", bytes(blob))
    with pytest.raises(CheckpointError):
        load_edm_pickle(p)


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "PNG"),
    (b"PK\x03\x04" + b"\0" * 64, "zip archive"),
    (b"hello, not a checkpoint\n", "unknown format"),
    (b"", "empty"),
])
def test_wrong_file_type(tmp_path, content, message):
    p = _write(tmp_path, "teacher.pkl", content)
    with pytest.raises(CheckpointError, match=message):
        load_teacher(p)
    with pytest.raises(CheckpointError):
        load_edm_pickle(p)


def test_pickle_that_is_not_a_snapshot(tmp_path):
    p = _write(tmp_path, "list.pkl", pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_edm_pickle(p)
    p = _write(tmp_path, "noema.pkl", pickle.dumps({"G": 1}, protocol=4))
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        load_edm_pickle(p)


def test_unknown_network_class(testvectors, tmp_path, monkeypatch):
    data = _records(testvectors / "edm_ddpmpp_tiny.pkl")
    data["ema"].class_name = "MysteryPrecond"
    p = _write(tmp_path, "unknown.pkl", _dump(data, monkeypatch))
    with pytest.raises(CheckpointError, match="unknown EDM network class 'MysteryPrecond'"):
        load_edm_pickle(p)
    # Outside `ema` an unknown persistent class is only data; read_edm_pickle keeps it as such.
    out = read_edm_pickle(p)
    assert isinstance(out["ema"], ep.EDMObjectData) and out["ema"].class_name == "MysteryPrecond"


def test_unknown_layer_class(testvectors, tmp_path, monkeypatch):
    data = _records(testvectors / "edm_ddpmpp_tiny.pkl")
    data["ema"].state["_modules"]["model"].state["_modules"]["map_layer0"].class_name = "FancyLinear"
    p = _write(tmp_path, "layer.pkl", _dump(data, monkeypatch))
    with pytest.raises(CheckpointError, match="FancyLinear"):
        load_edm_pickle(p)


def _model_params(data, module):
    return data["ema"].state["_modules"]["model"].state["_modules"][module].state["_parameters"]


def test_shape_mismatch_named(testvectors, tmp_path, monkeypatch):
    data = _records(testvectors / "edm_ddpmpp_tiny.pkl")
    _model_params(data, "map_layer1")["weight"] = torch.zeros(128, 64)
    p = _write(tmp_path, "shape.pkl", _dump(data, monkeypatch))
    with pytest.raises(CheckpointError, match=r"shape mismatch: model\.map_layer1\.weight"):
        load_edm_pickle(p)


def test_missing_key_named(testvectors, tmp_path, monkeypatch):
    data = _records(testvectors / "edm_ddpmpp_tiny.pkl")
    del _model_params(data, "map_label")["bias"]
    p = _write(tmp_path, "missing.pkl", _dump(data, monkeypatch))
    with pytest.raises(CheckpointError, match=r"missing keys: model\.map_label\.bias"):
        load_edm_pickle(p)


def test_arguments_that_do_not_build(testvectors, tmp_path, monkeypatch):
    data = _records(testvectors / "edm_adm_tiny.pkl")
    data["ema"].state["_init_kwargs"]["model_type"] = "UNet2DModel"
    p = _write(tmp_path, "args.pkl", _dump(data, monkeypatch))
    with pytest.raises(CheckpointError, match="cannot build EDMPrecond"):
        load_edm_pickle(p)
    data = copy.deepcopy(_records(testvectors / "edm_adm_tiny.pkl"))
    data["ema"].state["_init_kwargs"]["channel_mult"] = [1, 2, 2]
    p = _write(tmp_path, "arch.pkl", _dump(data, monkeypatch))
    with pytest.raises(CheckpointError, match="do not fit|does not have"):
        load_edm_pickle(p)


@pytest.mark.parametrize("cls_name", ["VPPrecond", "VEPrecond"])
def test_vp_ve_pickles_and_positional_args(testvectors, tmp_path, monkeypatch, cls_name):
    """EDM's VPPrecond / VEPrecond snapshots map to ours; positional init args are honoured."""
    from fastdistill.teachers import VEPrecond, VPPrecond

    data = _records(testvectors / "edm_ddpmpp_tiny.pkl")
    ema = data["ema"]
    kw = ema.state["_init_kwargs"]
    for k in ("sigma_min", "sigma_max", "sigma_data"):
        kw.pop(k, None)
    ema.state["_init_args"] = (kw.pop("img_resolution"), kw.pop("img_channels"))
    ema.class_name = cls_name
    p = _write(tmp_path, "vpve.pkl", _dump(data, monkeypatch))
    net = load_edm_pickle(p)
    assert type(net) is {"VPPrecond": VPPrecond, "VEPrecond": VEPrecond}[cls_name]
    assert net.img_resolution == 16 and net.img_channels == 3 and net.label_dim == 10
    ref = load_teacher(testvectors / "edm_ddpmpp_tiny.safetensors")
    x = torch.randn(2, 3, 16, 16)
    sigma = torch.tensor([0.1, 3.0])
    labels = torch.eye(10)[:2]
    s = sigma.reshape(-1, 1, 1, 1)
    with torch.no_grad():
        if cls_name == "VPPrecond":
            expected = x - s * ref.model(x / (s**2 + 1).sqrt(), 999 * net.sigma_inv(sigma), labels)
        else:
            expected = x + s * ref.model(x, (0.5 * sigma).log(), labels)
        torch.testing.assert_close(net(x, sigma, labels), expected, rtol=1e-6, atol=1e-5)


def test_tensor_outside_its_storage_refused(tmp_path):
    """Tensor.set_ does not bounds-check; the loader must, or a pickle could read stray memory."""
    blob = pickle.dumps(torch.zeros(4), protocol=4)
    storage_bytes = [a for a in _bytes_args(blob) if len(a) > 100][0]
    assert ep._load_from_bytes(storage_bytes)._untyped_storage.nbytes() == 16  # a real 4-element float storage
    for size, stride, offset in [((100,), (1,), 0), ((2, 2), (0, 5), 0), ((4,), (1,), 1)]:
        args = (_StorageArg(storage_bytes), offset, size, stride, False, None)
        p = _write(tmp_path, "oob.pkl", _call_pickle_obj("torch._utils", "_rebuild_tensor_v2", args))
        with pytest.raises(CheckpointError, match="reach element"):
            load_edm_pickle(p)


def _bytes_args(blob):
    import pickletools

    return [arg for op, arg, _ in pickletools.genops(blob) if isinstance(arg, bytes)]


class _StorageArg:
    """Pickles as torch.storage._load_from_bytes(<bytes>)."""

    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        import torch.storage

        return torch.storage._load_from_bytes, (self.data,)


def _call_pickle_obj(module, name, args) -> bytes:
    body = pickle.dumps(args, protocol=2)[2:-1]
    call = b"c" + module.encode() + b"\n" + name.encode() + b"\n" + body + b"R"
    return b"\x80\x02}X\x03\x00\x00\x00ema" + call + b"s."
