"""Tiles, resizing, colour maps, overlays, figures, and the atomic writers that save them."""
import os
import stat

import numpy as np
import pytest
from PIL import Image

from onnxviz.errors import OnnxvizError
from onnxviz.io import (atomic_write, check_not_input, ensure_out_dir, save_figure, save_json,
                        save_npy, save_png)
from onnxviz.render import (activation_grid, activations_figure, colorize, filter_grid,
                            filters_figure, grid, heatmap_figure, normalize01, overlay,
                            rank_channels, strip_figure, upsample)
from onnxviz.methods.results import scaled, upsampled


# ----------------------------------------------------------------------------- grid

def test_grid_places_tiles_row_by_row():
    tiles = np.arange(5, dtype=np.uint8)[:, None, None] * np.ones((5, 2, 3), np.uint8)
    g = grid(tiles, cols=3, pad=1, pad_value=99)
    assert g.shape == (2 * 2 + 1, 3 * 3 + 2)
    for i in range(5):
        r, c = divmod(i, 3)
        assert (g[r * 3:r * 3 + 2, c * 4:c * 4 + 3] == i).all()
    assert (g[2, :] == 99).all() and (g[:, 3] == 99).all()  # gaps
    assert (g[3:, 8:] == 99).all()  # the empty sixth cell


def test_grid_defaults_square_white_and_colour_tiles():
    g = grid(np.zeros((9, 4, 4, 3), np.uint8))
    assert g.shape == (14, 14, 3) and g[4, 0].tolist() == [255, 255, 255]
    f = grid(np.zeros((2, 1, 1)), pad=2)
    assert f.dtype == np.float64 and f.tolist() == [[0, 1, 1, 0]]


def test_grid_zoom_repeats_pixels():
    g = grid(np.array([[[1, 2], [3, 4]]], np.uint8), zoom=2)
    np.testing.assert_array_equal(g, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])


def test_grid_rejects_empty_and_flat():
    with pytest.raises(ValueError, match="N > 0"):
        grid(np.zeros((0, 2, 2)))
    with pytest.raises(ValueError):
        grid(np.zeros((4, 4)))


def test_normalize01_per_axis_and_constant():
    a = np.array([[[0.0, 2.0]], [[5.0, 5.0]], [[-1.0, 1.0]]])
    np.testing.assert_array_equal(normalize01(a, axis=(1, 2)), [[[0, 1]], [[0, 0]], [[0, 1]]])
    np.testing.assert_allclose(normalize01(a), (a + 1) / 6)


# ----------------------------------------------------------------------------- filters

def test_rgb_filters_are_centered_on_grey_and_scaled_per_filter():
    w = np.zeros((3, 3, 1, 2))
    w[0, 0, 0, 0] = 2.0  # filter 0: red at the left pixel
    w[0, 2, 0, 1] = -2.0  # ...and anti-blue at the right
    w[1] = w[0] * 100  # same shape of filter, 100x larger: same picture
    g = filter_grid(w, cols=3, pad=1)
    assert g.shape == (1, 3 * 2 + 2, 3) and g.dtype == np.uint8
    np.testing.assert_array_equal(g[0, 0:2], [[255, 128, 128], [128, 128, 0]])
    np.testing.assert_array_equal(g[0, 3:5], g[0, 0:2])
    np.testing.assert_array_equal(g[0, 6:8], 128)  # an all-zero filter is flat grey
    np.testing.assert_array_equal(g[0, 2], 255)  # the gap
    bgr = filter_grid(w, cols=3, bgr=True)
    np.testing.assert_array_equal(bgr[0, 0:2], [[128, 128, 255], [0, 128, 128]])


def test_non_rgb_filters_show_one_row_per_filter():
    w = np.zeros((2, 4, 1, 1))
    w[0, 1] = 1.0
    w[1, 3] = -1.0
    g = filter_grid(w)
    assert g.shape == (2 * 1 + 1, 4 * 1 + 3, 3)
    grey = g[::2, ::2, 0]  # (filters, in-channels) without the gaps
    np.testing.assert_array_equal(grey, [[128, 255, 128, 128], [128, 128, 128, 0]])
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()


def test_three_channel_filters_as_grey_and_depthwise_as_square():
    w = np.random.default_rng(0).normal(size=(5, 3, 3, 3))
    assert filter_grid(w, rgb=False).shape == (5 * 4 - 1, 3 * 4 - 1, 3)
    assert filter_grid(np.ones((16, 1, 3, 3))).shape == (4 * 4 - 1, 4 * 4 - 1, 3)
    with pytest.raises(ValueError, match="3 in-channels"):
        filter_grid(np.ones((4, 2, 3, 3)), rgb=True)
    with pytest.raises(ValueError, match="out, in, kh, kw"):
        filter_grid(np.ones((4, 3, 3)))


