"""Datasets: toys, digits, arrays, image folders, and their error messages."""
import numpy as np
import pytest
import torch

from fastdistill.data import ArrayDataset, DataSource, ToyDataset, from_array, load_dataset


@pytest.mark.parametrize("name", ["8gaussians", "25gaussians", "checkerboard", "swissroll", "swiss_roll"])
def test_toys_fresh_points_and_seeded(name):
    ds = load_dataset(name)
    assert isinstance(ds, ToyDataset) and isinstance(ds, DataSource)
    assert ds.data_shape == (2,) and ds.label_dim == 0
    a, la = ds.sample(500, torch.Generator().manual_seed(0))
    b, _ = ds.sample(500, torch.Generator().manual_seed(0))
    c, _ = ds.sample(500, torch.Generator().manual_seed(1))
    assert la is None and a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() < 1.5


def test_toy_geometry():
    g = torch.Generator().manual_seed(0)
    x, _ = load_dataset("8gaussians").sample(4000, g)
    assert ((x.norm(dim=1) - 1).abs() < 0.25).all()
    x, _ = load_dataset("checkerboard").sample(4000, g)
    cell = ((x + 1) * 2).floor().long()
    assert ((cell.sum(1) % 2) == 0).all() and x.abs().max() <= 1
    x, _ = load_dataset("swissroll", noise=0.0).sample(4000, g)
    r = x.norm(dim=1)
    assert r.max() <= 1 + 1e-6 and r.min() >= 1 / 3 - 1e-6
    # the exact analytic teacher is the denoiser of this very mixture: same means, same spread
    from fastdistill.data.toys import ring_means
    from fastdistill.teachers import load_teacher

    teacher = load_teacher("analytic:8gaussians")
    assert torch.equal(teacher.means.double(), ring_means(8, 1.0))
    assert torch.allclose(teacher.eigvals.double(), torch.full((8, 2), 0.05**2, dtype=torch.float64))
    x, _ = load_dataset("8gaussians").sample(40000, g)
    k = torch.cdist(x.double(), ring_means(8, 1.0)).argmin(1)
    assert (torch.bincount(k, minlength=8) / len(k) - 1 / 8).abs().max() < 0.01
    assert float((x.double() - ring_means(8, 1.0)[k]).std()) == pytest.approx(0.05, rel=0.03)


def test_digits():
    ds = load_dataset("digits")
    assert isinstance(ds, ArrayDataset)
    assert ds.data.shape == (1797, 1, 8, 8) and ds.label_dim == 10
    assert ds.img_channels == 1 and ds.img_resolution == 8
    assert float(ds.data.min()) == -1.0 and float(ds.data.max()) == 1.0
    x, y = ds.sample(16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 1, 8, 8) and y.shape == (16, 10) and torch.equal(y.sum(1), torch.ones(16))
    item = ds[3]
    assert item[0].shape == (1, 8, 8) and item[1].shape == (10,)
    up = load_dataset("digits", resolution=16, labels=False)
    assert up.data.shape == (1797, 1, 16, 16) and up.label_dim == 0 and up.data.abs().max() <= 1
    assert 0.3 < ds.estimate_sigma_data() < 1.0


def test_npy_npz(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8)  # NHWC uint8
    np.save(tmp_path / "a.npy", img)
    ds = load_dataset(tmp_path / "a.npy")
    assert ds.data.shape == (10, 3, 8, 8) and ds.label_dim == 0
    torch.testing.assert_close(ds.data[2, 1], torch.as_tensor(img[2, :, :, 1] / 127.5 - 1.0, dtype=torch.float32))
    grey = rng.random((6, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "b.npz", images=grey, labels=np.array([0, 1, 2, 0, 1, 2]))
    ds = load_dataset(str(tmp_path / "b.npz"), value_range=(0, 1))
    assert ds.data.shape == (6, 1, 4, 4) and ds.label_dim == 3 and ds.data.min() >= -1
    pts = rng.normal(size=(50, 2)) * 5
    np.save(tmp_path / "pts.npy", pts)
    ds = load_dataset(tmp_path / "pts.npy")
    assert ds.data_shape == (2,) and ds.img_channels == 2 and ds.img_resolution == 1
    torch.testing.assert_close(ds.data, torch.as_tensor(pts, dtype=torch.float32))


def test_array_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        from_array(np.full((3, 1, 4, 4), 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        from_array(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="square"):
        from_array(np.zeros((2, 1, 4, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="channel axis"):
        from_array(np.zeros((2, 7, 4, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        from_array(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="labels"):
        from_array(np.zeros((3, 2)), labels=[0, 1])
    with pytest.raises(ValueError, match="outside value_range"):
        from_array(np.full((3, 1, 2, 2), 300.0), value_range=(0, 255))
    np.savez(tmp_path / "c.npz", foo=np.zeros((2, 2)), bar=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="key="):
        load_dataset(tmp_path / "c.npz")
    (tmp_path / "d.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported"):
        load_dataset(tmp_path / "d.txt")
    with pytest.raises(FileNotFoundError, match="built-in"):
        load_dataset("no_such_dataset")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ["cat", "dog"]:
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            a = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / "imgs" / cls / f"{i}.png")
    ds = load_dataset(tmp_path / "imgs")
    assert ds.data.shape == (6, 3, 12, 12) and ds.label_dim == 2 and ds.class_names == ["cat", "dog"]
    assert ds.data.min() >= -1 and ds.data.max() <= 1
    ds = load_dataset(tmp_path / "imgs", resolution=8, channels=1, labels=False)
    assert ds.data.shape == (6, 1, 8, 8) and ds.label_dim == 0
    # errors: empty folder, mixed sizes, non-square, unreadable file
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "mixed").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "mixed" / "a.png")
    Image.new("L", (9, 9)).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(ValueError, match="differs"):
        load_dataset(tmp_path / "mixed")
    assert load_dataset(tmp_path / "mixed", resolution=4).data.shape == (2, 1, 4, 4)
    (tmp_path / "rect").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "rect" / "a.png")
    with pytest.raises(ValueError, match="not square"):
        load_dataset(tmp_path / "rect")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        load_dataset(tmp_path / "bad")
    with pytest.raises(ValueError, match="sub-folder"):
        load_dataset(tmp_path / "mixed", labels=True)
