"""The classical baselines with the known kernel (Wiener at the balance its rule gives, Wiener at
each image's best, Richardson-Lucy, the sparse gradient prior), and the held-out image the network
never saw."""

import numpy as np
import pytest
import skimage
import torch
from conftest import ROOT, image_pair, make_photo, run_deblur, save_photo
from PIL import Image
from skimage import restoration

import deconvolution
from blurs import NO_BLUR, blur, blur_kernel, camera_shake, photographed, random_kernels
from deconvolution import (
    PRIOR_WEIGHT,
    data_step,
    prior_levels,
    richardson_lucy,
    rl_iterations,
    sparse_deconvolution,
    sparse_fidelity,
    sparse_shrinkage,
    wiener,
    wiener_balance,
    wiener_reach,
    wrapped_smoothly,
)
from plumbing.images import image_to_tensor
from results import Result, against_strongest, best_wiener, image_quality


@pytest.mark.parametrize("kind", ["gaussian", "motion", "defocus", "box"])
@pytest.mark.parametrize("noise", [0.0, 4.0])
def test_wiener_and_richardson_lucy_improve_on_the_blurred_image(tmp_path, kind, noise):
    path = save_photo(tmp_path, size=(64, 64), seed=5)
    blurred, sharp, kernel, noise = image_pair(path, 64, kind, 3.0, 30.0, noise)
    restored = {
        "Wiener": wiener(blurred, kernel, wiener_balance(kernel, noise)),
        "Richardson–Lucy": richardson_lucy(blurred, kernel, rl_iterations(noise)),
    }
    blurred_psnr = image_quality(blurred, sharp)[0]
    # Richardson-Lucy's iterations follow the noise, as tuned on camera shakes: on a smooth
    # Gaussian it gains little in them, but it gains
    for name, least_gain in (("Wiener", 1.0), ("Richardson–Lucy", 0.0)):
        assert restored[name].shape == blurred.shape
        assert image_quality(restored[name], sharp)[0] > blurred_psnr + least_gain, name


def test_richardson_lucy_in_float32_holds_in_black_regions():
    # Coins on a dark ground: float32's FFT left the reblurred dark a rounding error from zero,
    # and the ratio by it blew up (6.8 dB where float64 reaches 20.5)
    generator = torch.Generator().manual_seed(8)
    top, left = torch.randint(0, 204, (2,), generator=generator).tolist()
    coins = skimage.data.coins()[top : top + 96, left : left + 96]
    sharp = torch.from_numpy(coins / 255).float().expand(1, 3, 96, 96)
    kernel = camera_shake(9, 9, generator)
    blurred = photographed(blur(sharp, kernel), 2.5, generator)
    restored = richardson_lucy(blurred, kernel, 30)
    pixels = np.pad(blurred[0].double().numpy(), ((0, 0), (19, 19), (19, 19)), mode="edge")
    theirs = [restoration.richardson_lucy(channel, kernel, num_iter=30) for channel in pixels]
    theirs = torch.from_numpy(np.stack(theirs)[:, 19:-19, 19:-19].clip(0, 1))[None].float()
    assert image_quality(restored, sharp, 9)[0] == pytest.approx(
        image_quality(theirs, sharp, 9)[0], abs=0.05
    )


@pytest.mark.parametrize("noise", [1.0, 4.0])
def test_the_sparse_prior_restores_sharper_edges_than_wiener(noise):
    # A picture of flat shapes: the photos' statistics at their starkest, where a Gaussian prior
    # (Wiener's) blurs each edge it keeps and a sparse one keeps it a step
    sharp = torch.zeros(1, 3, 64, 64)
    sharp[..., 10:40, 12:30] = 0.8
    sharp[..., 30:55, 25:50] = 0.4
    kernel = np.pad(blur_kernel("motion", 4.0, 30.0), 1)
    blurred = photographed(blur(sharp, kernel), noise, torch.Generator().manual_seed(0))
    restored = sparse_deconvolution(blurred, kernel, sparse_fidelity(noise))
    by_rule = wiener(blurred, kernel, wiener_balance(kernel, noise))
    assert restored.shape == blurred.shape
    assert image_quality(restored, sharp)[0] > image_quality(by_rule, sharp)[0] + 1.0


