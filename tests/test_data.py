import numpy as np
import pytest
import torch
from conftest import ROOT, make_photo
from PIL import Image, ImageFilter
from torch.nn import functional as F

from Deblur import blur_kernel, image_to_tensor, load_image_pair
from support import resolve_image_path


def saved(image, tmp_path, name="input.png", **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_pair_is_resized_to_a_square_and_blurred_with_pillows_gaussian(tmp_path):
    path = saved(make_photo((60, 45)), tmp_path)
    sharp, blurred = load_image_pair(path, 32, radius=2.0)
    assert sharp.size == blurred.size == (32, 32) and sharp.mode == "RGB"
    assert np.array_equal(
        np.asarray(blurred), np.asarray(sharp.filter(ImageFilter.GaussianBlur(radius=2.0)))
    )
    assert not np.array_equal(np.asarray(blurred), np.asarray(sharp))


def test_tensors_are_float_nchw_in_0_1(tmp_path):
    sharp, _ = load_image_pair(saved(make_photo(), tmp_path), 32)
    tensor = image_to_tensor(sharp, torch.device("cpu"))
    assert tensor.shape == (1, 3, 32, 32) and tensor.dtype == torch.float32
    assert tensor.min() >= 0 and tensor.max() <= 1
    assert torch.equal(
        tensor[0, :, 3, 5] * 255, torch.tensor(sharp.getpixel((5, 3)), dtype=torch.float32)
    )


def test_grayscale_image_is_converted_to_rgb(tmp_path, capsys):
    sharp, _ = load_image_pair(saved(make_photo().convert("L"), tmp_path), 32, radius=1)
    pixels = np.asarray(sharp)
    assert sharp.mode == "RGB" and np.array_equal(pixels[..., 0], pixels[..., 2])
    assert "converted it from L to RGB" in capsys.readouterr().out


def test_transparent_pixels_are_composited_on_white(tmp_path, capsys):
    image = make_photo().convert("RGBA")
    image.putalpha(0)
    sharp, _ = load_image_pair(saved(image, tmp_path), 32, radius=1)
    assert np.all(np.asarray(sharp) == 255)
    assert "composited it on white" in capsys.readouterr().out


def test_16_bit_greyscale_is_rescaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 48 * 48).reshape(48, 48)).astype(np.uint16)
    path = saved(Image.fromarray(ramp), tmp_path)
    assert Image.open(path).mode.startswith("I")
    sharp, _ = load_image_pair(path, 48, radius=1)
    pixels = np.asarray(sharp)[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels)) > 200


def test_exif_orientation_is_applied_before_resizing(tmp_path, capsys):
    image = Image.new("RGB", (40, 20), "black")
    image.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sharp, _ = load_image_pair(
        saved(image, tmp_path, "rotated.jpg", exif=exif, quality=95), 32, radius=0
    )
    top, bottom = np.asarray(sharp)[2, 16], np.asarray(sharp)[29, 16]
    assert top[0] > 200 > bottom[0]  # displayed upright, the red half is on top
    assert "EXIF orientation" in capsys.readouterr().out


@pytest.mark.parametrize(
    "size, words, not_words",
    [
        (
            (10, 12),
            ["10x12", "stretching it: it will look soft", "not keeping its aspect ratio"],
            [],
        ),
        ((1, 4000), ["1x4000", "stretching it", "not keeping its aspect ratio"], ["upscal"]),
        ((64, 64), [], ["resized"]),
    ],
)
def test_resizing_is_announced_as_it_is(tmp_path, capsys, size, words, not_words):
    sharp, _ = load_image_pair(saved(make_photo(size), tmp_path), 32, radius=1)
    out = capsys.readouterr().out
    assert sharp.size == (32, 32)
    assert all(word in out for word in words) and not any(word in out for word in not_words), out


def test_relative_image_path_is_found_next_to_the_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_image_path("data/sample.jpg") == ROOT / "data" / "sample.jpg"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample.jpg").write_bytes(b"")
    assert resolve_image_path("data/sample.jpg") == type(ROOT)("data/sample.jpg")


