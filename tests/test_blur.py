"""The blur model: a (blurred, sharp) pair, the kernels of each kind and of the random family, the
noise, and blurring a batch with a kernel each."""

import numpy as np
import pytest
import torch
from conftest import image_pair, make_photo, save_photo
from PIL import Image, ImageFilter
from torch.nn import functional as F

import blurs
from blurs import QUANTISATION, blur, blur_kernel, camera_shake, photographed, random_kernels
from deconvolution import estimated_noise
from plumbing.images import image_to_tensor


def high_frequencies(image):
    """The mean absolute difference between neighbouring pixels: blur lowers it."""
    pixels = image.double()
    return (pixels.diff(dim=-1).abs().mean() + pixels.diff(dim=-2).abs().mean()).item()


@pytest.mark.parametrize("kind", ["gaussian", "motion", "defocus", "box"])
def test_a_pair_is_blurred_first_and_sharp_second(tmp_path, kind):
    blurred, sharp, kernel, noise = image_pair(save_photo(tmp_path, size=(40, 40)), 40, kind, 2.0)
    assert high_frequencies(blurred) < 0.8 * high_frequencies(sharp)
    assert torch.equal(sharp, image_to_tensor(make_photo((40, 40)), "cpu"))
    assert np.array_equal(kernel, blur_kernel(kind, 2.0)) and noise == 0


def test_pair_is_resized_to_a_square_and_blurred_with_pillows_gaussian(tmp_path):
    path = save_photo(tmp_path, size=(60, 45))
    blurred, sharp, _, _ = image_pair(path, 32, radius=2.0)
    assert sharp.shape == blurred.shape == (1, 3, 32, 32)
    square = Image.open(path).resize((32, 32))
    expected = image_to_tensor(square.filter(ImageFilter.GaussianBlur(radius=2.0)), "cpu")
    assert torch.equal(blurred, expected) and torch.equal(sharp, image_to_tensor(square, "cpu"))


def test_tensors_are_float_nchw_in_0_1(tmp_path):
    sharp_image = make_photo()
    tensor = image_to_tensor(sharp_image, torch.device("cpu"))
    assert tensor.shape == (1, 3, 40, 48) and tensor.dtype == torch.float32
    assert tensor.min() >= 0 and tensor.max() <= 1
    expected = torch.tensor(sharp_image.getpixel((5, 3)), dtype=torch.float32)
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


def test_a_box_follows_its_radius_below_and_between_whole_pixels():
    assert np.array_equal(blur_kernel("box", 0.0), [[1.0]])  # no blur at all
    half = blur_kernel("box", 0.5)  # 2 pixels a side: the centre, and half of each neighbour
    assert half.shape == (3, 3) and half[1, 1] == pytest.approx(4 * half[0, 0])
    assert half[0, 1] == pytest.approx(2 * half[0, 0])
    assert not np.array_equal(np.pad(blur_kernel("box", 1.5), 0), blur_kernel("box", 2.0))


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
    # a sampled Gaussian is 3.5 and 1.5 off on the first two
    ids=["white square", "noise", "photo"],
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
    blurred, sharp, kernel, _ = image_pair(save_photo(tmp_path, size=(40, 40)), 40, kind, 2.0, 30.0)
    window = sharp[0, :, 18:23, 8:13].double()  # around pixel (20, 10)
    expected = (window * torch.from_numpy(kernel)).sum(dim=(1, 2))
    assert (blurred[0, :, 20, 10] - expected).abs().max() * 255 <= 0.5 + 1e-3  # 8-bit rounding


def test_random_kernels_are_seeded_sum_to_1_and_fill_one_canvas():
    first = random_kernels(40, 7.5, torch.Generator().manual_seed(3))
    again = random_kernels(40, 7.5, torch.Generator().manual_seed(3))
    other = random_kernels(40, 7.5, torch.Generator().manual_seed(4))
    assert first.shape == (40, 17, 17) and np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.allclose(first.sum(axis=(1, 2)), 1) and (first >= 0).all()
    supports = [np.count_nonzero(kernel > 1e-9) for kernel in first]
    assert min(supports) < 10 and max(supports) > 100  # from nearly sharp to wide


def test_random_kernels_are_drawn_a_shape_at_a_time_in_proportion(monkeypatch):
    made = {}  # {shape: [how many each call made]}

    def counted(real):
        def counting(*args):
            kernels = real(*args)
            shape = args[0] if isinstance(args[0], str) else real.__name__
            made.setdefault(shape, []).append(len(kernels))
            return kernels

        return counting

    for name in ("camera_shakes", "oriented_gaussians", "drawn_shapes"):
        monkeypatch.setattr(blurs, name, counted(getattr(blurs, name)))
    kernels = random_kernels(2000, 7.5, torch.Generator().manual_seed(5))
    assert all(len(counts) == 1 for counts in made.values()), made  # one call for each shape
    names = {"camera_shakes": "camera shake", "oriented_gaussians": "gaussian"}
    shares = {names.get(shape, shape): counts[0] / 2000 for shape, counts in made.items()}
    shares["none"] = 1 - sum(shares.values())
    assert shares == pytest.approx(blurs.SHAPES, abs=0.03)
    assert kernels.shape == (2000, 17, 17) and np.allclose(kernels.sum(axis=(1, 2)), 1)


