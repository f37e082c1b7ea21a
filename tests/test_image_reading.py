"""Reading a user's image: every mode and format Pillow reads becomes 8-bit RGB, said so."""

import errno

import numpy as np
import pytest
import torch
from conftest import ROOT, image_pair, make_photo, run_deblur, save_photo
from PIL import Image, features
from torch.nn import functional as F

from plumbing import images
from plumbing.images import read_sharp, resolve_image_path


def sharp_of(path, size=32):
    return read_sharp(path, size)


def test_grayscale_image_is_converted_to_rgb(tmp_path, capsys):
    sharp = sharp_of(save_photo(tmp_path, image=make_photo().convert("L")))
    pixels = np.asarray(sharp)
    assert sharp.mode == "RGB" and np.array_equal(pixels[..., 0], pixels[..., 2])
    assert "converted it from L to RGB" in capsys.readouterr().out


def test_transparent_pixels_are_composited_on_white(tmp_path, capsys):
    image = make_photo().convert("RGBA")
    image.putalpha(0)
    assert np.all(np.asarray(sharp_of(save_photo(tmp_path, image=image))) == 255)
    assert "composited it on white" in capsys.readouterr().out


def test_16_bit_greyscale_is_rescaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 48 * 48).reshape(48, 48)).astype(np.uint16)
    path = save_photo(tmp_path, image=Image.fromarray(ramp))
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(sharp_of(path, 48))[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels)) > 200


def test_32_bit_float_images_are_rescaled_not_clipped_to_black(tmp_path):
    ramp = np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48)  # as a scientist saves it
    path = save_photo(tmp_path, "float.tiff", image=Image.fromarray(ramp, mode="F"))
    pixels = np.asarray(sharp_of(path, 48))[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels)) > 200


def test_exif_orientation_is_applied_before_resizing(tmp_path, capsys):
    image = Image.new("RGB", (40, 20), "black")
    image.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save_photo(tmp_path, "rotated.jpg", image=image, exif=exif, quality=95)
    sharp = read_sharp(path, 32)
    top, bottom = np.asarray(sharp)[2, 16], np.asarray(sharp)[29, 16]
    assert top[0] > 200 > bottom[0]  # displayed upright, the red half is on top
    assert "EXIF orientation" in capsys.readouterr().out


@pytest.mark.parametrize(
    "size, words, not_words",
    [
        ((10, 12), ["10x12", "stretching it: it will look soft", "not keeping its aspect"], []),
        ((1, 4000), ["1x4000", "stretching it", "not keeping its aspect ratio"], ["upscal"]),
        ((64, 64), [], ["resized"]),
    ],
    ids=["small and not square", "a line of pixels", "square and large enough"],
)
def test_resizing_is_announced_as_it_is(tmp_path, capsys, size, words, not_words):
    assert sharp_of(save_photo(tmp_path, size=size)).size == (32, 32)
    out = capsys.readouterr().out
    assert all(word in out for word in words) and not any(word in out for word in not_words), out


def test_relative_image_path_is_found_next_to_the_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_image_path("data/sample.jpg", "image_path") == ROOT / "data" / "sample.jpg"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample.jpg").write_bytes(b"")
    assert resolve_image_path("data/sample.jpg", "image_path") == type(ROOT)("data/sample.jpg")


def exif_rotated(folder):
    exif = Image.Exif()
    exif[0x0112] = 8
    return save_photo(folder, "rotated.jpg", exif=exif)