# ----------------------------------------------------------------------------- activations

def acts_fixture():
    a = np.zeros((4, 3, 3))
    a[0] = 0.1  # mean 0.1, max 0.1
    a[1, 0, 0] = 9.0  # mean 1.0, max 9
    a[2] = 2.0  # mean 2.0, max 2
    a[3] = -1.0
    return a


def test_channels_ranked_by_mean_or_max():
    a = acts_fixture()
    assert rank_channels(a, "mean").tolist() == [2, 1, 0, 3]
    assert rank_channels(a, "max").tolist() == [1, 2, 0, 3]
    assert rank_channels(a, None).tolist() == [0, 1, 2, 3]
    assert rank_channels(np.zeros((3, 2, 2)), "mean").tolist() == [0, 1, 2]  # ties keep order
    with pytest.raises(ValueError, match="order"):
        rank_channels(a, "median")


def test_activation_grid_shows_top_channels_in_order():
    a = acts_fixture()
    g, chans = activation_grid(a, top=2, order="max", cmap="gray", cols=2, pad=1)
    assert chans.tolist() == [1, 2]
    assert g.shape == (3, 7, 3) and g.dtype == np.uint8
    # first tile is channel 1 (one hot pixel), second is channel 2 (flat, so 0 after scaling)
    np.testing.assert_array_equal(g[:, :3, 0], [[255, 0, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(g[:, 4:, 0], 0)


def test_activation_grid_shared_scale_compares_channels():
    a = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 4.0)])
    a[:, 0, 0] = 0.0
    shared, _ = activation_grid(a, order=None, scale="shared", cmap="gray", cols=2)
    own, _ = activation_grid(a, order=None, scale="channel", cmap="gray", cols=2)
    assert shared[1, 1, 0] == 64 and shared[1, 4, 0] == 255  # 1/4 vs 4/4 of the shared range
    assert own[1, 1, 0] == own[1, 4, 0] == 255
    with pytest.raises(ValueError, match="one image"):
        activation_grid(a[None])


# ----------------------------------------------------------------------------- resizing

def test_bilinear_2x2_to_4x4_by_hand():
    # half-pixel centres: output rows/cols sample input coords -0.25 (clamped to 0), 0.25, 0.75
    # and 1.25 (clamped to 1)
    m = np.array([[0.0, 4.0], [8.0, 12.0]])
    want = [[0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]]
    np.testing.assert_allclose(upsample(m, (4, 4)), want)


def test_bilinear_downsample_and_identity():
    m = np.arange(16.0).reshape(4, 4)
    np.testing.assert_allclose(upsample(m, (4, 4)), m)
    # 4 -> 2 samples at 0.5 and 2.5: the mean of each pair of rows/columns
    np.testing.assert_allclose(upsample(m, (2, 2)), [[2.5, 4.5], [10.5, 12.5]])


def test_nearest_and_batched_maps():
    m = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(upsample(m, (4, 4), "nearest"), np.kron(m, np.ones((2, 2))))
    batch = np.stack([m, 2 * m])
    out = upsample(batch, (3, 5))
    assert out.shape == (2, 3, 5)
    np.testing.assert_allclose(out[1], 2 * out[0])
    with pytest.raises(ValueError, match="mode"):
        upsample(m, (4, 4), "bicubic")


def test_bilinear_matches_scipy_half_pixel_zoom():
    from scipy import ndimage

    m = np.random.default_rng(0).random((5, 7))
    for size in [(13, 17), (3, 4), (5, 20)]:
        ref = ndimage.zoom(m, (size[0] / 5, size[1] / 7), order=1, mode="nearest", grid_mode=True)
        np.testing.assert_allclose(upsample(m, size), ref, atol=1e-12)


