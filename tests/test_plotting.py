"""fastdistill.plotting: each function writes a PNG with the expected size and content."""
import importlib.util
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fastdistill.plotting import image_grid, labelled_rows, line_figure, line_plot, save_samples_picture, scatter_panels


needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib is an optional extra (fastdistill[plots])")


def _images(n, c=1, h=8, w=8, seed=0):
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_image_grid_size_and_tile_pixels(tmp_path):
    x = _images(7, c=3, h=8, w=6)
    p = image_grid(x, tmp_path / "sub" / "grid.png", ncol=3)  # parent dir created
    im = Image.open(p)
    # make_grid: 2-px padding around and between tiles; 7 images in 3 columns -> 3 rows
    assert im.size == (3 * (6 + 2) + 2, 3 * (8 + 2) + 2)
    arr = np.asarray(im.convert("RGB")).astype(int)
    r, q = divmod(4, 3)  # image 4: row 1, column 1
    y0, x0 = 2 + r * (8 + 2), 2 + q * (6 + 2)
    tile = arr[y0:y0 + 8, x0:x0 + 6].transpose(2, 0, 1)
    expected = ((x[4] + 1) * 127.5).numpy()
    assert np.abs(tile - expected).max() <= 1
    assert (arr[0] == 255).all()  # white padding


def test_image_grid_grey_and_default_columns(tmp_path):
    x = _images(5)
    im = Image.open(image_grid(x, tmp_path / "g.png"))
    assert im.size == (3 * 10 + 2, 2 * 10 + 2)  # ceil(sqrt(5)) = 3 columns
    arr = np.asarray(im.convert("L")).astype(int)
    assert np.abs(arr[2:10, 2:10] - ((x[0, 0] + 1) * 127.5).numpy()).max() <= 1


@needs_matplotlib
def test_labelled_rows_grow_with_rows(tmp_path):
    one = Image.open(labelled_rows([("data samples", _images(4))], tmp_path / "a" / "one.png"))
    rows = [("data samples", _images(4)), ("teacher Heun 35 NFE", _images(3, seed=1)),
            ("student (1 NFE)", _images(4, seed=2))]
    three = Image.open(labelled_rows(rows, tmp_path / "three.png", scale=4))
    assert three.size[1] > 2 * one.size[1]
    assert three.size[1] >= 3 * (8 * 4 + 4)  # every row: upscaled tiles plus padding
    assert three.size[0] > 4 * (8 * 4 + 2)  # the strip, plus room for the labels on the left


def _legend_texts(fig):
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


@needs_matplotlib
def test_line_plot_log_axis_hlines_and_bad_values(tmp_path):
    curves = {"SiD student": [(0, 50.0), (10, 5.0), (20, float("nan")), (30, 0.0), (40, None)],
              "DMD (1 NFE)": [(0, 40.0), (20, 0.5)]}
    hlines = {"teacher Heun 35 NFE": 1.0, "data vs data": None, "bad": float("inf")}
    p = line_plot(curves, tmp_path / "plots" / "c.png", title="t", xlabel="iterations", ylabel="FID", hlines=hlines)
    assert Image.open(p).size == (720, 440)
    fig = line_figure(curves, title="t", hlines=hlines)
    assert fig.axes[0].get_yscale() == "log"
    assert {2.0, 5.0, 10.0, 20.0} <= set(fig.axes[0].yaxis.get_major_locator().tick_values(1.0, 50.0))  # 1-2-5 ticks
    # labels kept exactly, spaces included; each curve's last drawn value, NaN / 0 / None skipped
    assert _legend_texts(fig) == ["SiD student 5", "DMD (1 NFE) 0.5", "teacher Heun 35 NFE 1"]
    xs = fig.axes[0].lines[0].get_xdata()
    assert list(xs) == [0.0, 10.0]


@needs_matplotlib
def test_line_plot_linear_axis_keeps_non_positive(tmp_path):
    curves = {"loss a": [(1, -2.0), (2, 0.0), (3, 1.5)]}
    p = line_plot(curves, tmp_path / "lin.png", logy=False, hlines={"zero line": 0.0}, size=(400, 300))
    assert Image.open(p).size == (400, 300)
    fig = line_figure(curves, logy=False, hlines={"zero line": 0.0})
    assert fig.axes[0].get_yscale() == "linear"
    assert _legend_texts(fig) == ["loss a 1.5", "zero line 0"]
    assert len(fig.axes[0].lines[0].get_xdata()) == 3


@needs_matplotlib
def test_scatter_panels_and_vector_samples(tmp_path):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 2, generator=g), torch.randn(300, 2, generator=g) * 2
    b[0] = float("nan")
    p = scatter_panels([("data", a), ("student (1 step)", b)], tmp_path / "s" / "sc.png", size=200)
    im = Image.open(p)
    assert im.size == (400, 230)
    assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 2  # something was drawn
    q = save_samples_picture(a, tmp_path / "v.png", title="projected")
    assert Image.open(q).size == (320, 350)


def test_save_samples_picture_images_is_a_grid(tmp_path):
    x = _images(70, c=3)
    im = Image.open(save_samples_picture(x, tmp_path / "d" / "img.png"))
    assert im.size == (8 * 10 + 2, 8 * 10 + 2)  # the first 64 images, 8 x 8


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"needs matplotlib: pip install 'fastdistill\[plots\]'"):
        line_plot({"a": [(0, 1.0)]}, tmp_path / "x.png")
    with pytest.raises(ImportError, match="needs matplotlib"):
        scatter_panels([("a", torch.zeros(3, 2))], tmp_path / "y.png")
    with pytest.raises(ImportError, match="needs matplotlib"):
        labelled_rows([("a", _images(2))], tmp_path / "z.png")
    assert image_grid(_images(2), tmp_path / "g.png").exists()  # torchvision only: still works


def test_missing_torchvision_says_how_to_install(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")] + ["torchvision"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="image grids need torchvision: pip install torchvision"):
        image_grid(_images(2), tmp_path / "g.png")
    with pytest.raises(ImportError, match="need torchvision"):
        labelled_rows([("a", _images(2))], tmp_path / "z.png")
