"""Reading images and labels, preprocessing presets, geometry, and the round trip back to pixels."""
import json

import numpy as np
import pytest
from PIL import Image

from onnxviz.errors import ImageError, OnnxvizError
from onnxviz.images import (Geometry, Preprocess, deprocess, geometries, load_labels, preprocess,
                            read_image, to_rgb_or_l)
from onnxviz.spec import InputSpec

F32 = np.dtype("float32")


def spec(layout="NCHW", channels=3, h=2, w=2, dtype=F32):
    return InputSpec("x", layout, channels, h, w, np.dtype(dtype))


def rgb_image(pixels):
    return Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB")


PIX = np.array([[[0, 128, 255], [10, 20, 30]], [[255, 255, 255], [51, 102, 204]]], dtype=np.uint8)


# ----------------------------------------------------------------------------- normalization

def test_imagenet_preset_is_torchvision_normalize():
    x = preprocess([rgb_image(PIX)], spec(), Preprocess(norm="imagenet"))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = ((PIX / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    assert x.dtype == np.float32 and x.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("norm, lo, hi, mid", [
    ("unit", 0.0, 1.0, 51 / 255), ("symmetric", -1.0, 1.0, 51 / 127.5 - 1), ("raw", 0.0, 255.0, 51.0)])
def test_range_presets_exact(norm, lo, hi, mid):
    pix = np.array([[[0, 0, 0], [255, 255, 255]], [[51, 51, 51], [51, 51, 51]]])
    x = preprocess([rgb_image(pix)], spec(dtype="float64"), Preprocess(norm=norm))
    assert x[0, :, 0, 0].tolist() == [lo] * 3
    assert x[0, :, 0, 1].tolist() == [hi] * 3
    np.testing.assert_allclose(x[0, :, 1, 0], mid, rtol=0, atol=1e-12)


def test_caffe_preset_is_bgr_minus_mean():
    pre = Preprocess(norm="caffe")
    assert pre.bgr is True
    x = preprocess([rgb_image(PIX)], spec(dtype="float64"), pre)
    r, g, b = PIX[0, 0].astype(float)
    np.testing.assert_allclose(x[0, :, 0, 0], [b - 103.939, g - 116.779, r - 123.68])


def test_bgr_reverses_channels_and_preset_mean():
    img = rgb_image(PIX)
    rgb = preprocess([img], spec(), Preprocess(norm="unit"))
    bgr = preprocess([img], spec(), Preprocess(norm="unit", bgr=True))
    np.testing.assert_array_equal(bgr, rgb[:, ::-1])
    # the ImageNet statistics follow the channels: channel 0 of a BGR model is blue
    x = preprocess([img], spec(dtype="float64"), Preprocess(norm="imagenet", bgr=True))
    np.testing.assert_allclose(x[0, 0, 0, 0], (255 / 255 - 0.406) / 0.225)


def test_custom_mean_std_in_255_units_match_0_1_units():
    a = Preprocess.from_options(mean=(104, 117, 123), std=(58, 57, 57), scale=255, bgr=True)
    b = Preprocess.from_options(mean=np.array([104, 117, 123]) / 255, std=np.array([58, 57, 57]) / 255,
                                bgr=True)
    assert a.norm == "custom" and a.bgr
    np.testing.assert_allclose(a.stats(3)[0], [104, 117, 123])
    np.testing.assert_allclose(a.stats(3)[0], b.stats(3)[0])
    x = preprocess([rgb_image(PIX)], spec(dtype="float64"), a)
    r, g, bl = PIX[1, 1].astype(float)
    np.testing.assert_allclose(x[0, :, 1, 1], [(bl - 104) / 58, (g - 117) / 57, (r - 123) / 57])


def test_custom_missing_std_defaults_to_one_in_given_units():
    pre = Preprocess.from_options(mean="104, 117, 123", scale=255)
    mean, std = pre.stats(3)
    np.testing.assert_allclose(std, [1, 1, 1])
    np.testing.assert_allclose(mean, [104, 117, 123])


@pytest.mark.parametrize("kwargs, words", [
    (dict(mean=(0.5, 0.5)), "1 or 3"),
    (dict(mean=(104, 117, 123)), "scale=255"),
    (dict(norm="imagenet", mean=(0.5,)), "custom"),
    (dict(norm="custom"), "mean"),
    (dict(norm="nope"), "imagenet"),
    (dict(std=(0.5, 0, 0.5)), "positive"),
    (dict(mean="a,b,c"), "numbers"),
    (dict(mean=0.5, scale=10), "scale"),
    (dict(resize="squash"), "shorter"),
    (dict(size="224x"), "HxW"),
    (dict(size=(0, 224)), "HxW"),
    (dict(size=(224, 224, 3)), "HxW"),
    (dict(crop=1.5), "crop"),
    (dict(grayscale="avg"), "luma"),
])
def test_from_options_rejects_bad_combinations(kwargs, words):
    with pytest.raises(ImageError, match=words):
        Preprocess.from_options(**kwargs)


def test_from_options_defaults_aliases_and_sizes():
    assert Preprocess.from_options() == Preprocess(norm="imagenet", bgr=False)
    assert Preprocess.from_options(norm="torch").norm == "imagenet"
    assert Preprocess.from_options(norm="TF").norm == "symmetric"
    assert Preprocess.from_options(norm="caffe", bgr=False).bgr is False
    assert Preprocess.from_options(size=224).size == (224, 224)
    assert Preprocess.from_options(size="224x160").size == (224, 160)
    assert Preprocess.from_options(size=[300, 200]).size == (300, 200)


def test_direct_construction_is_validated_too():
    with pytest.raises(ImageError, match="custom"):
        Preprocess(norm="raw", mean=(0.1,), std=(1.0,))
    with pytest.raises(ImageError, match="scale=255"):
        Preprocess(norm="custom", mean=(104.0,), std=(1.0,))


# ----------------------------------------------------------------------------- layout, channels, dtype

def test_nhwc_is_nchw_transposed():
    img = rgb_image(PIX)
    nchw = preprocess([img, img], spec("NCHW"), Preprocess())
    nhwc = preprocess([img, img], spec("NHWC"), Preprocess())
    assert nhwc.shape == (2, 2, 2, 3) and nhwc.flags.c_contiguous
    np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 1))