@pytest.mark.parametrize("mode", ["P", "LA", "CMYK"])
def test_other_modes_become_rgb(tmp_path, mode):
    path = saved(
        make_photo().convert(mode), tmp_path, "input.jpg" if mode == "CMYK" else "input.png"
    )
    sharp, blurred = load_image_pair(path, 32, radius=1)
    assert sharp.mode == blurred.mode == "RGB"


# ---- Blur kinds and their kernels


@pytest.mark.parametrize(
    "kind, radius, angle, shape, support",
    [
        ("gaussian", 5.0, 0, (31, 31), 31 * 31),
        ("box", 2.0, 0, (5, 5), 25),
        ("defocus", 3.0, 0, (7, 7), 29),  # the pixels within 3 of the centre
        ("motion", 3.0, 0, (7, 7), 7),  # one row, 2 * radius + 1 long
        ("motion", 3.0, 90, (7, 7), 7),  # one column
    ],
)
def test_each_kernel_sums_to_1_and_has_the_expected_support(kind, radius, angle, shape, support):
    kernel = blur_kernel(kind, radius, angle)
    assert kernel.shape == shape
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12) and (kernel >= 0).all()
    assert np.count_nonzero(kernel > 1e-12) == support


def test_motion_kernels_follow_their_angle():
    assert np.count_nonzero(blur_kernel("motion", 3.0, 0)[3]) == 7  # the middle row
    assert np.count_nonzero(blur_kernel("motion", 3.0, 90)[:, 3]) == 7  # the middle column
    diagonal = blur_kernel("motion", 3.0, 45)
    assert (
        diagonal[1, 5] > 0 and diagonal[5, 1] > 0 and diagonal[1, 1] == diagonal[5, 5] == 0
    )  # 45 degrees: up-right


def test_gaussian_kernel_has_the_radius_as_its_standard_deviation():
    kernel = blur_kernel("gaussian", 5.0)
    profile, offsets = kernel.sum(axis=0), np.arange(31) - 15
    assert np.sqrt((profile * offsets**2).sum()) == pytest.approx(5.0, abs=1e-3)


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(np.pad(np.full((16, 16), 255, np.uint8), 40)).convert(
            "RGB"
        ),  # a sampled Gaussian is 3.5 off
        Image.fromarray(
            (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)
        ),  # 1.5 off
        make_photo((96, 96), seed=3),
    ],
    ids=["white square", "noise", "photo"],
)
def test_gaussian_kernel_reproduces_pillows_blur_away_from_the_borders(image):
    pillow = np.asarray(image.filter(ImageFilter.GaussianBlur(radius=5)), dtype=np.float64)
    kernel = torch.from_numpy(blur_kernel("gaussian", 5.0))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float64)).permute(2, 0, 1)[:, None]
    ours = (
        F.conv2d(F.pad(pixels, [15] * 4, mode="replicate"), kernel[None, None])[:, 0]
        .permute(1, 2, 0)
        .numpy()
    )
    assert (
        np.abs(ours - pillow)[15:-15, 15:-15].max() <= 1.0
    )  # within 1/255 of Pillow's 8-bit output


@pytest.mark.parametrize("kind", ["box", "defocus", "motion"])
def test_other_kinds_blur_with_their_kernel(tmp_path, kind):
    sharp, blurred = load_image_pair(saved(make_photo((40, 40)), tmp_path), 40, kind, 2.0, 30.0)
    kernel = blur_kernel(kind, 2.0, 30.0)
    window = np.asarray(sharp, dtype=np.float64)[
        18:23, 8:13
    ]  # the 5x5 neighbourhood of pixel (20, 10)
    expected = (window * kernel[:, :, None]).sum(axis=(0, 1))
    assert np.abs(np.asarray(blurred, dtype=np.float64)[20, 10] - expected).max() <= 0.5 + 1e-9
