"""Blind --apply: the blur of a photo no one measured, estimated from it (kernel_estimation.py),
saved beside the result and said, then undone by the any-blur network; a photo whose edges cannot
tell a blur is left nearly as it is; the model that ships with Deblur does it on a fresh clone."""

import importlib
import os
import signal
import sys

import numpy as np
import pytest
import torch
from conftest import (
    ROOT,
    apply_deblur,
    blur_lines_as_shipped,
    digests,
    run_deblur,
    save_photo,
)
from PIL import Image

import Deblur
import kernel_estimation
from blurs import blur, blur_kernel, photographed
from deconvolution import JPEG_NOISE, estimated_noise
from kernel_estimation import centred_on_centroid as centred
from kernel_estimation import (
    cleaned,
    estimate_kernel,
    grey_region,
    spans_its_square,
    wide_edges,
)
from plumbing.checkpoints import SHIPPED_MODEL
from plumbing.images import as_saved_jpeg, image_to_tensor
from plumbing.kernel_file import read_kernel


@pytest.fixture(autouse=True)
def blur_not_named():
    """Told no blur: with Deblur.py's blur lines as shipped, whatever a user edited them to."""
    with blur_lines_as_shipped():
        yield


def shapes_photo(size=96, seed=0):
    """A grey photo of overlapping rectangles: edges in every direction, nothing periodic."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size), 0.5)
    for _ in range(40):
        top, left = rng.integers(0, size - 8, 2)
        height, width = rng.integers(6, size // 3, 2)
        pixels[top : top + height, left : left + width] = rng.uniform(0.1, 0.9)
    grey = (pixels * 255).round().astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")


def blurred_photo(kernel, noise=0.5, size=96):
    """shapes_photo blurred by `kernel`, with noise, in 8 bits, as a (1, 3, H, W) tensor."""
    sharp = image_to_tensor(shapes_photo(size), "cpu")
    return photographed(blur(sharp, kernel), noise, torch.Generator().manual_seed(0))


def blurred_text(kernel, size=96, seed=0):
    """A page of dark strokes 3 px apart in lines 10 px apart (letters), blurred by `kernel`, with
    noise: its strongest edges are the strokes', finer than the blur."""
    rng = np.random.default_rng(seed)
    page = torch.full((size, size), 0.9)
    for top in range(4, size - 10, 10):
        for left in range(2, size - 4, 3):
            if rng.random() < 0.7:
                page[top + rng.integers(2) : top + 6 + rng.integers(2), left] = 0.1
    photo = blur(page.expand(1, 3, size, size), kernel)
    return photographed(photo, 0.5, torch.Generator().manual_seed(0))


