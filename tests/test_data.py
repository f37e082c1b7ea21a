import numpy as np
import pytest
import torch
from conftest import ROOT, make_photo
from PIL import Image, ImageFilter

from Deblur import image_to_tensor, load_image_pair, resolve_image_path


def saved(image, tmp_path, name="input.png", **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_pair_is_resized_to_a_square_and_blurred_with_the_given_radius(tmp_path):
    path = saved(make_photo((60, 45)), tmp_path)
    sharp, blurred = load_image_pair(path, 32, 2.0)
    assert sharp.size == blurred.size == (32, 32) and sharp.mode == "RGB"
    assert np.array_equal(np.asarray(blurred), np.asarray(sharp.filter(ImageFilter.GaussianBlur(radius=2.0))))
    assert not np.array_equal(np.asarray(blurred), np.asarray(sharp))


def test_tensors_are_float_nchw_in_0_1(tmp_path):
    sharp, _ = load_image_pair(saved(make_photo(), tmp_path), 32, 5)
    tensor = image_to_tensor(sharp, torch.device("cpu"))
    assert tensor.shape == (1, 3, 32, 32) and tensor.dtype == torch.float32
    assert tensor.min() >= 0 and tensor.max() <= 1
    assert torch.equal(tensor[0, :, 3, 5] * 255, torch.tensor(sharp.getpixel((5, 3)), dtype=torch.float32))


def test_grayscale_image_is_converted_to_rgb(tmp_path, capsys):
    path = saved(make_photo().convert("L"), tmp_path)
    sharp, _ = load_image_pair(path, 32, 1)
    pixels = np.asarray(sharp)
    assert sharp.mode == "RGB" and np.array_equal(pixels[..., 0], pixels[..., 2])
    assert "converted it to RGB" in capsys.readouterr().out


def test_transparent_pixels_are_composited_on_white(tmp_path, capsys):
    image = make_photo().convert("RGBA")
    image.putalpha(0)
    sharp, _ = load_image_pair(saved(image, tmp_path), 32, 1)
    assert np.all(np.asarray(sharp) == 255)
    assert "white background" in capsys.readouterr().out


def test_16_bit_greyscale_is_rescaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 48 * 48).reshape(48, 48)).astype(np.uint16)
    path = saved(Image.fromarray(ramp), tmp_path)
    assert Image.open(path).mode.startswith("I")
    sharp, _ = load_image_pair(path, 48, 1)
    pixels = np.asarray(sharp)[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels)) > 200


def test_exif_orientation_is_applied_before_resizing(tmp_path, capsys):
    image = Image.new("RGB", (40, 20), "black")
    image.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sharp, _ = load_image_pair(saved(image, tmp_path, "rotated.jpg", exif=exif, quality=95), 32, 0)
    top, bottom = np.asarray(sharp)[2, 16], np.asarray(sharp)[29, 16]
    assert top[0] > 200 > bottom[0]  # displayed upright, the red half is on top
    assert "EXIF orientation" in capsys.readouterr().out


def test_small_image_is_upscaled_with_a_notice(tmp_path, capsys):
    sharp, _ = load_image_pair(saved(make_photo((10, 12)), tmp_path), 32, 1)
    assert sharp.size == (32, 32)
    assert "upscaled" in capsys.readouterr().out


def test_relative_image_path_is_found_next_to_the_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_image_path("data/sample.jpg") == ROOT / "data" / "sample.jpg"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample.jpg").write_bytes(b"")
    assert resolve_image_path("data/sample.jpg") == type(ROOT)("data/sample.jpg")


@pytest.mark.parametrize("mode", ["P", "LA", "CMYK"])
def test_other_modes_become_rgb(tmp_path, mode):
    image = make_photo().convert(mode)
    path = saved(image, tmp_path, "input.jpg" if mode == "CMYK" else "input.png")
    sharp, blurred = load_image_pair(path, 32, 1)
    assert sharp.mode == blurred.mode == "RGB"