@pytest.mark.parametrize("sparseness", [2 / 3, 1.0])
def test_the_sparse_priors_shrinkage_is_the_cheapest_gradient_near_each(monkeypatch, sparseness):
    monkeypatch.setattr(deconvolution, "SPARSENESS", sparseness)
    gradients = torch.linspace(-0.3, 0.3, 61, dtype=torch.float64)
    beta = 50.0
    candidates = torch.linspace(-0.4, 0.4, 80001, dtype=torch.float64)[:, None]
    cost = candidates.abs() ** sparseness + beta / 2 * (candidates - gradients) ** 2
    best = candidates[cost.argmin(0), 0]  # by brute force, to 1e-5
    assert torch.allclose(sparse_shrinkage(gradients, beta), best, atol=1e-4)


def test_wiener_in_torch_is_scikit_images_with_the_gradient_as_its_regulariser(tmp_path):
    blurred, *_ = image_pair(save_photo(tmp_path, size=(80, 70), seed=2), None, noise=2.0)
    kernel = blur_kernel("gaussian", 5.0)
    batch = blurred.repeat(2, 1, 1, 1)  # batched: each image alike
    ours = wiener(batch, kernel, 0.03).numpy()
    # The same padding as ours. The gradient's energy at frequency (u, v) is
    # 4 - 2 cos(u) - 2 cos(v); scikit-image damps |reg| ** 2, so reg is its square root
    pad = wiener_reach(kernel)
    pixels = wrapped_smoothly(blurred.double(), pad)[0].numpy()
    rows, columns = pixels.shape[1:]
    u = 2 * np.pi * np.fft.fftfreq(rows)[:, None]
    v = 2 * np.pi * np.fft.rfftfreq(columns)[None, :]
    reg = np.sqrt(4 - 2 * np.cos(u) - 2 * np.cos(v)).astype(complex)
    theirs = np.stack([restoration.wiener(channel, kernel, 0.03, reg=reg) for channel in pixels])
    theirs = theirs[:, pad:-pad, pad:-pad].clip(0, 1)
    assert np.abs(ours[0] - theirs).max() < 1e-4 and np.array_equal(ours[0], ours[1])


def test_a_batch_deconvolves_each_image_with_its_own_kernel_and_balance():
    sharp = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    kernels = random_kernels(3, 4, torch.Generator().manual_seed(2))
    balances = torch.tensor([0.001, 0.01, 0.1])
    together = wiener(sharp, kernels, balances)
    for index in range(3):
        alone = wiener(sharp[index : index + 1], kernels[index], balances[index])
        assert torch.allclose(together[index], alone[0], atol=1e-5)


def test_the_balance_rises_with_the_noise_and_for_small_kernels():
    wide, narrow = blur_kernel("gaussian", 5.0), blur_kernel("gaussian", 1.0)
    assert wiener_balance(wide, 8.0) > wiener_balance(wide, 2.0) > wiener_balance(wide, 0.0) > 0
    assert wiener_balance(narrow, 2.0) > wiener_balance(wide, 2.0)
    both = wiener_balance(np.stack([wide, np.pad(narrow, 12)]), torch.tensor([2.0, 8.0]))
    assert both.shape == (2,) and both[0] == wiener_balance(wide, 2.0)


