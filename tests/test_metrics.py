"""PSNR and SSIM, against independent computations."""

import math

import numpy as np
import pytest
import torch
from conftest import ROOT, image_pair

from results import image_quality, psnr_from_mse


def reference_ssim(a, b, data_range=1.0, sigma=1.5, size=11):
    """SSIM (Wang et al. 2004) in plain numpy: a Gaussian window, the mean over the pixels whose
    window lies inside the image."""
    half = size // 2
    a, b = (np.pad(x, ((0, 0), (half, half), (half, half)), mode="reflect") for x in (a, b))
    g = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    g /= g.sum()

    def blur(x):
        rows = sum(g[i] * x[:, i : x.shape[1] - size + 1 + i, :] for i in range(size))
        return sum(g[i] * rows[:, :, i : x.shape[2] - size + 1 + i] for i in range(size))

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return ssim[:, half:-half, half:-half].mean()


def test_identical_images_have_infinite_psnr_and_ssim_1():
    image = torch.rand(1, 3, 32, 32)
    psnr, ssim = image_quality(image, image.clone())
    assert psnr == math.inf and ssim == pytest.approx(1.0, abs=1e-6)


def test_known_noise_gives_the_expected_psnr_and_ssim():
    reference = torch.full((1, 3, 32, 32), 0.5)
    noise = torch.where(
        torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) < 0.5, -0.1, 0.1
    )
    psnr, ssim = image_quality(reference + noise, reference)
    assert psnr == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 on a range of 1
    assert ssim == pytest.approx(
        reference_ssim((reference + noise)[0].double().numpy(), reference[0].double().numpy()),
        abs=1e-4,
    )
    assert psnr_from_mse(0.001) == pytest.approx(30.0)


def test_blurred_sample_baseline_matches_an_independent_computation():
    blurred, sharp, _, _ = image_pair(ROOT / "data" / "sample.jpg", 128, radius=5.0)
    psnr, ssim = image_quality(blurred, sharp)
    a, b = (image[0].double().numpy() for image in (blurred, sharp))
    assert psnr == pytest.approx(10 * np.log10(1 / np.mean((a - b) ** 2)), abs=1e-3)
    assert ssim == pytest.approx(reference_ssim(a, b), abs=1e-3)
    assert 15 < psnr < 35 and 0.3 < ssim < 0.95


def test_image_quality_can_leave_out_a_border():
    reference = torch.rand(1, 3, 32, 32)
    image = reference.clone()
    image[..., :3, :] = 0  # differs only in the top 3 rows
    assert image_quality(image, reference)[0] < 30
    assert image_quality(image, reference, border=3)[0] == math.inf
