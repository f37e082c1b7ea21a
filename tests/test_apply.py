"""--apply: a trained network on a photo of any size, in strips, never over a user's file; the
blur it undoes: the one it was trained on, or for an any-blur checkpoint the one the user names."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import apply_deblur as apply
from conftest import checkpoint_of, make_photo, run_deblur, save_photo
from PIL import Image
from torch import nn

import Deblur
from blurs import NO_BLUR, blur_kernel
from networks import NETWORKS, DeblurNet
from plumbing import files
from plumbing.errors import DeblurError
from plumbing.images import as_8_bits, image_to_tensor, to_hwc
from plumbing.kernel_file import read_kernel


def deblurred(path):
    return np.asarray(Image.open(path), dtype=np.float64)


def test_apply_deblurs_a_photo_at_its_own_size_without_training(
    trained_checkpoint, tmp_path, capsys
):
    photo = save_photo(tmp_path, "tall.jpg", size=(70, 150), seed=9, quality=95)
    before = photo.read_bytes(), trained_checkpoint.read_bytes()
    assert apply(photo, tmp_path / "out", trained_checkpoint) == 0
    out = capsys.readouterr().out
    result = tmp_path / "out" / "tall_deblurred.png"
    assert "at its own size, 70x150" in out and str(result) in out and "Epoch" not in out
    assert "undoes gaussian blur of radius 5.0, the blur it was trained on" in out
    assert Image.open(result).size == (70, 150)
    assert (photo.read_bytes(), trained_checkpoint.read_bytes()) == before
    # The tiles add up to what the network gives on the whole photo at once, within an 8-bit step
    # (what it is given is kept in float16)
    net = DeblurNet().to(memory_format=torch.channels_last).eval()
    net.load_state_dict(checkpoint_of(trained_checkpoint)["model"])
    with torch.no_grad():
        whole = to_hwc(net(image_to_tensor(Image.open(photo).convert("RGB"), "cpu")))
    assert np.abs(deblurred(result) - whole * 255).max() <= 1.0


def test_apply_reads_output_dir_checkpoint_without_resume(trained_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(trained_checkpoint.read_bytes())
    photo = save_photo(tmp_path)
    assert run_deblur("unused.png", out, "--apply", str(photo)) == 0  # the settings of its run
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
    assert run_deblur("unused.png", out, "--apply", str(photo_path), "--resume", "auto") == 2
    assert message in capsys.readouterr().err
    assert not (out / "photo_deblurred.png").exists()


def test_apply_to_something_that_is_not_a_photo_is_refused(trained_checkpoint, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a picture")
    assert apply(tmp_path / "notes.txt", tmp_path, trained_checkpoint) == 2
    assert "is not an image Pillow can read" in capsys.readouterr().err


def test_apply_asks_only_for_the_room_its_png_needs(trained_checkpoint, tmp_path, monkeypatch):
    photo = save_photo(tmp_path, "wide.png", size=(100, 75))
    free = SimpleNamespace(free=2 * 2**20, total=2**40)  # 2 MB: a 100x75 PNG is at most 0.03 MB
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


def whole_photo_result(checkpoint, photo, kernel, noise, rounds=None):
    """What the checkpoint's network, after its Wiener step, makes of the whole photo at once, then
    in `rounds` of plug and play (by default the settings'), each to 8 bits as --apply's tiles."""
    saved = checkpoint_of(checkpoint)
    net = NETWORKS[saved["settings"]["model"]](inputs=5).eval()  # Wiener's, noise, spread
    net.load_state_dict(saved["model"])
    trained = SimpleNamespace(**saved["settings"])
    image = image_to_tensor(Image.open(photo), "cpu")

    def at_once(described):
        # In half precision, as --apply keeps it: the random corrections below magnify its steps
        return as_8_bits(net(described.half().float()))

    rounds = Deblur.SETTINGS["prior_rounds"].default if rounds is None else rounds
    with torch.no_grad():
        restored = Deblur.plug_and_play(at_once, image, kernel, noise, trained, rounds)
    return restored[0].permute(1, 2, 0).numpy().astype(np.float64)  # 8-bit steps


# The spread of random last weights that makes either network's correction about 0.6 (of [0, 1]):
# the ResNet's features, added up over six blocks at full size, are a dozen times the U-Net's
@pytest.mark.parametrize("model, spread", [("unet", 1.0), ("resnet", 0.08)])
def test_apply_runs_the_checkpoints_own_network_after_its_first_step(
    unet_after_wiener, tmp_path, capsys, model, spread
):
    # A correction large enough to see, from every pixel the network reaches: random weights
    checkpoint = checkpoint_of(unet_after_wiener)
    torch.manual_seed(0)
    random = NETWORKS[model](inputs=5)
    nn.init.normal_(random.last.weight, std=spread)
    checkpoint["model"] = random.state_dict()
    checkpoint["settings"]["model"] = model
    torch.save(checkpoint, tmp_path / "visible.pt")
    photo = save_photo(tmp_path, "tall.png", size=(90, 600), seed=4)
    # float32 throughout, as the whole photo is computed below: the tiles, not the precision
    settings = ["--noise_level", "1", "--amp_dtype", "float32"]
    assert apply(photo, tmp_path / "out", tmp_path / "visible.pt", *settings) == 0
    assert "in 2 tiles" in capsys.readouterr().out  # of 512 x 512 pixels
    whole = whole_photo_result(tmp_path / "visible.pt", photo, blur_kernel("gaussian", 2.0), 1.0)
    untouched = whole_photo_result(unet_after_wiener, photo, blur_kernel("gaussian", 2.0), 1.0)
    assert np.abs(whole - untouched).mean() > 0.5  # the correction shows
    assert np.abs(deblurred(tmp_path / "out" / "tall_deblurred.png") - whole).max() <= 1.0


def test_apply_estimates_the_photos_noise_when_not_told(unet_after_wiener, tmp_path, capsys):
    assert apply(save_photo(tmp_path), tmp_path / "out", unet_after_wiener) == 0
    assert "estimated the photo's noise at" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--blur_radius", "3"], "undoes only gaussian blur of radius 2.0, the blur it was"),
        (["--blur_kind", "motion"], "undoes only gaussian blur of radius 2.0"),
        (["--kernel", "psf.png"], "undoes only gaussian blur of radius 2.0"),
    ],
    ids=["another radius", "another kind", "a measured kernel"],
)
def test_a_fixed_blur_checkpoint_refuses_to_undo_another_blur(
    unet_after_wiener, tmp_path, capsys, extra, words
):
    Image.new("L", (5, 5), 255).save(tmp_path / "psf.png")
    extra = [str(tmp_path / word) if word == "psf.png" else word for word in extra]
    assert apply(save_photo(tmp_path), tmp_path / "out", unet_after_wiener, *extra) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and words in error and "--blur_kind random" in error
    assert not (tmp_path / "out").exists()


def test_the_blur_it_was_trained_on_may_be_named_again(unet_after_wiener, tmp_path):
    extra = ("--blur_kind", "gaussian", "--blur_radius", "2", "--noise_level", "0")
    assert apply(save_photo(tmp_path), tmp_path / "out", unet_after_wiener, *extra) == 0


@pytest.fixture(scope="module")
def any_blur(tmp_path_factory):
    """A checkpoint of a 2-epoch U-Net run after Wiener on random blur, for any blur."""
    folder = tmp_path_factory.mktemp("any")
    args = ("--model", "unet", "--restore_from", "wiener", "--blur_kind", "random")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLBACKEND", "Agg")
        photo = save_photo(folder, "train.png", (48, 48))
        more = ("--blur_radius", "3", "--image_size", "48", "--num_epochs", "2", "--lr", "0.01")
        assert run_deblur(photo, folder, *args, *more, "--noise_level", "4") == 0
    return folder / "checkpoint.pt"


def test_an_any_blur_checkpoint_undoes_a_measured_kernel(any_blur, tmp_path):
    psf = np.zeros((5, 9))
    psf[2, 1:8] = 1  # a horizontal line, as a camera's shake might draw it
    Image.fromarray((psf * 255).astype(np.uint8)).save(tmp_path / "psf.png")
    photo = save_photo(tmp_path, "photo.png", size=(60, 40))
    extra = ("--kernel", str(tmp_path / "psf.png"), "--noise_level", "2")
    assert apply(photo, tmp_path / "out", any_blur, *extra) == 0
    line = np.pad(psf / psf.sum(), ((2, 2), (0, 0)))  # on a 9x9 square, centred
    whole = whole_photo_result(any_blur, photo, line, 2.0)
    assert np.abs(deblurred(tmp_path / "out" / "photo_deblurred.png") - whole).max() <= 1.0


def test_plug_and_play_runs_its_rounds_told_no_blur_and_less_noise_for_any_blur_networks_only():
    told = []  # what the network is told each time: its noise level and the kernel's spread

    def network(described):
        told.append(described[0, 3:, 0, 0].tolist())
        return described[:, :3]

    photo = image_to_tensor(make_photo((40, 40)), "cpu")
    kernel = blur_kernel("motion", 3.0, 0.0)
    any_blur = SimpleNamespace(blur_kind="random", restore_from="wiener", noise_level=8.0)
    Deblur.plug_and_play(network, photo, kernel, 2.0, any_blur, 3)
    noise, spread = zip(*told, strict=True)
    assert spread[0] > 0 and spread[1:] == (0, 0, 0)  # the kernel, then no blur
    assert noise == pytest.approx((0.2, 0.8, 0.4, 0.2), abs=0.01)  # 8-bit steps / 10
    one_blur = SimpleNamespace(blur_kind="motion", restore_from="wiener", noise_level=8.0)
    told.clear()
    Deblur.plug_and_play(network, photo, kernel, 2.0, one_blur, 3)
    assert len(told) == 1  # it knows no other blur, nor none
    told.clear()  # no blur: nothing for the data step to undo (a sharp photo lost 1.7 dB)
    Deblur.plug_and_play(network, photo, np.pad(NO_BLUR, 2), 2.0, any_blur, 3)
    assert len(told) == 1


def test_an_any_blur_checkpoints_apply_runs_its_rounds_as_on_the_whole_photo_unless_told_none(
    any_blur, tmp_path, capsys
):
    photo = save_photo(tmp_path, "photo.png", size=(60, 40))
    named = ("--blur_kind", "motion", "--blur_radius", "3", "--blur_angle", "30")
    assert apply(photo, tmp_path / "rounds", any_blur, *named, "--noise_level", "2") == 0
    said = capsys.readouterr().out
    assert f"Plug and play, round 3, on {photo}: 60x40 pixels" in said and "round 4" not in said
    assert (
        apply(
            photo, tmp_path / "out", any_blur, *named, "--noise_level", "2", "--prior_rounds", "0"
        )
        == 0
    )
    kernel = blur_kernel("motion", 3.0, 30.0)
    single = whole_photo_result(any_blur, photo, kernel, 2.0, rounds=0)
    assert "Plug and play" not in capsys.readouterr().out
    assert np.abs(deblurred(tmp_path / "out" / "photo_deblurred.png") - single).max() <= 1.0
    rounds = whole_photo_result(any_blur, photo, kernel, 2.0, rounds=3)
    assert np.abs(deblurred(tmp_path / "rounds" / "photo_deblurred.png") - rounds).max() <= 1.0
    assert np.abs(rounds - single).max() > 5


def test_apply_runs_the_network_under_autocast_and_wiener_and_the_data_step_outside_it(
    any_blur, tmp_path, monkeypatch
):
    # Under CPU autocast, a large photo's Wiener (kept in float16) fails to concatenate its
    # description; and its FFTs are float32's to do
    autocast = {"network": [], "wiener": []}

    def watched(part, real):
        def call(*args, **kwargs):
            autocast[part].append(torch.is_autocast_enabled("cpu"))
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(Deblur, "network_input", watched("wiener", Deblur.network_input))
    monkeypatch.setattr(Deblur, "data_step", watched("wiener", Deblur.data_step))
    unet = NETWORKS["unet"]
    monkeypatch.setattr(unet, "correction", watched("network", unet.correction))
    photo = save_photo(tmp_path, "photo.png", size=(60, 40))
    named = ("--blur_kind", "motion", "--blur_radius", "3", "--noise_level", "2")
    assert apply(photo, tmp_path / "out", any_blur, *named, "--amp_dtype", "bfloat16") == 0
    assert autocast["network"] == [True] * 4 and autocast["wiener"] == [False] * 7


def test_an_any_blur_checkpoint_undoes_a_blur_named_by_its_settings(any_blur, tmp_path):
    photo = save_photo(tmp_path, "photo.png", size=(60, 40))
    extra = ("--blur_kind", "motion", "--blur_radius", "3", "--blur_angle", "30")
    assert apply(photo, tmp_path / "out", any_blur, *extra, "--noise_level", "0") == 0
    whole = whole_photo_result(any_blur, photo, blur_kernel("motion", 3.0, 30.0), 0.0)
    assert np.abs(deblurred(tmp_path / "out" / "photo_deblurred.png") - whole).max() <= 1.0


def test_a_blind_checkpoint_takes_no_kernel(tmp_path, capsys):
    args = ("--model", "unet", "--blur_kind", "random", "--blur_radius", "2", "--num_epochs", "1")
    assert run_deblur(save_photo(tmp_path, "train.png"), tmp_path / "blind", *args) == 0
    checkpoint = tmp_path / "blind" / "checkpoint.pt"
    assert apply(save_photo(tmp_path), tmp_path / "out", checkpoint) == 0
    extra = ("--blur_kind", "motion", "--blur_radius", "3")
    assert apply(save_photo(tmp_path), tmp_path / "other", checkpoint, *extra) == 2
    assert "is blind: it finds the blur itself" in capsys.readouterr().err
    assert apply(save_photo(tmp_path), tmp_path / "noisy", checkpoint, "--noise_level", "3") == 0
    assert "is blind: it is told no noise level, --noise_level is not used" in (
        capsys.readouterr().out
    )


def test_a_checkpoint_whose_weights_are_another_networks_is_refused(
    trained_checkpoint, tmp_path, capsys
):
    checkpoint = checkpoint_of(trained_checkpoint)  # DeblurNet's weights
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


def text_file(path):
    path.write_text("not a kernel")


def saved(array):
    def save(path):
        np.save(path, array, allow_pickle=True)

    return save


def grey_image(side, value=255):
    def save(path):
        Image.new("L", (side, side), value).save(path, format="PNG")

    return save


# (case, file name, how to make it, words of the one-line refusal)
BAD_KERNELS = [
    ("missing", "none.png", None, "kernel not found"),
    ("not an image", "psf.png", text_file, "is neither an image Pillow can read nor a .npy"),
    ("all zeros", "psf.png", grey_image(5, 0), "is all zeros: it spreads no light"),
    ("negative", "psf.npy", saved(np.array([[1.0, -1.0], [1.0, 1.0]])), "has negative values"),
    ("NaN", "psf.npy", saved(np.array([[1.0, np.nan]])), "has NaN or infinite values"),
    ("one-dimensional", "psf.npy", saved(np.ones(5)), "array of shape (5,); a blur kernel is 2-D"),
    ("Python objects", "psf.npy", saved(np.array([{}], dtype=object)), "not a NumPy array"),
    ("huge", "psf.png", grey_image(300), "is 300x300, larger than 255 pixels a side"),
    ("larger than the photo", "psf.png", grey_image(45), "larger than the photo, 40x30; "),
]


@pytest.mark.parametrize("case, name, make, words", BAD_KERNELS, ids=[c[0] for c in BAD_KERNELS])
def test_a_kernel_that_cannot_be_one_is_refused_by_name(
    any_blur, tmp_path, capsys, case, name, make, words
):
    if make:
        make(tmp_path / name)
    photo = save_photo(tmp_path, "photo.png", size=(40, 30))
    extra = ("--kernel", str(tmp_path / name), "--noise_level", "1")
    assert apply(photo, tmp_path / "out", any_blur, *extra) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and words in errors[0] and errors[0].startswith("error:"), errors
    assert not (tmp_path / "out").exists()


def test_a_kernel_of_huge_values_is_scaled_before_it_is_summed(tmp_path):
    np.save(tmp_path / "psf.npy", np.full((3, 3), 1e308))  # their sum overflows to infinity
    assert np.array_equal(read_kernel(tmp_path / "psf.npy"), np.full((3, 3), 1 / 9))


def test_a_photo_one_pixel_high_is_deblurred_without_a_noise_of_nan(any_blur, tmp_path, capsys):
    photo = save_photo(tmp_path, "line.png", image=make_photo((40, 1)))
    np.save(tmp_path / "none.npy", np.ones((1, 1)))
    assert apply(photo, tmp_path / "out", any_blur, "--kernel", str(tmp_path / "none.npy")) == 0
    assert "estimated the photo's noise at 0.00 8-bit steps" in capsys.readouterr().out
    result = deblurred(tmp_path / "out" / "line_deblurred.png")
    assert result.shape == (1, 40, 3) and np.abs(result - deblurred(photo)).mean() < 8


def test_a_measured_psf_loses_its_faint_background(tmp_path, capsys):
    psf = np.full((41, 41), 4, dtype=np.uint8)  # the floor a camera adds everywhere
    psf[20, 14:27] = 255  # a 13-pixel motion line
    Image.fromarray(psf).save(tmp_path / "psf.png")
    kernel = read_kernel(tmp_path / "psf.png")
    assert np.allclose(kernel[20, 14:27], 1 / 13) and kernel.sum() == pytest.approx(1.0)
    assert "psf.png: took away its background, 1.6% of its peak" in capsys.readouterr().out


def npz_named_npy(path):
    np.savez(path.with_suffix(".npz"), np.ones((3, 3)))  # an archive of arrays, not one
    path.with_suffix(".npz").rename(path)


@pytest.mark.parametrize(
    "name, make, words",
    [
        ("psfs", Path.mkdir, "is a folder; pass the kernel's file in it"),
        ("psf.npy", npz_named_npy, "is not a NumPy array Deblur can read"),
        ("psf.npy", lambda path: Image.new("L", (5, 5)).save(path, "PNG"), "another kind of file"),
    ],
    ids=["a folder", "an npz named npy", "a png named npy"],
)
def test_a_kernel_file_of_the_wrong_kind_says_what_it_is(tmp_path, name, make, words):
    make(tmp_path / name)
    with pytest.raises(DeblurError) as error:
        read_kernel(tmp_path / name)
    assert words in str(error.value) and "allow_pickle" not in str(error.value)


def test_a_blur_edited_in_the_settings_block_is_the_one_undone(any_blur, tmp_path, capsys):
    photo = save_photo(tmp_path, "photo.png", size=(60, 40))
    edited = {"blur_kind": "motion", "blur_radius": 3.0, "blur_angle": 30.0, "noise_level": 2.0}
    with pytest.MonkeyPatch.context() as patch:  # as if these lines of Deblur.py were edited
        for name, value in edited.items():
            patch.setitem(Deblur.SETTINGS, name, Deblur.SETTINGS[name]._replace(default=value))
        arguments = ["--apply", str(photo), "--resume", str(any_blur), "--kernel", ""]
        assert Deblur.main([*arguments, "--output_dir", str(tmp_path / "out")]) == 0
    assert "estimated" not in capsys.readouterr().out  # neither the blur nor the noise
    whole = whole_photo_result(any_blur, photo, blur_kernel("motion", 3.0, 30.0), 2.0)
    assert np.abs(deblurred(tmp_path / "out" / "photo_deblurred.png") - whole).max() <= 1.0