def test_the_data_step_fits_the_photo_better_and_keeps_as_near_the_restoration_as_weighed():
    sharp = image_to_tensor(make_photo((48, 48), seed=5), "cpu")
    kernel = camera_shake(5, 7, torch.Generator().manual_seed(2))  # no symmetry to hide a flip
    photo = blur(sharp, kernel)
    guess = sharp + 0.1 * torch.randn(sharp.shape, generator=torch.Generator().manual_seed(0))
    inner = (..., slice(8, -8), slice(8, -8))  # past the made-up edges

    def misfit(image):
        return float((blur(image, kernel) - photo)[inner].square().mean())

    loose, tight = data_step(photo, kernel, guess, 0.01), data_step(photo, kernel, guess, 10.0)
    assert misfit(loose) < misfit(tight) < misfit(guess.clamp(0, 1))
    assert (loose - guess).norm() > (tight - guess).norm()
    # The sharp image itself is what the kernel blurs into the photo: it stays as it is
    assert (data_step(photo, kernel, sharp, 0.5) - sharp)[inner].abs().max() < 0.02
    # Without blur, the weighted mean of the photo and the restoration, exactly
    mean = (photo + 0.5 * guess.clamp(0, 1)) / 1.5
    assert torch.allclose(data_step(photo, NO_BLUR, guess.clamp(0, 1), 0.5), mean, atol=1e-5)
    # 8 bits (--apply's tiles) are read as [0, 1]
    eight_bits = (sharp * 255).round().to(torch.uint8)
    in_eight_bits = data_step(photo, kernel, eight_bits, 0.5)
    assert torch.allclose(in_eight_bits, data_step(photo, kernel, eight_bits / 255, 0.5))


def test_the_prior_levels_fall_from_the_most_noise_learned_to_the_photos_trusted_more_as_they_do():
    levels, weights = zip(*prior_levels(2.0, 8.0, 4), strict=True)
    assert levels[0] == pytest.approx(8.0) and levels[-1] == pytest.approx(2.0)
    assert list(levels) == sorted(levels, reverse=True) and list(weights) == sorted(weights)
    assert weights[-1] == pytest.approx(PRIOR_WEIGHT)  # at the photo's own noise
    assert prior_levels(2.0, 8.0, 0) == []
    assert [level for level, _ in prior_levels(2.0, 8.0, 1)] == pytest.approx([8.0])  # as DPIR's
    assert prior_levels(0.0, 8.0, 3)[-1] == pytest.approx((0.0, PRIOR_WEIGHT))  # no noise: to 0
    # A photo noisier than the network learned: every round at its own level
    assert [level for level, _ in prior_levels(12.0, 8.0, 2)] == pytest.approx([12.0, 12.0])


def test_smooth_wrapping_removes_the_step_where_the_fft_repeats_the_image():
    ramp = torch.linspace(0, 1, 20).expand(1, 3, 20, 20)  # 0 on the left, 1 on the right
    padded = wrapped_smoothly(ramp, 6)
    assert padded.shape == (1, 3, 32, 32) and torch.equal(padded[..., 6:26, 6:26], ramp)
    row = torch.cat([padded[0, 0, 10], padded[0, 0, 10, :1]])  # past the right edge, the left
    assert row.diff().abs().max() < 0.15  # no jump from 1 back to 0: a ramp over 12 pixels


def test_the_oracle_is_wiener_at_the_best_balance_for_the_image(tmp_path):
    blurred, sharp, kernel, noise = image_pair(save_photo(tmp_path, size=(64, 64)), 64, noise=3.0)
    oracle = image_quality(best_wiener(blurred, kernel, sharp, 15), sharp, 15)[0]
    for balance in (1e-4, 1e-3, 1e-2, 1e-1, wiener_balance(kernel, noise)):
        assert oracle >= image_quality(wiener(blurred, kernel, balance), sharp, 15)[0] - 1e-6