def test_a_camera_shake_is_a_path_centred_on_the_kernel_and_as_long_as_asked():
    kernel = camera_shake(6.0, 10, torch.Generator().manual_seed(1))
    rows, columns = np.mgrid[:21, :21]
    assert kernel.sum() == pytest.approx(1) and (kernel >= 0).all()
    assert (kernel * rows).sum() == pytest.approx(10, abs=0.05)  # its centroid: no shift
    assert (kernel * columns).sum() == pytest.approx(10, abs=0.05)
    lit = np.argwhere(kernel > 1e-9)
    farthest = np.abs(lit - 10).max()
    assert 6 <= farthest <= 7  # 6 pixels from the centroid, shared with the next pixel
    assert 12 < len(lit) < 200  # a path, not a blob


def test_a_batch_blurs_each_image_with_its_own_kernel():
    images = torch.rand(3, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    kernels = random_kernels(3, 4, torch.Generator().manual_seed(0))
    together = blur(images, kernels)
    for index in range(3):
        alone = blur(images[index : index + 1], kernels[index])
        assert torch.allclose(together[index], alone[0], atol=1e-5)
    assert not torch.allclose(together[0], blur(images[:1], kernels[1])[0], atol=1e-3)


def test_noise_is_drawn_per_image_at_its_level_then_rounded_to_8_bits():
    flat = torch.full((2, 3, 64, 64), 0.5)
    photo = photographed(flat, torch.tensor([0.0, 8.0]), torch.Generator().manual_seed(0))
    assert torch.equal(photo, (photo * 255).round() / 255)
    assert torch.equal(photo[0], flat[0].round(decimals=3).new_full((3, 64, 64), 128 / 255))
    assert (photo[1] - 0.5).std().item() * 255 == pytest.approx(8.0, rel=0.05)
    again = photographed(flat, torch.tensor([0.0, 8.0]), torch.Generator().manual_seed(0))
    assert torch.equal(photo, again)


@pytest.mark.parametrize("level", [0.0, 2.0, 8.0])
def test_the_noise_of_a_blurred_photo_is_estimated_within_a_fifth(tmp_path, level):
    sharp = image_to_tensor(make_photo((96, 96), seed=2), "cpu")
    blurred = blur(sharp, blur_kernel("gaussian", 3.0))
    photo = photographed(blurred, level, torch.Generator().manual_seed(1))
    # Without noise, within half the rounding's own: the rounding is not counted as noise
    assert estimated_noise(photo) == pytest.approx(level, abs=max(0.2 * level, QUANTISATION / 2))


def test_the_noise_of_a_photo_half_of_fine_strokes_is_read_on_its_flat_half():
    # Strokes a pixel wide (text, a fine texture) have detail where the noise is read: read on
    # every block, a photo half of them was told several times its noise
    generator = torch.Generator().manual_seed(3)
    photo = torch.full((1, 3, 96, 96), 0.5)
    photo[..., 48:] = (torch.rand((1, 1, 96, 48), generator=generator) > 0.5) * 0.6 + 0.2
    assert estimated_noise(photographed(photo, 2.0, generator)) == pytest.approx(2.0, rel=0.2)


def test_the_noise_of_a_photo_mostly_clipped_to_black_is_read_where_it_is_not():
    # Where the light was below black, about half the noise is cut off at 0
    generator = torch.Generator().manual_seed(4)
    photo = torch.zeros((1, 3, 96, 96))
    photo[..., 72:] = 0.5
    assert estimated_noise(photographed(photo, 4.0, generator)) == pytest.approx(4.0, rel=0.2)


def test_noise_between_two_8_bit_steps_is_told_between_them():
    # The median of the whole numbers an 8-bit photo's detail makes told 1.2 and 1.7 both 1.45
    sharp = image_to_tensor(make_photo((96, 96), seed=2), "cpu")
    blurred = blur(sharp, blur_kernel("gaussian", 3.0))
    told = [
        estimated_noise(photographed(blurred, level, torch.Generator().manual_seed(1)))
        for level in (1.2, 1.7)
    ]
    assert told[1] - told[0] == pytest.approx(0.5, abs=0.1)


def test_a_blur_in_linear_light_averages_the_light_not_the_stored_values():
    edge = torch.zeros(1, 3, 8, 8)
    edge[..., 4:] = 1.0  # black, then white
    halves = torch.zeros(3, 3, dtype=torch.float64)
    halves[1, 1:] = 0.5  # each pixel half itself, half its neighbour
    stored, light = blur(edge, halves), blurs.blurred_in_linear_light(edge, halves)
    mixed = stored[0, 0, 0].sub(0.5).abs().argmin()  # the pixel where black and white meet
    assert float(stored[0, 0, 0, mixed]) == pytest.approx(0.5, abs=1e-4)
    assert float(light[0, 0, 0, mixed]) == pytest.approx(0.7354, abs=1e-3)  # sRGB's half light
    assert torch.allclose(light[..., :3], edge[..., :3], atol=1e-4)  # away from it: unchanged
    assert torch.allclose(light[..., 5:], edge[..., 5:], atol=1e-4)
