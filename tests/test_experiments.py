"""Issue 10's experiments: the classical baselines, the held-out image, and --apply on a photo."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT, make_photo, tiny_run_args
from PIL import Image

import Deblur
import support


@pytest.mark.parametrize("kind", ["gaussian", "motion", "defocus", "box"])
def test_wiener_and_richardson_lucy_improve_on_the_blurred_image(tmp_path, kind):
    path = tmp_path / "photo.png"
    make_photo((64, 64), seed=5).save(path)
    sharp_image, blurred_image = Deblur.load_image_pair(path, 64, kind, 3.0, 30.0)
    sharp, blurred = (
        Deblur.image_to_tensor(image, "cpu") for image in (sharp_image, blurred_image)
    )
    restored = Deblur.deconvolve(blurred, kind, Deblur.blur_kernel(kind, 3.0, 30.0))
    blurred_psnr = Deblur.image_quality(blurred, sharp)[0]
    for name in ("Wiener", "Richardson–Lucy"):
        assert restored[name].shape == blurred.shape
        assert Deblur.image_quality(restored[name], sharp)[0] > blurred_psnr + 1, name


def test_the_summary_sets_every_method_beside_the_held_out_image(
    photo_path, tmp_path, capsys, figure_titles
):
    assert (
        Deblur.main(
            tiny_run_args(photo_path, tmp_path, "--holdout_path", str(ROOT / "data/holdout.jpg"))
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    summary = {line.split(":")[0]: line for line in lines if " | held out: PSNR " in line}
    assert list(summary) == ["Blurred", "Wiener", "Richardson–Lucy", "Network"]
    assert all(
        summary[name].count("gain") == 2 for name in ("Wiener", "Richardson–Lucy", "Network")
    )
    held_out_row = [title.split("\n")[0] for title in figure_titles["comparison.png"][4:8]]
    assert held_out_row == [
        "Held out: Original Image",
        "Held out: Blurred Image",
        "Held out: Richardson–Lucy",
        "Held out: Reconstructed Image",
    ]


def test_holdout_path_empty_skips_the_second_image(photo_path, tmp_path, capsys):
    assert Deblur.main(tiny_run_args(photo_path, tmp_path, "--holdout_path", "")) == 0
    assert "held out" not in capsys.readouterr().out


def test_a_missing_holdout_image_is_refused_by_its_setting(photo_path, tmp_path, capsys):
    assert (
        Deblur.main(tiny_run_args(photo_path, tmp_path, "--holdout_path", str(tmp_path / "no.jpg")))
        == 2
    )
    assert "(set holdout_path or pass --holdout_path FILE)" in capsys.readouterr().err


def test_the_shipped_holdout_image_is_a_small_photograph():
    path = ROOT / "data" / "holdout.jpg"
    assert path.stat().st_size < 1_000_000
    assert Image.open(path).mode == "RGB" and min(Image.open(path).size) >= 256


@pytest.fixture
def trained(photo_path, tmp_path):
    out = tmp_path / "out"
    assert Deblur.main(tiny_run_args(photo_path, out, "--num_epochs", "2")) == 0
    return out


def test_apply_deblurs_a_photo_at_its_own_size_without_training(trained, tmp_path, capsys):
    photo = tmp_path / "tall.jpg"
    make_photo((70, 150), seed=9).save(photo, quality=95)
    before = photo.read_bytes(), (trained / "checkpoint.pt").read_bytes()
    assert Deblur.main(tiny_run_args("unused.png", trained, "--apply", str(photo))) == 0
    out = capsys.readouterr().out
    result = trained / "tall_deblurred.png"
    assert "at its own size, 70x150" in out and str(result) in out and "Epoch" not in out
    assert Image.open(result).size == (70, 150)
    assert (photo.read_bytes(), (trained / "checkpoint.pt").read_bytes()) == before
    # The strips of rows add up to what the network gives on the whole photo at once.
    net = Deblur.DeblurNet().to(memory_format=torch.channels_last).eval()
    net.load_state_dict(torch.load(trained / "checkpoint.pt", weights_only=True)["model"])
    with torch.no_grad():
        whole = Deblur.to_hwc(net(Deblur.image_to_tensor(Image.open(photo).convert("RGB"), "cpu")))
    assert (
        np.abs(np.asarray(Image.open(result), dtype=np.float64) - whole * 255).max() <= 0.5 + 1e-3
    )


def test_apply_reads_the_checkpoint_named_by_resume(trained, tmp_path, photo_path):
    elsewhere = tmp_path / "elsewhere"
    checkpoint = str(trained / "checkpoint.pt")
    assert (
        Deblur.main(
            tiny_run_args(
                "unused.png", elsewhere, "--apply", str(photo_path), "--resume", checkpoint
            )
        )
        == 0
    )
    assert (elsewhere / "photo_deblurred.png").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "no checkpoint at"),
        (
            lambda d: (d / "out").mkdir() or (d / "out" / "checkpoint.pt").write_bytes(b"junk"),
            "not a Deblur checkpoint",
        ),
    ],
)
def test_apply_without_a_usable_checkpoint_is_refused(photo_path, tmp_path, capsys, make, message):
    make(tmp_path)
    assert (
        Deblur.main(tiny_run_args("unused.png", tmp_path / "out", "--apply", str(photo_path))) == 2
    )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "photo_deblurred.png").exists()


def test_apply_to_something_that_is_not_a_photo_is_refused(trained, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a picture")
    assert (
        Deblur.main(tiny_run_args("unused.png", trained, "--apply", str(tmp_path / "notes.txt")))
        == 2
    )
    assert "is not an image Pillow can read" in capsys.readouterr().err


def test_apply_asks_only_for_the_room_its_png_needs(trained, tmp_path, monkeypatch):
    photo = tmp_path / "wide.png"
    make_photo((400, 300)).save(photo)
    free = SimpleNamespace(free=2 * 2**20)  # 2 MB: a 400x300 PNG is at most 0.36 MB
    monkeypatch.setattr(support.shutil, "disk_usage", lambda path: free)
    assert Deblur.main(tiny_run_args("unused.png", trained, "--apply", str(photo))) == 0
    assert (trained / "wide_deblurred.png").exists()