def save_blurred_photo(folder, size=96):
    """blurred_photo by a 7-px line, saved as folder/photo.png (8 bits); returns its path."""
    blurred = blurred_photo(np.pad(blur_kernel("motion", 3.0, 30.0), 2), size=size)
    path = folder / "photo.png"
    Image.fromarray((blurred[0].permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
    return path


def similarity(first, second):
    """The normalised correlation of two kernels of one size, at their best shift of up to 2 px."""
    first, second = torch.as_tensor(first), torch.as_tensor(second)
    shifts = [(rows, columns) for rows in range(-2, 3) for columns in range(-2, 3)]
    products = [float((first * second.roll(shift, (0, 1))).sum()) for shift in shifts]
    return max(products) / float(first.norm() * second.norm())


def test_the_estimated_kernel_is_the_photos_blur():
    truth = np.pad(blur_kernel("motion", 3.0, 30.0), 2)  # a 7-px line, on a 11 x 11 square
    kernel, doubt = estimate_kernel(blurred_photo(truth), 11, 0.5, say=lambda line: None)
    assert doubt is None and kernel.shape == (11, 11)
    assert similarity(kernel, truth) > 0.8  # a line at another angle: about 0.3
    assert similarity(kernel, np.pad(blur_kernel("motion", 3.0, 120.0), 2)) < 0.6
    # Non-negative, summing to 1, its centroid its middle pixel: the photo does not shift
    assert kernel.min() >= 0 and kernel.sum() == pytest.approx(1.0)
    rows, columns = np.mgrid[:11, :11]
    assert abs((kernel * rows).sum() - 5) <= 0.5 and abs((kernel * columns).sum() - 5) <= 0.5


def test_the_estimate_says_its_progress_scale_by_scale():
    said = []
    estimate_kernel(blurred_photo(np.ones((1, 1))), 15, 0.5, say=said.append)
    scales = len(said)  # 15, 11, 9, 7 and 5 pixels wide
    assert said[0].startswith(f"Estimating the blur kernel: scale 1 of {scales}, 5x5 px on 32x32")
    assert said[-1] == f"Estimating the blur kernel: scale {scales} of {scales}, 15x15 px on 96x96"


def test_a_large_photos_blur_is_estimated_on_its_window_of_most_edges():
    photo = torch.full((1, 3, 200, 1200), 0.5)
    patch = torch.rand(200, 200, generator=torch.Generator().manual_seed(0))
    photo[..., 900:1100] = patch  # edges on the right, none elsewhere
    region = grey_region(photo)
    assert region.shape == (200, 800)  # kernel_estimation.REGION wide
    assert int((region - 0.5).abs().gt(1e-4).sum()) == int((patch - 0.5).abs().gt(1e-4).sum())


def test_isolated_weak_parts_of_a_kernel_are_cleaned_away():
    kernel = torch.zeros(9, 9)
    kernel[4, 2:7] = 1.0  # the blur: a line
    kernel[0, 0] = 0.3  # a speck apart from it, less than a tenth of the weight
    kernel[8, 8] = -0.2  # and a negative value, which no light can have
    result = cleaned(kernel)
    assert result[0, 0] == 0 and result[8, 8] == 0
    assert result.sum() == pytest.approx(1.0) and torch.allclose(
        result[4, 2:7], torch.full((5,), 0.2)
    )


def test_a_kernel_is_centred_on_its_centroid():
    kernel = torch.zeros(9, 9)
    kernel[1, 1:4] = 1 / 3  # off to the top left
    moved = centred(kernel)
    assert moved.sum() == pytest.approx(1.0) and torch.equal(moved[4, 3:6], kernel[1, 1:4])


def test_a_kernel_is_taken_as_cut_off_only_where_its_path_reaches_two_opposite_sides():
    kernel = np.zeros((9, 9))
    kernel[4, :6] = 1.0  # touches the left side only: a blur that fits, off its middle
    kernel[0, 5] = 1.0  # and the top
    kernel[8, 5] = kernel[4, 8] = 0.2  # and the bottom and the right by faint haze only
    assert not spans_its_square(kernel)
    kernel[4, 6:] = 1.0  # now its path reaches the right side too
    assert spans_its_square(kernel) and spans_its_square(kernel.T)


def test_edges_are_taken_where_wider_than_a_fine_texture():
    image = torch.zeros(40, 40)
    image[:, 20:] = 1.0  # a step: every gradient by it points the same way
    image[5:15, :] = torch.rand(10, 40, generator=torch.Generator().manual_seed(0))  # texture
    wide = wide_edges(image)
    assert wide[25:35, 19].all()  # by the step, below the texture
    assert wide[7:13, 3:15].float().mean() < 0.2  # the texture's gradients cancel out


@pytest.mark.parametrize(
    "photo, noise, words",
    [
        ("flat", 0.0, "no edges to tell a blur by"),
        ("faint", 3.0, "strongest edges stand only"),
        ("clipped", 0.0, "clipped highlights"),
        ("text", 0.5, "finer than a blur"),
        ("wider than the square", 0.5, "reaches across the whole 9-px square"),
        ("faint, as a JPEG", None, "strongest edges stand only"),  # its noise read as --apply
    ],
)
def test_a_photo_that_cannot_tell_its_blur_gets_none(photo, noise, words):
    line = np.pad(blur_kernel("motion", 3.0, 30.0), 2)
    faint = 0.5 + 0.3 * (blurred_photo(line, noise=0, size=64) - 0.5)  # edges up to 31 steps
    pixels = {
        "flat": torch.full((1, 3, 64, 64), 0.4),
        "faint": 0.5 + 0.01 * blurred_photo(np.ones((1, 1)), noise=0, size=64),
        "faint, as a JPEG": as_saved_jpeg(photographed(faint, 2.0, torch.Generator()), 85),
        "clipped": torch.ones(1, 3, 64, 64).index_fill_(2, torch.arange(10), 0.2),
        "text": blurred_text(np.pad(blur_kernel("motion", 5.0, 100.0), 2)),
        "wider than the square": blurred_photo(blur_kernel("motion", 6.0, 30.0)),  # 13 px
    }[photo]
    noise = estimated_noise(pixels, jpeg=True) if noise is None else noise  # as --apply reads it
    kernel, doubt = estimate_kernel(pixels, 9, noise, say=lambda line: None)
    assert kernel is None and words in doubt


def test_blind_apply_estimates_saves_and_says_the_kernel(tmp_path, capsys):
    truth = np.pad(blur_kernel("motion", 3.0, 30.0), 2)
    photo = save_blurred_photo(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo_kernel.png").write_bytes(b"the user's own")  # kept: a .1 is written instead
    assert (
        Deblur.main(["--apply", str(photo), "--output_dir", str(out), "--kernel_size", "11"]) == 0
    )
    said = capsys.readouterr().out
    assert f"using the model that ships with Deblur, {SHIPPED_MODEL.name}" in said
    saved = out / "photo_kernel.1.png"
    assert "Note: estimated the blur: " in said and f"px, saved as {saved}" in said
    assert (out / "photo_kernel.png").read_bytes() == b"the user's own"
    assert "far beyond" not in said and "wider than" not in said  # within what it learned
    # The saved kernel is the one undone, and --kernel reads it back: the same result
    assert similarity(read_kernel(saved), truth) > 0.8
    again = ["--kernel", str(saved), "--output_dir", str(tmp_path / "again")]
    assert Deblur.main(["--apply", str(photo), "--noise_level", "0.5", *again]) == 0
    first, second = (
        np.asarray(Image.open(path), dtype=float)
        for path in (
            out / "photo_deblurred.png",
            tmp_path / "again" / "photo_deblurred.png",
        )
    )
    assert first.shape == (96, 96, 3) and np.abs(first - second).mean() < 2.0


def test_a_flat_photo_is_left_as_it_is_and_no_kernel_saved(tmp_path, capsys):
    photo = save_photo(tmp_path, image=Image.new("RGB", (80, 80), (90, 140, 200)))
    assert (
        Deblur.main(["--apply", str(photo), "--output_dir", str(tmp_path), "--kernel_size", "9"])
        == 0
    )
    assert "no blur is undone, the photo is left nearly as it is" in capsys.readouterr().out
    result = np.asarray(Image.open(tmp_path / "photo_deblurred.png"), dtype=float)
    assert np.abs(result - [90, 140, 200]).mean() < 1.5  # the network, told of no blur
    assert not (tmp_path / "photo_kernel.png").exists()


def test_a_photo_smaller_than_its_estimate_needs_is_refused(tmp_path, capsys):
    photo = save_photo(tmp_path, size=(60, 90))
    assert Deblur.main(["--apply", str(photo), "--output_dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "the 60x90 photo is too small to estimate a blur up to 31 pixels wide" in error
    assert error.count("\n") == 1 and not (tmp_path / "out" / "photo_deblurred.png").exists()


def test_ctrl_c_during_the_estimate_stops_it_and_writes_nothing(tmp_path, monkeypatch, capsys):
    real_fitting = kernel_estimation.kernel_fitting

    def interrupted(*args):
        os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C in the middle of the estimate
        return real_fitting(*args)

    monkeypatch.setattr(kernel_estimation, "kernel_fitting", interrupted)
    photo = save_blurred_photo(tmp_path, size=60)
    out = tmp_path / "out"
    assert (
        Deblur.main(["--apply", str(photo), "--output_dir", str(out), "--kernel_size", "9"]) == 130
    )
    assert "Ctrl-C: stopped; nothing was written" in capsys.readouterr().err
    assert digests(out) == {}


def test_the_shipped_model_applies_but_does_not_resume(tmp_path, capsys):
    assert (
        run_deblur(save_photo(tmp_path, "train.png"), tmp_path, "--resume", str(SHIPPED_MODEL)) == 2
    )
    assert "holds a network's weights only" in capsys.readouterr().err
    assert SHIPPED_MODEL.stat().st_size < 4 * 2**20  # weights only: a few MB


def test_an_any_blur_checkpoint_estimates_when_told_no_blur(tmp_path, capsys):
    """A run's own any-blur checkpoint estimates the blur as the shipped model does."""
    photo = save_blurred_photo(tmp_path, size=60)
    checkpoint = tmp_path / "own.pt"
    checkpoint.write_bytes(SHIPPED_MODEL.read_bytes())
    assert apply_deblur(photo, tmp_path / "out", checkpoint, "--kernel_size", "9") == 0
    assert "estimated the blur" in capsys.readouterr().out
    assert (tmp_path / "out" / "photo_kernel.png").exists()


def test_noise_or_a_blur_beyond_what_the_network_learned_is_said(tmp_path, capsys):
    noisy = np.random.default_rng(0).normal(128, 40, (64, 64, 3)).clip(0, 255).astype(np.uint8)
    photo = save_photo(tmp_path, image=Image.fromarray(noisy))
    named = ["--blur_kind", "motion", "--blur_radius", "20", "--blur_angle", "0"]
    assert Deblur.main(["--apply", str(photo), "--output_dir", str(tmp_path), *named]) == 0
    said = capsys.readouterr().out
    assert (
        "8-bit steps (--noise_level sets it); far beyond the 8 the network was trained on" in said
    )
    assert "the blur is 41 pixels wide, wider than the 31 the network was trained on" in said


def test_an_estimated_blur_wider_than_the_network_learned_is_said(tmp_path, monkeypatch, capsys):
    line = np.zeros((35, 35))
    line[17] = 1 / 35  # a 35-px blur; the shipped model learned up to 31
    monkeypatch.setattr(Deblur, "estimate_kernel", lambda *args, **kwargs: (line, None))
    photo = save_blurred_photo(tmp_path, size=105)  # three kernels wide: enough to estimate from
    assert apply_deblur(photo, tmp_path / "out", SHIPPED_MODEL, "--kernel_size", "35") == 0
    said = capsys.readouterr().out
    assert "estimated the blur: 35x1 px" in said
    assert "the blur is 35 pixels wide, wider than the 31 the network was trained on" in said


def test_a_jpegs_noise_is_told_as_at_least_what_its_compression_hides(tmp_path, capsys):
    png = save_blurred_photo(tmp_path)  # noise of half a step
    Image.open(png).save(tmp_path / "photo.jpg", quality=95)
    for photo in (png, tmp_path / "photo.jpg"):
        assert apply_deblur(photo, tmp_path / "out", SHIPPED_MODEL, "--kernel_size", "11") == 0
    said = capsys.readouterr().out
    png_noise, jpeg_noise = [
        float(line.split(" at ")[1].split()[0]) for line in said.splitlines() if "noise at" in line
    ]
    assert png_noise < 1 and jpeg_noise == JPEG_NOISE


def test_a_given_noise_level_beyond_what_the_network_learned_is_said_and_one_within_is_not(
    tmp_path, capsys
):
    photo = save_blurred_photo(tmp_path, size=60)
    named = ["--blur_kind", "motion", "--blur_radius", "3", "--blur_angle", "0"]
    for noise in ("30", "8"):
        arguments = ["--apply", str(photo), "--output_dir", str(tmp_path / noise)]
        assert Deblur.main([*arguments, *named, "--noise_level", noise]) == 0
    said = capsys.readouterr().out
    assert "--noise_level 30; far beyond the 8 the network was trained on" in said
    assert "--noise_level 8" not in said and "estimated the photo's noise" not in said


def test_the_real_shake_benchmark_turns_each_kernel_file_the_way_it_blurs_its_photo(
    tmp_path, monkeypatch
):
    """benchmarks/levin.py reads kernel files that may be turned half a turn (SelfDeblur's copy
    holds six of eight so): each is measured the way that blurs the sharp photo into the blurred
    one, whichever way its file holds it."""
    monkeypatch.setattr(sys, "path", [str(ROOT / "benchmarks"), *sys.path])  # undone after
    levin = importlib.import_module("levin")
    sharp = image_to_tensor(shapes_photo(size=96), "cpu")
    kernel = np.zeros((7, 7))
    kernel[3, 1:7] = 1  # a stroke to the right, then a tail down: no half turn maps it to itself
    kernel[4:7, 6] = 1
    kernel /= kernel.sum()
    file = tmp_path / "kernel1.png"
    Image.fromarray(np.uint8(kernel / kernel.max() * 255)).save(file)
    for turned in (kernel, kernel[::-1, ::-1]):
        blurred = blur(sharp, torch.from_numpy(turned.copy()).float())
        assert np.allclose(levin.measured_kernel(file, sharp, blurred), turned)
