"""Offline FID/KID/PR with torch-fidelity and the shipped digits classifier."""
import fnmatch
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import scipy.linalg as scipy_linalg

# a dependency of the package, but absent on the bare GPU machines the GPU check runs on
torch_fidelity = pytest.importorskip("torch_fidelity", reason="torch-fidelity is not installed")

from fastdistill.metrics import digits_classifier as dc  # noqa: E402
from fastdistill.metrics import fidelity as fd  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = dict(kid_subsets=10, kid_subset_size=300)  # torch-fidelity's 100 subsets cost seconds here


@pytest.fixture(scope="module")
def digits():
    return dc.digits_dataset("all")


@pytest.fixture(scope="module")
def halves(digits):
    x, _ = digits
    return x[0::2].clone(), x[1::2].clone()


def _noised(x, std, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def _frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    """Textbook FID: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), via scipy's sqrtm."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ---------------------------------------------------------------------------- classifier


def test_shipped_classifier_loads_from_package_data_and_is_accurate():
    ref = dc.default_weights_path()
    assert ref.is_file() and ref.name == "digits_classifier.safetensors"
    # the asset is package data: matched by the pyproject package-data glob of package "fastdistill"
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["fastdistill"]
    assert any(fnmatch.fnmatch("assets/digits_classifier.safetensors", g) for g in globs)
    assert ref.read_bytes()[:8] and len(ref.read_bytes()) < 100_000  # small: tens of KB

    model = dc.load_digits_classifier()  # no path: importlib.resources
    assert not any(p.requires_grad for p in model.parameters())
    x, y = dc.digits_dataset("heldout")
    assert len(y) == 359 and set(y.tolist()) == set(range(10))
    acc = dc.evaluate_accuracy(model, x, y)
    assert acc >= 0.97, acc
    meta = dc.read_metadata()
    assert abs(float(meta["heldout_accuracy"]) - acc) < 1e-6  # shipped file = documented file
    # through the uint8 quantisation torch-fidelity sees, and at 16x16 (nearest 2x upsampling)
    q = fd.ImageTensorDataset(x).images
    assert q.dtype == torch.uint8 and q.shape == (359, 1, 8, 8)
    assert dc.evaluate_accuracy(model, q, y) >= 0.97
    x16 = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.equal(model(x16), model(x))  # 16x16 is average-pooled back to 8x8
    from fastdistill.data import digits

    d16 = digits(resolution=16)  # the project's bilinear 16x16 digits, same order
    held = torch.arange(len(d16)) % dc.HELDOUT_MOD == dc.HELDOUT_MOD - 1
    assert dc.evaluate_accuracy(model, d16.data[held], d16.labels[held]) >= 0.97
    assert dc.evaluate_accuracy(model, x16.repeat(1, 3, 1, 1), y) == acc  # RGB -> grey
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.zeros(2, 1, 12, 12))


def test_features_have_unit_scale(halves):
    f = fd.extract_features(halves[0])
    assert f.shape == (len(halves[0]), dc.FEATURE_DIM) and f.dtype == torch.float32
    assert 0.7 < float(f.pow(2).mean()) < 1.4  # folded scale: E|f|^2/64 = 1 on the train split


# ---------------------------------------------------------------------------- metrics


def test_identical_sets_give_zero(halves):
    a, _ = halves
    m = fd.compute_metrics(a, a.clone(), **FAST)
    assert set(m) >= {"fid", "kid_mean", "kid_std", "precision", "recall"}
    assert abs(m["fid"]) < 1e-4
    assert abs(m["kid_mean"]) < 0.03  # unbiased estimator on overlapping subsets: ~0, slightly negative
    assert m["precision"] == 1.0 and m["recall"] == 1.0


def test_degraded_sets_score_worse(halves):
    a, b = halves
    base = fd.compute_metrics(b, a, **FAST)  # two halves of the data: the noise floor
    noisy = fd.compute_metrics(_noised(b, 0.5), a, **FAST)
    rolled = fd.compute_metrics(torch.roll(b, 1, dims=-1), a, **FAST)
    assert 0 < base["fid"] < 0.5
    assert noisy["fid"] > 3 * base["fid"] and rolled["fid"] > 10 * base["fid"]
    assert noisy["kid_mean"] > base["kid_mean"] + 0.03
    assert rolled["kid_mean"] > noisy["kid_mean"]
    assert noisy["precision"] < base["precision"] and rolled["precision"] < base["precision"]
    # mode dropping: only digits 0-4 keep precision but lose recall
    x, y = dc.digits_dataset("all")
    half_modes = fd.compute_metrics(x[y < 5], a, **FAST)
    assert half_modes["recall"] < 0.7 < half_modes["precision"]
    assert half_modes["fid"] > 10 * base["fid"]


def test_fid_matches_direct_frechet_distance(halves):
    a, b = halves
    s = _noised(b, 0.3)
    m = fd.compute_metrics(s, a, kid=False, prc=False)
    fa = fd.extract_features(a).numpy()
    fs = fd.extract_features(s).numpy()
    direct = _frechet(fs, fa)
    assert m["fid"] == pytest.approx(direct, rel=1e-4, abs=1e-6)


def test_torch_fidelity_api_directly(halves):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert fd.register_digits_extractor() == "fastdistill-digits" == fd.register_digits_extractor()
    assert FEATURE_EXTRACTORS_REGISTRY["fastdistill-digits"] is fd.DigitsFeatureExtractor
    a, b = halves
    out = torch_fidelity.calculate_metrics(
        input1=fd.ImageTensorDataset(b), input2=fd.ImageTensorDataset(a), feature_extractor="fastdistill-digits",
        fid=True, kid=True, prc=True, isc=True, kid_subset_size=200, kid_subsets=5, cuda=False,
        save_cpu_ram=True, cache=False, verbose=False, rng_seed=0,
    )
    ours = fd.compute_metrics(b, a, kid=False, prc=False, isc=True)
    assert out["frechet_inception_distance"] == pytest.approx(ours["fid"], rel=1e-6)
    assert 9.0 < out["inception_score_mean"] <= 10.0  # 10 balanced, confidently classified digits
    assert ours["isc_mean"] == pytest.approx(out["inception_score_mean"], rel=1e-6)


def test_seed_controls_kid_and_is_deterministic(halves):
    a, b = halves
    s = _noised(b, 0.2)
    kw = dict(fid=False, prc=False, kid_subsets=5, kid_subset_size=100)
    m1 = fd.compute_metrics(s, a, seed=1, **kw)
    m2 = fd.compute_metrics(s, a, seed=1, **kw)
    m3 = fd.compute_metrics(s, a, seed=2, **kw)
    assert m1 == m2 and m1["kid_mean"] != m3["kid_mean"]


def test_input_validation(halves):
    a, _ = halves
    with pytest.raises(ValueError, match="NaN"):
        fd.compute_metrics(torch.full_like(a, float("nan")), a)
    with pytest.raises(ValueError, match="kid_subset_size"):
        fd.compute_metrics(a[:50], a, kid_subset_size=100)
    with pytest.raises(ValueError, match="extractor"):
        fd.compute_metrics(a, a, extractor="vgg")
    ds = fd.ImageTensorDataset(torch.tensor([[-1.0, 0.0, 1.0, 7.0]]).view(1, 1, 1, 4))
    assert ds[0].flatten().tolist() == [0, 128, 255, 255]  # PNG-style quantisation, clamped


# ---------------------------------------------------------------------------- inception


@pytest.fixture
def no_inception_anywhere(monkeypatch, tmp_path):
    """No env var, an empty torch hub dir, and any download attempt fails the test."""
    monkeypatch.delenv(fd.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    def no_network(*args, **kwargs):
        raise AssertionError("torch-fidelity tried to download Inception weights")

    monkeypatch.setattr(inc, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return tmp_path


def test_inception_without_weights_raises_clear_error(no_inception_anywhere, halves):
    a, _ = halves
    with pytest.raises(fd.InceptionWeightsNotFoundError, match="never downloads"):
        fd.compute_metrics(a[:20], a[:20], extractor="inception")
    with pytest.raises(fd.InceptionWeightsNotFoundError, match="not found"):
        fd.compute_metrics(a[:20], a[:20], extractor="inception", inception_weights=no_inception_anywhere / "x.pth")
    assert issubclass(fd.InceptionWeightsNotFoundError, FileNotFoundError)


class _Evil:
    def __reduce__(self):
        return (sys.exit, (3,))


def test_inception_weights_must_be_a_plain_state_dict(no_inception_anywhere):
    bad = no_inception_anywhere / "bad.pth"
    with open(bad, "wb") as f:
        pickle.dump({"fc.weight": _Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="weights_only"):
        fd.compute_metrics(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8), extractor="inception",
                           inception_weights=bad)
    wrong = no_inception_anywhere / "wrong.pth"
    torch.save({"w": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="inception-v3-compat"):
        fd.compute_metrics(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8), extractor="inception",
                           inception_weights=wrong)


def test_inception_with_local_weights_file_runs_offline(no_inception_anywhere, monkeypatch, halves):
    """Plumbing only: a local file via the env var, 1 -> 3 channels, no network.

    Random weights (the value means nothing), a 75x75 network input instead of 299x299 and the
    first-block "64" features (no 2048x2048 eigendecomposition) keep this to seconds.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    monkeypatch.setattr(inc.FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)

    with monkeypatch.context() as m:  # build a randomly initialised state dict of the right layout
        m.setattr(inc, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        torch.manual_seed(0)
        state = inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    path = no_inception_anywhere / fd.INCEPTION_FILENAME
    torch.save(state, path)
    del state
    monkeypatch.setenv(fd.INCEPTION_ENV, str(path))
    a, b = halves
    m = fd.compute_metrics(b[:6], a[:6], extractor="inception", kid_subset_size=3, kid_subsets=2,
                          feature_layer="64")
    assert all(np.isfinite(v) for v in m.values()) and m["fid"] > 0
    f = fd.extract_features(a[:2], extractor="inception", layer="64")
    assert f.shape == (2, 64)


def test_importing_metrics_stays_cheap():
    """torch-fidelity (and torchvision) load on first use, not with `import fastdistill.metrics`."""
    code = ("import sys, fastdistill.metrics as m; assert callable(m.compute_metrics); "
            "assert 'torch_fidelity' not in sys.modules and 'torchvision' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=120)


def test_train_classifier_command_checks_the_shipped_weights(capsys):
    from fastdistill.cli import main

    assert main(["train-classifier", "--eval-only"]) == 0
    assert json.loads(capsys.readouterr().out)["heldout_accuracy"] >= 0.98
