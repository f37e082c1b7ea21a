"""--apply: a trained network on a photo of any size, in strips, never over a user's file."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import run_deblur, save_photo
from PIL import Image

import Deblur
from plumbing import files
from plumbing.images import image_to_tensor, to_hwc


def apply(photo, out, checkpoint):
    return run_deblur("unused.png", out, "--apply", str(photo), "--resume", str(checkpoint))


def test_apply_deblurs_a_photo_at_its_own_size_without_training(
    trained_checkpoint, tmp_path, capsys
):
    photo = save_photo(tmp_path, "tall.jpg", size=(70, 150), seed=9, quality=95)
    before = photo.read_bytes(), trained_checkpoint.read_bytes()
    assert apply(photo, tmp_path / "out", trained_checkpoint) == 0
    out = capsys.readouterr().out
    result = tmp_path / "out" / "tall_deblurred.png"
    assert "at its own size, 70x150" in out and str(result) in out and "Epoch" not in out
    assert Image.open(result).size == (70, 150)
    assert (photo.read_bytes(), trained_checkpoint.read_bytes()) == before
    # The strips of rows add up to what the network gives on the whole photo at once.
    net = Deblur.DeblurNet().to(memory_format=torch.channels_last).eval()
    net.load_state_dict(torch.load(trained_checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        whole = to_hwc(net(image_to_tensor(Image.open(photo).convert("RGB"), "cpu")))
    deblurred = np.asarray(Image.open(result), dtype=np.float64)
    assert np.abs(deblurred - whole * 255).max() <= 0.5 + 1e-3


def test_apply_reads_output_dir_checkpoint_without_resume(trained_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(trained_checkpoint.read_bytes())
    photo = save_photo(tmp_path)
    assert run_deblur("unused.png", out, "--apply", str(photo)) == 0
    assert (out / "photo_deblurred.png").exists()


@pytest.mark.parametrize(
    "content, message",
    [(None, "no checkpoint at"), (b"junk", "not a Deblur checkpoint")],
    ids=["no checkpoint", "a file that is not one"],
)
def test_apply_without_a_usable_checkpoint_is_refused(
    photo_path, tmp_path, capsys, content, message
):
    out = tmp_path / "out"
    if content:
        out.mkdir()
        (out / "checkpoint.pt").write_bytes(content)
    assert run_deblur("unused.png", out, "--apply", str(photo_path)) == 2
    assert message in capsys.readouterr().err
    assert not (out / "photo_deblurred.png").exists()


def test_apply_to_something_that_is_not_a_photo_is_refused(trained_checkpoint, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a picture")
    assert apply(tmp_path / "notes.txt", tmp_path, trained_checkpoint) == 2
    assert "is not an image Pillow can read" in capsys.readouterr().err


def test_apply_asks_only_for_the_room_its_png_needs(trained_checkpoint, tmp_path, monkeypatch):
    photo = save_photo(tmp_path, "wide.png", size=(400, 300))
    free = SimpleNamespace(free=2 * 2**20)  # 2 MB: a 400x300 PNG is at most 0.36 MB
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: free)
    assert apply(photo, tmp_path, trained_checkpoint) == 0
    assert (tmp_path / "wide_deblurred.png").exists()