def test_richardson_lucy_in_float32_is_as_in_float64(tmp_path):
    blurred, *_ = image_pair(save_photo(tmp_path, size=(60, 50), seed=3), None)
    kernel = blur_kernel("gaussian", 2.0)
    ours = richardson_lucy(blurred, kernel, 30)[0].numpy()
    pixels = np.pad(blurred[0].double().numpy(), ((0, 0), (13, 13), (13, 13)), mode="edge")
    theirs = [restoration.richardson_lucy(channel, kernel, num_iter=30) for channel in pixels]
    theirs = np.stack(theirs)[:, 13:-13, 13:-13].clip(0, 1)
    assert np.abs(ours - theirs).max() < 1e-3


@pytest.mark.parametrize(
    "wiener_oracle, sparse_prior, said",
    [(30.0, 29.0, "+1.00 dB (wiener oracle)"), (29.0, 30.0, "+1.00 dB (sparse prior)")],
)
def test_the_network_is_measured_against_the_strongest_classical_result(
    wiener_oracle, sparse_prior, said
):
    psnrs = {"Blurred": 25.0, "Wiener oracle": wiener_oracle, "Sparse prior": sparse_prior}
    results = {name: Result(None, psnr, 0.5) for name, psnr in {**psnrs, "Network": 31.0}.items()}
    assert against_strongest(results) == said


def psnr_said(line, position):
    """The PSNR a summary line gives its `position`-th image (0: the training image)."""
    return float(line.split(":", 1)[1].split(" | ")[position].split("PSNR ")[1].split()[0])


def test_the_summary_sets_every_method_beside_the_held_out_image(
    photo_path, tmp_path, capsys, figure_titles
):
    assert run_deblur(photo_path, tmp_path, "--holdout_path", str(ROOT / "data/holdout.jpg")) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = {line.split(":")[0]: line for line in lines if " | held out: PSNR " in line}
    methods = ["Wiener", "Wiener oracle", "Richardson–Lucy", "Sparse prior", "Network"]
    assert list(summary) == ["Blurred", *methods]
    for name in methods:
        assert summary[name].count("gain") == 2
    against = next(line for line in lines if line.startswith("The network against the strongest"))
    assert against.count(" dB (") == 2
    # Each gain is over whichever of the two strongest classical results is ahead on its image
    for position, gain in enumerate(against.split(": ", 1)[1].split(" | ")):
        psnr = {name: psnr_said(summary[name], position) for name in methods}
        strongest = max(("Wiener oracle", "Sparse prior"), key=psnr.get)
        assert gain.endswith(f" dB ({strongest.lower()})"), (gain, psnr)
        assert float(gain.split()[0]) == pytest.approx(psnr["Network"] - psnr[strongest], abs=0.011)
    held_out_row = [title.split("\n")[0] for title in figure_titles["comparison.png"][4:8]]
    assert held_out_row == [
        "Held out: Original Image",
        "Held out: Blurred Image",
        "Held out: Wiener at its best (oracle)",
        "Held out: Reconstructed Image",
    ]


def test_holdout_path_empty_skips_the_second_image(photo_path, tmp_path, capsys):
    assert run_deblur(photo_path, tmp_path, "--holdout_path", "") == 0
    assert "held out" not in capsys.readouterr().out


def test_a_missing_holdout_image_is_refused_by_its_setting(photo_path, tmp_path, capsys):
    assert run_deblur(photo_path, tmp_path, "--holdout_path", str(tmp_path / "no.jpg")) == 2
    assert "(set holdout_path or pass --holdout_path FILE)" in capsys.readouterr().err


def test_a_holdout_that_is_the_training_image_is_said(photo_path, tmp_path, capsys):
    assert (
        run_deblur(photo_path, tmp_path, "--num_epochs", "1", "--holdout_path", str(photo_path))
        == 0
    )
    assert "holdout_path is the training image itself" in capsys.readouterr().out


def test_the_shipped_holdout_image_is_a_small_photograph():
    path = ROOT / "data" / "holdout.jpg"
    assert path.stat().st_size < 1_000_000
    assert Image.open(path).mode == "RGB" and min(Image.open(path).size) >= 256