GOOD_INPUTS = {
    "greyscale L": lambda d: save_photo(d, "l.png", image=make_photo().convert("L")),
    "palette P": lambda d: save_photo(d, "p.png", image=make_photo().convert("P")),
    "RGBA": lambda d: save_photo(d, "rgba.png", image=make_photo().convert("RGBA")),
    "LA": lambda d: save_photo(d, "la.png", image=make_photo().convert("LA")),
    "CMYK JPEG": lambda d: save_photo(d, "cmyk.jpg", image=make_photo().convert("CMYK")),
    "16-bit PNG": lambda d: save_photo(
        d, "i16.png", image=make_photo().convert("L").convert("I;16")
    ),
    "EXIF orientation": exif_rotated,
    "BMP": lambda d: save_photo(d, "photo.bmp"),
    "TIFF": lambda d: save_photo(d, "photo.tiff"),
    "WebP": lambda d: save_photo(d, "photo.webp", lossless=True),
    "non-square": lambda d: save_photo(d, "wide.png", size=(90, 30)),
    "very small": lambda d: save_photo(d, "small.png", size=(8, 8)),
}


@pytest.mark.parametrize("kind", GOOD_INPUTS)
def test_inputs_that_must_work_become_a_32_pixel_rgb_pair(tmp_path, kind):
    if kind == "WebP" and not features.check("webp"):
        pytest.skip("this Pillow was built without WebP")
    blurred, sharp, _, _ = image_pair(GOOD_INPUTS[kind](tmp_path), 32, radius=1.0)
    assert blurred.shape == sharp.shape == (1, 3, 32, 32)
    assert sharp.std() > 0  # a picture, not a blank


def test_unreadable_file_is_refused(photo_path, tmp_path, monkeypatch, capsys):
    # Root reads any file whatever its mode bits, so the refusal itself is simulated.
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(images.Image, "open", denied)
    assert run_deblur(photo_path, tmp_path) == 2
    assert f"cannot read {photo_path}: [Errno 13] Permission denied" in capsys.readouterr().err


def test_a_float_image_with_a_nan_pixel_is_refused_by_name(tmp_path, capsys):
    pixels = np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48)
    pixels[5, 7] = np.nan
    path = save_photo(tmp_path, "nan.tiff", image=Image.fromarray(pixels, mode="F"))
    assert run_deblur(path, tmp_path / "out") == 2
    error = capsys.readouterr().err.strip()
    assert "has 1 NaN or infinite pixels" in error and "\n" not in error


def test_32_bit_integers_are_scaled_by_their_largest_value_and_said(tmp_path, capsys):
    ramp = np.linspace(0, 255000, 48 * 48).reshape(48, 48).astype(np.int32)
    path = save_photo(tmp_path, "wide.tiff", image=Image.fromarray(ramp, mode="I"))
    pixels = np.asarray(sharp_of(path, 48))[..., 0]
    assert pixels.max() == 255 and len(np.unique(pixels)) > 200  # not saturated to white
    assert "scaled its I values from 0..255000 to 0..255" in capsys.readouterr().out


def test_a_frame_is_made_of_block_means_without_a_resize_mps_refuses(monkeypatch):
    resize = F.interpolate

    def as_on_mps(image, size=None, mode="nearest", **options):
        if mode == "area" and any(
            whole % part for whole, part in zip(image.shape[-2:], size, strict=True)
        ):
            raise RuntimeError("Adaptive pool MPS: input sizes must be divisible by output sizes")
        return resize(image, size=size, mode=mode, **options)

    monkeypatch.setattr(F, "interpolate", as_on_mps)
    image = torch.rand(1, 3, 600, 512, generator=torch.Generator().manual_seed(0))
    small = images.thumbnail(image)  # 3x3 blocks; the last column's two pixels wide
    assert small.shape == (200, 171, 3)
    first, last = image[0, :, :3, :3].mean((1, 2)), image[0, :, -3:, -2:].mean((1, 2))
    assert torch.equal(small[0, 0], (first * 255).round().byte())
    assert torch.equal(small[-1, -1], (last * 255).round().byte())


def test_a_photo_is_taken_as_a_jpeg_by_its_contents_and_a_vanished_one_as_none(tmp_path):
    save_photo(tmp_path, "photo.png")
    make_photo().save(tmp_path / "named.png", "JPEG")  # a JPEG, whatever its name says
    assert images.is_jpeg(tmp_path / "named.png")
    assert not images.is_jpeg(tmp_path / "photo.png")
    assert not images.is_jpeg(tmp_path / "gone.jpg")