def test_grayscale_model_uses_luma_or_mean():
    red = rgb_image(np.full((2, 2, 3), (255, 0, 0)))
    x = preprocess([red], spec(channels=1, dtype="float64"), Preprocess(norm="unit"))
    assert x.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(x, 0.299)
    x = preprocess([red], spec(channels=1, dtype="float64"), Preprocess(norm="unit", grayscale="mean"))
    np.testing.assert_allclose(x, 1 / 3)
    # a preset on a grey model uses the average of its RGB statistics
    x = preprocess([Image.new("L", (2, 2), 255)], spec(channels=1, dtype="float64"), Preprocess())
    np.testing.assert_allclose(x, (1 - 0.449) / 0.226)


def test_grey_image_into_rgb_model_is_replicated():
    x = preprocess([Image.new("L", (2, 2), 51)], spec(), Preprocess(norm="unit"))
    np.testing.assert_allclose(x, 0.2, rtol=1e-6)


def test_custom_three_means_on_grey_model_is_an_error():
    pre = Preprocess.from_options(mean=(0.1, 0.2, 0.3), std=0.2)
    with pytest.raises(ImageError, match="3 values but the model takes 1"):
        preprocess([Image.new("L", (2, 2))], spec(channels=1), pre)


def test_other_channel_counts_are_refused():
    with pytest.raises(ImageError, match="4 channels"):
        preprocess([rgb_image(PIX)], spec(channels=4), Preprocess())


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_output_dtype_follows_the_model(dtype):
    assert preprocess([rgb_image(PIX)], spec(dtype=dtype), Preprocess()).dtype == np.dtype(dtype)


def test_uint8_model_gets_raw_pixels_and_refuses_scaled_norms():
    x = preprocess([rgb_image(PIX)], spec("NHWC", dtype="uint8"), Preprocess(norm="raw"))
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x[0], PIX)
    with pytest.raises(ImageError, match="norm='raw'"):
        preprocess([rgb_image(PIX)], spec(dtype="uint8"), Preprocess(norm="imagenet"))


def test_rgba_and_palette_images_given_directly_are_converted():
    rgba = Image.fromarray(np.dstack([PIX, np.full((2, 2), 255, np.uint8)]), "RGBA")
    a = preprocess([rgba], spec(), Preprocess())
    b = preprocess([rgb_image(PIX)], spec(), Preprocess())
    np.testing.assert_array_equal(a, b)


