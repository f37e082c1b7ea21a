"""The classical baselines with the known kernel, and the held-out image the network never saw."""

import numpy as np
import pytest
from conftest import ROOT, run_deblur, save_photo
from PIL import Image
from skimage import restoration

import Deblur
from plumbing.images import image_to_tensor
from results import image_quality, richardson_lucy


@pytest.mark.parametrize("kind", ["gaussian", "motion", "defocus", "box"])
def test_wiener_and_richardson_lucy_improve_on_the_blurred_image(tmp_path, kind):
    path = save_photo(tmp_path, size=(64, 64), seed=5)
    blurred, sharp = (
        image_to_tensor(i, "cpu") for i in Deblur.load_image_pair(path, 64, kind, 3.0, 30.0)
    )
    kernel = Deblur.blur_kernel(kind, 3.0, 30.0)
    restored = {
        "Wiener": Deblur.wiener(blurred, kernel, Deblur.WIENER_BALANCE[kind]),
        "Richardson–Lucy": richardson_lucy(blurred, kernel, kind),
    }
    blurred_psnr = image_quality(blurred, sharp)[0]
    for name, image in restored.items():
        assert image.shape == blurred.shape
        assert image_quality(image, sharp)[0] > blurred_psnr + 1, name


def edge_padded(image, pad):
    return np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode="edge")


def test_wiener_in_torch_is_scikit_images_within_1e_4(tmp_path):
    blurred, _ = Deblur.load_image_pair(save_photo(tmp_path, size=(80, 70), seed=2), None)
    kernel = Deblur.blur_kernel("gaussian", 5.0)
    batch = image_to_tensor(blurred, "cpu").repeat(2, 1, 1, 1)  # batched: each image alike
    ours = Deblur.wiener(batch, kernel, 0.03).numpy()
    pad = Deblur.wiener_reach(kernel)  # the edges replicated as far as ours
    pixels = edge_padded(np.asarray(blurred, dtype=np.float64).transpose(2, 0, 1) / 255, pad)
    theirs = np.stack([restoration.wiener(channel, kernel, 0.03) for channel in pixels])
    theirs = theirs[:, pad:-pad, pad:-pad].clip(0, 1)
    assert np.abs(ours[0] - theirs).max() < 1e-4 and np.array_equal(ours[0], ours[1])


def test_richardson_lucy_in_float32_is_as_in_float64(tmp_path):
    blurred, _ = Deblur.load_image_pair(save_photo(tmp_path, size=(60, 50), seed=3), None)
    kernel = Deblur.blur_kernel("gaussian", 2.0)
    ours = richardson_lucy(image_to_tensor(blurred, "cpu"), kernel, "gaussian")[0].numpy()
    pixels = edge_padded(np.asarray(blurred, dtype=np.float64).transpose(2, 0, 1) / 255, 13)
    theirs = [restoration.richardson_lucy(channel, kernel, num_iter=100) for channel in pixels]
    theirs = np.stack(theirs)[:, 13:-13, 13:-13].clip(0, 1)
    assert np.abs(ours - theirs).max() < 1e-3


def test_the_summary_sets_every_method_beside_the_held_out_image(
    photo_path, tmp_path, capsys, figure_titles
):
    assert run_deblur(photo_path, tmp_path, "--holdout_path", str(ROOT / "data/holdout.jpg")) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = {line.split(":")[0]: line for line in lines if " | held out: PSNR " in line}
    assert list(summary) == ["Blurred", "Wiener", "Richardson–Lucy", "Network"]
    for name in ("Wiener", "Richardson–Lucy", "Network"):
        assert summary[name].count("gain") == 2
    held_out_row = [title.split("\n")[0] for title in figure_titles["comparison.png"][4:8]]
    assert held_out_row == [
        "Held out: Original Image",
        "Held out: Blurred Image",
        "Held out: Richardson–Lucy",
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
