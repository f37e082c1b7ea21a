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
from UNet import UNet


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
    photo = save_photo(tmp_path, "wide.png", size=(200, 150))
    free = SimpleNamespace(free=2 * 2**20)  # 2 MB: a 200x150 PNG is at most 0.09 MB
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: free)
    assert apply(photo, tmp_path, trained_checkpoint) == 0
    assert (tmp_path / "wide_deblurred.png").exists()


@pytest.fixture(scope="module")
def unet_after_wiener(tmp_path_factory):
    """A checkpoint of a 2-epoch U-Net run after Wiener, at a sigma-2 blur."""
    folder = tmp_path_factory.mktemp("unet")
    args = ("--model", "unet", "--restore_from", "wiener", "--blur_radius", "2", "--lr", "0.01")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLBACKEND", "Agg")
        photo = save_photo(folder, "train.png", (64, 64))
        assert run_deblur(photo, folder, *args, "--image_size", "64", "--num_epochs", "2") == 0
    return folder / "checkpoint.pt"


def test_apply_runs_the_checkpoints_own_network_after_its_first_step(
    unet_after_wiener, tmp_path, capsys
):
    photo = save_photo(tmp_path, "tall.png", size=(90, 600), seed=4)
    assert apply(photo, tmp_path / "out", unet_after_wiener) == 0  # --model is deblurnet here
    assert "in 3 strips" in capsys.readouterr().out  # of 256 rows: twice 52 + 48, rounded up
    checkpoint = torch.load(unet_after_wiener, weights_only=True)
    net = UNet().eval()
    net.load_state_dict(checkpoint["model"])
    image = image_to_tensor(Image.open(photo), "cpu")
    kernel = Deblur.blur_kernel("gaussian", 2.0)
    with torch.no_grad():
        whole = to_hwc(net(Deblur.wiener(image, kernel, Deblur.FIRST_STEP_BALANCE["gaussian"])))
    deblurred = np.asarray(Image.open(tmp_path / "out" / "tall_deblurred.png"), dtype=np.float64)
    assert np.abs(deblurred - whole * 255).max() <= 1.5  # Wiener's strips: within 1/255 or so


def test_a_checkpoint_whose_weights_are_another_networks_is_refused(
    trained_checkpoint, tmp_path, capsys
):
    checkpoint = torch.load(trained_checkpoint, weights_only=True)  # DeblurNet's weights
    checkpoint["settings"]["model"] = "unet"
    torch.save(checkpoint, tmp_path / "mislabelled.pt")
    assert apply(save_photo(tmp_path), tmp_path / "out", tmp_path / "mislabelled.pt") == 2
    assert "holds a different network architecture" in capsys.readouterr().err


def test_apply_to_a_photo_named_in_81_chinese_characters(trained_checkpoint, tmp_path, capsys):
    # 247 bytes with .png: a name the disk allows, and <name>_deblurred.png would be 257
    photo = save_photo(tmp_path, "模" * 81 + ".png")
    assert apply(photo, tmp_path / "out", trained_checkpoint) == 0
    (written,) = (tmp_path / "out").glob("*_deblurred.png")
    assert len(written.name.encode()) <= 255 and written.name.startswith("模")


def test_apply_never_replaces_a_symbolic_link_even_one_that_points_nowhere(
    trained_checkpoint, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo_deblurred.png").symlink_to(tmp_path / "nowhere.png")
    assert apply(save_photo(tmp_path), out, trained_checkpoint) == 0
    assert "photo_deblurred.png exists already and is kept" in capsys.readouterr().out
    assert (out / "photo_deblurred.png").is_symlink() and (out / "photo_deblurred.1.png").exists()