def test_empty_batch_is_an_error():
    with pytest.raises(ImageError, match="no images"):
        preprocess([], spec(), Preprocess())


# ----------------------------------------------------------------------------- size and geometry

def test_dynamic_size_keeps_shared_image_size():
    dyn = spec(h=None, w=None)
    x = preprocess([Image.new("RGB", (7, 5)), Image.new("RGB", (7, 5))], dyn, Preprocess())
    assert x.shape == (2, 3, 5, 7)


def test_dynamic_size_with_mixed_images_asks_for_size():
    dyn = spec(h=None, w=None)
    imgs = [Image.new("RGB", (7, 5)), Image.new("RGB", (8, 5))]
    with pytest.raises(ImageError, match="--size"):
        preprocess(imgs, dyn, Preprocess())
    assert preprocess(imgs, dyn, Preprocess(size=(4, 6))).shape == (2, 3, 4, 6)


def test_size_that_contradicts_a_fixed_input_is_an_error():
    with pytest.raises(ImageError, match="fixed at 2"):
        preprocess([rgb_image(PIX)], spec(), Preprocess(size=(4, 4)))


def stripes(h=40, w=80):
    """Left third red, middle green, right blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 3, 0] = 255
    a[:, w // 3: 2 * w // 3, 1] = 255
    a[:, 2 * w // 3:, 2] = 255
    return Image.fromarray(a)


def test_shorter_resize_center_crops_and_stretch_keeps_everything():
    img, s = stripes(), spec(h=20, w=20, dtype="float64")
    (g,) = geometries([img], s, Preprocess(resize="shorter"))
    assert g == Geometry((40, 80), (20, 40), (0, 10), (20, 20))
    x = preprocess([img], s, Preprocess(norm="unit", resize="shorter"))
    # the crop keeps columns 10-29 of the 40 px wide resize, where red ends at 13.3 and blue
    # starts at 26.7: a third of each side stripe is cut off
    assert x[0, 1, :, 5:15].min() > 0.99
    assert x[0, 0, :, 5:].max() < 0.01 and x[0, 2, :, :15].max() < 0.01
    np.testing.assert_allclose(x[0, 0].mean(), 10 / 3 / 20, atol=0.02)
    x = preprocess([img], s, Preprocess(norm="unit", resize="stretch"))
    np.testing.assert_allclose(x[0].mean(axis=(1, 2)), [1 / 3] * 3, atol=0.02)


def test_crop_fraction_matches_torchvision_resize256_centercrop224():
    g = Geometry.fit((300, 400), (224, 224), "shorter", crop=0.875)
    # Resize(256): short side 256, long side int(256 * 400 / 300) = 341; CenterCrop offsets round(x / 2)
    assert g.resized == (256, 341) and g.offset == (16, 58)
    g = Geometry.fit((400, 300), (224, 224), "shorter", crop=0.875)
    assert g.resized == (341, 256) and g.offset == (58, 16)


def test_to_original_maps_boxes_back():
    g = Geometry.fit((480, 640), (240, 240), "shorter")
    assert g.resized == (240, 320) and g.offset == (0, 40)
    assert g.to_original((0, 0, 240, 240)) == (80.0, 0.0, 560.0, 480.0)
    assert g.to_original((10, 20, 30, 40)) == (100.0, 40.0, 140.0, 80.0)
    # a receptive field that overhangs the input is clipped to the image unless asked not to
    assert g.to_original((-100, -5, 300, 250)) == (0.0, 0.0, 640.0, 480.0)
    assert g.to_original((-100, 0, 0, 0), clip=False)[0] == -120.0
    s = Geometry.fit((100, 50), (10, 10), "stretch")
    assert s.scale == (0.1, 0.2) and s.to_original((1, 1, 2, 3)) == (5.0, 10.0, 10.0, 30.0)


def test_crop_returns_the_original_patch_under_a_model_box():
    a = np.zeros((100, 200, 3), np.uint8)
    a[40:60, 120:140] = 255  # a white square in the original
    img = Image.fromarray(a)
    (g,) = geometries([img], spec(h=50, w=100), Preprocess(resize="stretch"))
    patch = g.crop(img, (60, 20, 70, 30))
    assert patch.size == (20, 20) and np.asarray(patch).min() == 255
    # fractional boxes round outward and stay at least one pixel
    g3 = Geometry.fit((90, 90), (30, 30), "stretch")
    assert g3.crop(img, (1.2, 1.2, 1.3, 1.3)).size == (1, 1)
    assert g3.crop(img, (1.5, 1.5, 2.5, 2.5)).size == (4, 4)


# ----------------------------------------------------------------------------- back to pixels

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("norm, bgr", [("imagenet", False), ("imagenet", True), ("symmetric", False),
                                       ("raw", False), ("caffe", None), ("unit", True)])
def test_deprocess_undoes_preprocess(layout, norm, bgr):
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, (2, 6, 5, 3), dtype=np.uint8)
    pre, s = Preprocess(norm=norm, bgr=bgr), spec(layout, h=6, w=5)
    x = preprocess([rgb_image(p) for p in pix], s, pre)
    out = deprocess(x, s, pre)
    assert out.dtype == np.uint8 and out.shape == (2, 6, 5, 3)
    np.testing.assert_array_equal(out, pix)


def test_deprocess_custom_and_grey_and_clipping():
    pre = Preprocess.from_options(mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1))
    pix = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(deprocess(preprocess([rgb_image(pix)], spec(h=4, w=4), pre),
                                            spec(h=4, w=4), pre)[0], pix)
    grey = spec("NHWC", channels=1)
    x = preprocess([Image.new("L", (2, 2), 77)], grey, Preprocess())
    out = deprocess(x, grey, Preprocess())
    assert out.shape == (1, 2, 2, 3) and (out == 77).all()
    wild = np.array([-10.0, 10.0]).reshape(1, 1, 1, 2).repeat(3, axis=1)  # (1, 3, 1, 2)
    np.testing.assert_array_equal(deprocess(wild, spec(h=1, w=2), Preprocess(norm="unit"))[0, 0],
                                  [[0, 0, 0], [255, 255, 255]])


def test_deprocess_rejects_wrong_shapes():
    with pytest.raises(ImageError, match="4-D"):
        deprocess(np.zeros((3, 2, 2)), spec(), Preprocess())
    with pytest.raises(ImageError, match="channels"):
        deprocess(np.zeros((1, 2, 2, 2)), spec(), Preprocess())


# ----------------------------------------------------------------------------- reading files

def noise_png(path, size=64):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def test_reads_rgb_fully_and_detached_from_the_file(tmp_path):
    p = noise_png(tmp_path / "a.png")
    want = np.asarray(Image.open(p)).copy()
    img = read_image(p)
    p.unlink()  # the pixels must already be in memory
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), want)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="not found: .*nope.png"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)


def test_text_file_renamed_png(tmp_path):
    p = tmp_path / "fake.png"
    p.write_text("hello, I am not a picture\n")
    with pytest.raises(ImageError, match="fake.png is not an image"):
        read_image(p)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_files(tmp_path, fmt, keep):
    full = tmp_path / f"full.{fmt.lower()}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(full, fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError, match="cut"):
        read_image(cut)


def test_png_with_corrupt_data(tmp_path):
    data = bytearray(noise_png(tmp_path / "a.png").read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="bad.png"):
        read_image(bad)


@pytest.mark.parametrize("limit", [100, 300])  # 400 pixels: over 2x the limit raises, over 1x warns
def test_decompression_bomb(tmp_path, monkeypatch, limit):
    p = tmp_path / "bomb.png"
    Image.new("RGB", (20, 20)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageError, match="bomb.png is too large.*MAX_IMAGE_PIXELS"):
        read_image(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert read_image(p).size == (20, 20)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    p = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 128 * 257, 65535, 1000]], dtype=np.uint16)).save(p)
    assert Image.open(p).mode.startswith("I")
    img = read_image(p)
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), [[0, 128, 255, 4]])


def test_int32_and_float_tiffs(tmp_path):
    p = tmp_path / "wide.tif"
    Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32)).save(p)
    np.testing.assert_array_equal(np.asarray(read_image(p)), [[0, 128, 255]])  # min-max stretched
    q = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(q)
    np.testing.assert_array_equal(np.asarray(read_image(q)), [[0, 128, 255]])


def test_palette_png(tmp_path):
    p = tmp_path / "pal.png"
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putdata([0, 1])
    img.save(p)
    out = read_image(p)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), [[[255, 0, 0], [0, 0, 255]]])
    img.save(p, transparency=1)  # the blue entry is transparent
    np.testing.assert_array_equal(np.asarray(read_image(p)), [[[255, 0, 0], [255, 255, 255]]])
    np.testing.assert_array_equal(np.asarray(read_image(p, background=0)), [[[255, 0, 0], [0, 0, 0]]])


def test_rgba_is_composited_on_the_background(tmp_path):
    p = tmp_path / "alpha.png"
    px = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(px, "RGBA").save(p)
    white = np.asarray(read_image(p))
    black = np.asarray(read_image(p, background=0))
    np.testing.assert_array_equal(white, [[[255, 0, 0], [255, 255, 255], [127, 127, 127]]])
    np.testing.assert_array_equal(black, [[[255, 0, 0], [0, 0, 0], [0, 0, 0]]])


def test_grey_alpha_stays_grey(tmp_path):
    p = tmp_path / "la.png"
    Image.fromarray(np.array([[[200, 255], [200, 0]]], dtype=np.uint8), "LA").save(p)
    out = read_image(p)
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), [[200, 255]])


def test_bilevel_becomes_grey(tmp_path):
    p = tmp_path / "bw.png"
    Image.new("1", (3, 1), 1).save(p)
    out = read_image(p)
    assert out.mode == "L" and np.asarray(out).tolist() == [[255, 255, 255]]


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=95)
    assert Image.open(p).mode == "CMYK"
    out = np.asarray(read_image(p)).astype(int)
    assert out.shape == (16, 16, 3)
    assert np.abs(out - [255, 0, 0]).max() <= 8  # red


def test_exif_orientation_is_applied(tmp_path):
    p = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    Image.new("RGB", (40, 20), (0, 128, 0)).save(p, exif=exif)
    assert read_image(p).size == (20, 40)


def test_to_rgb_or_l_on_unreadable_mode():
    img = Image.new("RGB", (2, 2)).convert("HSV")
    assert to_rgb_or_l(img).mode == "RGB"


# ----------------------------------------------------------------------------- labels

def test_text_labels_keep_whole_lines(tmp_path):
    p = tmp_path / "synset.txt"
    p.write_text("n01440764 tench, Tinca tinca\r\nn01443537 goldfish\n\nn01484850 great white shark\n\n  \n",
                 encoding="utf-8")
    assert load_labels(p) == ["n01440764 tench, Tinca tinca", "n01443537 goldfish", "",
                              "n01484850 great white shark"]


def test_text_labels_with_bom(tmp_path):
    p = tmp_path / "l.txt"
    p.write_bytes("\ufeffcat\ndog\n".encode("utf-8"))
    assert load_labels(p) == ["cat", "dog"]


@pytest.mark.parametrize("data, want", [
    (["cat", "dog"], ["cat", "dog"]),
    ({"1": "dog", "0": "cat"}, ["cat", "dog"]),
    ({"0": ["n02123045", "tabby"], "1": ["n02085620", "Chihuahua"]}, ["tabby", "Chihuahua"]),
    ({"cat": 0, "dog": 1}, ["cat", "dog"]),
    ({"0": "cat", "2": "bird"}, ["cat", "class 1", "bird"]),
    ([["n1", "a"], 7], ["a", "7"]),
])
def test_json_labels(tmp_path, data, want):
    p = tmp_path / "labels.json"
    p.write_text(json.dumps(data))
    assert load_labels(p) == want


def test_json_labels_detected_without_suffix(tmp_path):
    p = tmp_path / "imagenet_class_index"
    p.write_text(json.dumps({"0": ["n01440764", "tench"]}))
    assert load_labels(p) == ["tench"]


@pytest.mark.parametrize("name, content, words", [
    ("bad.json", '{"0": "cat",', "not valid JSON"),
    ("scalar.json", "42", "list or object"),
    ("key.json", '{"cat": "dog"}', "not a class index"),
    ("neg.json", '{"-1": "x"}', "not a class index"),
    ("empty.txt", "\n\n", "empty"),
    ("empty.json", "[]", "no labels"),
    ("nested.json", '[{"a": 1}]', "cannot read a label"),
])
def test_bad_label_files(tmp_path, name, content, words):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(OnnxvizError, match=words):
        load_labels(p)


def test_missing_and_binary_label_files(tmp_path):
    with pytest.raises(OnnxvizError, match="not found"):
        load_labels(tmp_path / "labels.txt")
    p = tmp_path / "labels.txt"
    p.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(OnnxvizError, match="not UTF-8"):
        load_labels(p)