def test_bilinear_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    m = np.random.default_rng(1).random((2, 3, 7, 5)).astype(np.float32)
    for size in [(14, 10), (224, 224), (3, 2)]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(m), size=size, mode="bilinear",
                                              align_corners=False).numpy()
        np.testing.assert_allclose(upsample(m, size), ref, atol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_float32_cam_maps_match_scipy_zoom_in_float64(offset):
    """upsampled() resizes in float32: the map equals the float64 reference (scipy) scaled to [0, 1].

    The offset checks that float32 rounding stays relative to each map's range, not its level."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    raw = (offset + rng.random((4, 7, 5))).astype(np.float32)
    for size in [(224, 160), (13, 17), (7, 5), (3, 2)]:
        ref = np.stack([ndimage.zoom(r.astype(np.float64), (size[0] / 7, size[1] / 5), order=1, mode="nearest",
                                     grid_mode=True) for r in raw])
        got = upsampled(raw, size)
        assert got.dtype == np.float32 and got.shape == (4, *size) and got.flags.c_contiguous
        np.testing.assert_allclose(got, normalize01(ref, axis=(1, 2)), atol=2e-6)
        np.testing.assert_array_equal(got.min(axis=(1, 2)), 0)
        np.testing.assert_array_equal(got.max(axis=(1, 2)), 1)


def test_upsampled_constant_map_is_exactly_zero():
    m = upsampled(np.full((2, 7, 7), 0.3, np.float32), (224, 224))
    assert m.shape == (2, 224, 224) and not m.any()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_scaled_matches_float64_normalize01(dtype):
    rng = np.random.default_rng(4)
    maps = (rng.standard_normal((3, 9, 11)) * 5 + 2).astype(dtype)
    maps[1] = 7  # a constant map: all 0
    got = scaled(maps)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, normalize01(maps.astype(np.float64), axis=(1, 2)), atol=2e-7, rtol=0)
    assert not got[1].any() and got[0].max() == 1 and got[2].max() == 1
    before = maps.copy()
    scaled(maps)
    np.testing.assert_array_equal(maps, before)  # the input is not scaled in place


# ----------------------------------------------------------------------------- colour and overlay

def test_colorize_uses_matplotlib_maps_and_clips():
    import matplotlib

    c = colorize(np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]]), "viridis")
    assert c.shape == (1, 5, 3) and c.dtype == np.uint8
    lut = matplotlib.colormaps["viridis"]
    np.testing.assert_array_equal(c[0, 1], lut(0.0, bytes=True)[:3])
    np.testing.assert_array_equal(c[0, 3], lut(1.0, bytes=True)[:3])
    np.testing.assert_array_equal(c[0, 0], c[0, 1])
    np.testing.assert_array_equal(c[0, 4], c[0, 3])
    assert colorize(np.zeros(3), "jet")[0].tolist() == [0, 0, 127]
    with pytest.raises(ValueError, match="colour map"):
        colorize(np.zeros(3), "nope")


def test_overlay_blends_and_resizes_the_map():
    img = np.full((8, 6, 3), 200, np.uint8)
    m = np.ones((2, 3))
    out = overlay(img, m, alpha=0.5, cmap="gray")
    assert out.shape == (8, 6, 3) and out.dtype == np.uint8
    assert (out == 228).all()  # (200 + 255) / 2 rounded
    np.testing.assert_array_equal(overlay(img, m, alpha=0.0), img)
    np.testing.assert_array_equal(overlay(img, np.zeros((8, 6)), alpha=1.0), colorize(np.zeros((8, 6))))


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 1), (4, 5, 4)])
def test_overlay_accepts_grey_and_rgba(shape):
    out = overlay(np.full(shape, 100, np.uint8), np.zeros((4, 5)), alpha=0.0)
    assert out.shape == (4, 5, 3) and (out == 100).all()


def test_overlay_rejects_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), alpha=1.5)
    with pytest.raises(ValueError, match="image"):
        overlay(np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="2-D map"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((1, 4, 4)))


# ----------------------------------------------------------------------------- figures

def texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts + [ax.title]] + [
        fig._suptitle.get_text() if fig._suptitle else ""]


def rendered(fig):
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())


def test_filters_figure():
    fig = filters_figure(np.random.default_rng(0).normal(size=(8, 3, 5, 5)), "conv1")
    assert len(fig.axes) == 1 and "conv1" in texts(fig)
    assert fig.axes[0].images[0].get_array().shape == (17, 17, 3)  # 8 tiles: 3 x 3 with one empty
    assert rendered(fig).std() > 0


def test_activations_figure_labels_channels():
    acts = acts_fixture()
    _, chans = activation_grid(acts, top=3)
    fig = activations_figure(np.zeros((10, 10, 3), np.uint8), acts, chans, "layer3")
    assert len(fig.axes) == 2
    t = texts(fig)
    assert "layer3" in t and "input" in t
    assert [s for s in t if s.isdigit()] == [str(c) for c in chans]
    rendered(fig)


def test_heatmap_figure_title_label_and_colorbar():
    img = np.zeros((16, 16, 3), np.uint8)
    fig = heatmap_figure(img, np.random.default_rng(0).random((4, 4)), "Grad-CAM", label="281 tabby cat")
    assert len(fig.axes) == 2  # image + colour bar
    assert fig.axes[0].get_title() == "Grad-CAM\n281 tabby cat"
    assert len(heatmap_figure(img, np.zeros((16, 16)), colorbar=False).axes) == 1
    rendered(fig)


def test_figures_draw_into_given_axes():
    from onnxviz.render import new_figure

    fig = new_figure()
    ax1, ax2, ax3 = fig.subplots(1, 3)
    assert heatmap_figure(np.zeros((4, 4), np.uint8), np.zeros((4, 4)), ax=ax2, colorbar=False) is fig
    assert ax2.images and not ax1.images
    assert strip_figure([np.zeros((4, 4, 3), np.uint8)] * 2, axes=[ax1, ax3]) is fig
    assert ax1.images and ax3.images
    with pytest.raises(ValueError, match="expected 2 axes"):
        strip_figure([np.zeros((4, 4), np.uint8)] * 2, axes=[ax1])


def test_strip_figure_captions():
    imgs = [np.full((6, 6, 3), v, np.uint8) for v in (0, 128, 255)] + [np.zeros((3, 8), np.uint8)]
    fig = strip_figure(imgs, ["a", "b", "c", "grey"], title="top patches")
    assert len(fig.axes) == 4
    assert {"a", "b", "c", "grey", "top patches"} <= set(texts(fig))
    rendered(fig)
    with pytest.raises(ValueError, match="captions"):
        strip_figure(imgs, ["a"])
    with pytest.raises(ValueError, match="at least one"):
        strip_figure([])


# ----------------------------------------------------------------------------- writing outputs

def test_atomic_write_replaces_on_success(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with atomic_write(p, "w") as f:
        f.write("new")
        assert p.read_text() == "old"  # nothing visible until the block ends
    assert p.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_keeps_old_file_when_the_writer_raises(tmp_path, exc):
    p = tmp_path / "out.bin"
    p.write_bytes(b"old")
    with pytest.raises(exc):
        with atomic_write(p) as f:
            f.write(b"half a fi")
            raise exc()
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]  # no temp file left behind


def test_atomic_write_permissions_follow_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.bin") as f:
            f.write(b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == 0o644


def test_atomic_write_errors(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "a", "a"):
            pass
    with pytest.raises(OnnxvizError, match="does not exist"):
        with atomic_write(tmp_path / "no" / "a"):
            pass


def test_save_json_converts_numpy(tmp_path):
    import json

    obj = {"score": np.float32(0.5), "index": np.int64(3), "map": np.arange(3), np.int64(7): "seven",
           "bad": float("nan"), "inf": np.float64("inf"), "ok": np.bool_(True), "path": tmp_path,
           "pair": (1, 2)}
    p = save_json(obj, tmp_path / "r.json")
    assert json.loads(p.read_text()) == {"score": 0.5, "index": 3, "map": [0, 1, 2], "7": "seven",
                                         "bad": None, "inf": None, "ok": True, "path": str(tmp_path),
                                         "pair": [1, 2]}
    with pytest.raises(TypeError, match="object"):
        save_json({"x": object()}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_save_npy_round_trip(tmp_path):
    a = np.random.default_rng(0).random((2, 3)).astype(np.float32)
    p = save_npy(a, tmp_path / "a.npy")
    b = np.load(p)
    assert b.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_save_png_round_trip_and_checks(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(save_png(a, tmp_path / "a.png"))), a)
    g = save_png(a[..., :1], tmp_path / "g.png")
    assert Image.open(g).mode == "L"
    with pytest.raises(OnnxvizError, match="uint8"):
        save_png(a.astype(np.float32), tmp_path / "f.png")
    with pytest.raises(OnnxvizError, match="shape"):
        save_png(np.zeros((2, 2, 2), np.uint8), tmp_path / "f.png")
    assert not (tmp_path / "f.png").exists()


def test_save_figure_formats(tmp_path):
    fig = heatmap_figure(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), "cam")
    png = save_figure(fig, tmp_path / "cam.png", dpi=50)
    assert Image.open(png).format == "PNG"
    svg = save_figure(fig, tmp_path / "cam.svg")
    assert "<svg" in svg.read_text()
    assert sorted(os.listdir(tmp_path)) == ["cam.png", "cam.svg"]


def test_ensure_out_dir(tmp_path):
    d = ensure_out_dir(tmp_path / "a" / "b")
    assert d.is_dir() and ensure_out_dir(d) == d
    (tmp_path / "file").write_text("x")
    with pytest.raises(OnnxvizError, match="not a folder"):
        ensure_out_dir(tmp_path / "file")


def test_check_not_input(tmp_path, monkeypatch):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    check_not_input(tmp_path / "out.png", [model])  # fine
    with pytest.raises(OnnxvizError, match="model.onnx"):
        check_not_input(model, [tmp_path / "img.png", model])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OnnxvizError):
        check_not_input("sub/../model.onnx", [model])
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    with pytest.raises(OnnxvizError):
        check_not_input(link, [model])
    hard = tmp_path / "hard.onnx"
    os.link(model, hard)
    with pytest.raises(OnnxvizError):
        check_not_input(hard, [model])
