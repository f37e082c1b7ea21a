"""The data: a (blurred, sharp) pair, the blur kinds and their kernels, images as tensors."""

import numpy as np
import pytest
import torch
from conftest import make_photo, save_photo
from PIL import Image, ImageFilter
from torch.nn import functional as F

from Deblur import blur_kernel, load_image_pair
from plumbing.images import image_to_tensor


def high_frequencies(image):
    """The mean absolute difference between neighbouring pixels: blur lowers it."""
    pixels = np.asarray(image, dtype=np.float64)
    return np.abs(np.diff(pixels, axis=0)).mean() + np.abs(np.diff(pixels, axis=1)).mean()


@pytest.mark.parametrize("kind", ["gaussian", "motion", "defocus", "box"])
def test_a_pair_is_blurred_first_and_sharp_second(tmp_path, kind):
    blurred, sharp = load_image_pair(save_photo(tmp_path, size=(40, 40)), 40, kind, 2.0)
    assert high_frequencies(blurred) < 0.8 * high_frequencies(sharp)
    assert np.array_equal(np.asarray(sharp), np.asarray(make_photo((40, 40))))


def test_pair_is_resized_to_a_square_and_blurred_with_pillows_gaussian(tmp_path):
    blurred, sharp = load_image_pair(save_photo(tmp_path, size=(60, 45)), 32, radius=2.0)
    assert sharp.size == blurred.size == (32, 32) and sharp.mode == "RGB"
    expected = sharp.filter(ImageFilter.GaussianBlur(radius=2.0))
    assert np.array_equal(np.asarray(blurred), np.asarray(expected))
    assert not np.array_equal(np.asarray(blurred), np.asarray(sharp))


def test_tensors_are_float_nchw_in_0_1(tmp_path):
    sharp = load_image_pair(save_photo(tmp_path), 32)[1]
    tensor = image_to_tensor(sharp, torch.device("cpu"))
    assert tensor.shape == (1, 3, 32, 32) and tensor.dtype == torch.float32
    assert tensor.min() >= 0 and tensor.max() <= 1
    expected = torch.tensor(sharp.getpixel((5, 3)), dtype=torch.float32)
    assert torch.equal(tensor[0, :, 3, 5] * 255, expected)


@pytest.mark.parametrize(
    "kind, radius, angle, shape, support",
    [
        ("gaussian", 5.0, 0, (31, 31), 31 * 31),
        ("box", 2.0, 0, (5, 5), 25),
        ("defocus", 3.0, 0, (7, 7), 29),  # the pixels within 3 of the centre
        ("motion", 3.0, 0, (7, 7), 7),  # one row, 2 * radius + 1 long
        ("motion", 3.0, 90, (7, 7), 7),  # one column
    ],
    ids=["gaussian", "box", "defocus", "motion", "motion upright"],
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
    assert diagonal[1, 5] > 0 and diagonal[5, 1] > 0  # 45 degrees: up-right
    assert diagonal[1, 1] == diagonal[5, 5] == 0


def test_gaussian_kernel_has_the_radius_as_its_standard_deviation():
    kernel = blur_kernel("gaussian", 5.0)
    profile, offsets = kernel.sum(axis=0), np.arange(31) - 15
    assert np.sqrt((profile * offsets**2).sum()) == pytest.approx(5.0, abs=1e-3)


def white_square():
    return Image.fromarray(np.pad(np.full((16, 16), 255, np.uint8), 40)).convert("RGB")


def noise():
    return Image.fromarray((np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize(
    "image",
    [white_square(), noise(), make_photo((96, 96), seed=3)],
    ids=[
        "white square",
        "noise",
        "photo",
    ],  # a sampled Gaussian is 3.5 and 1.5 off on the first two
)
def test_gaussian_kernel_reproduces_pillows_blur_away_from_the_borders(image):
    pillow = np.asarray(image.filter(ImageFilter.GaussianBlur(radius=5)), dtype=np.float64)
    kernel = torch.from_numpy(blur_kernel("gaussian", 5.0))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float64)).permute(2, 0, 1)[:, None]
    blurred = F.conv2d(F.pad(pixels, [15] * 4, mode="replicate"), kernel[None, None])
    ours = blurred[:, 0].permute(1, 2, 0).numpy()
    assert np.abs(ours - pillow)[15:-15, 15:-15].max() <= 1.0  # within 1/255 of Pillow's 8 bits


@pytest.mark.parametrize("kind", ["box", "defocus", "motion"])
def test_other_kinds_blur_with_their_kernel(tmp_path, kind):
    blurred, sharp = load_image_pair(save_photo(tmp_path, size=(40, 40)), 40, kind, 2.0, 30.0)
    kernel = blur_kernel(kind, 2.0, 30.0)
    window = np.asarray(sharp, dtype=np.float64)[18:23, 8:13]  # around pixel (20, 10)
    expected = (window * kernel[:, :, None]).sum(axis=(0, 1))
    difference = np.abs(np.asarray(blurred, dtype=np.float64)[20, 10] - expected).max()
    assert difference <= 0.5 + 1e-3  # rounded to 8 bits, from a float32 FFT
