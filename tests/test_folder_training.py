"""Folder mode: learning to deblur from random crops of many photos, tested on unseen ones."""

import math
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import (
    ROOT,
    TINY,
    assert_resumed_as_uninterrupted,
    checkpoint_of,
    png_bytes,
    run_deblur,
    save_photo,
    training_folder,
)
from PIL import Image

import Deblur
from deconvolution import wiener_margin
from plumbing import photo_folder
from plumbing.progress import Progress

FOLDER = ["--crop_size", "16", "--batch_size", "2", "--blur_radius", "2.0"]


@pytest.fixture
def folder(tmp_path):
    return training_folder(tmp_path / "train")


@pytest.fixture(autouse=True)
def small_unseen_sample(tmp_path, monkeypatch):
    """The shipped sample is 512x600: its baselines take seconds; a small photo stands in."""
    sample = save_photo(tmp_path, "unseen.png", (40, 36), seed=11)
    monkeypatch.setattr(Deblur, "UNSEEN_SAMPLE", str(sample))


def run(folder, out, *extra):
    return run_deblur(folder, out, *FOLDER, *extra)


def test_a_folder_trains_on_crops_and_tests_on_two_unseen_images(folder, tmp_path, capsys):
    holdout = save_photo(tmp_path, "holdout.png", (44, 38), seed=12)
    assert run(folder, tmp_path / "out", "--holdout_path", str(holdout), "--num_epochs", "6") == 0
    out = capsys.readouterr().out
    assert "random 16x16 crops of" in out and "image_size does not apply" in out
    assert "Image: " not in out  # the one image's plan line
    assert "Neither image below was trained on" in out
    assert "leave out a 6-pixel border" in out  # Pillow's gaussian of radius 2: 13 pixels wide
    summary = [line for line in out.splitlines() if " | held out: PSNR" in line]
    assert [line.split(":")[0] for line in summary] == [
        "Blurred",
        "Wiener",
        "Wiener oracle",
        "Richardson–Lucy",
        "Sparse prior",
        "Network",
    ]
    assert all("unseen: PSNR" in line for line in summary)
    checkpoint = checkpoint_of(tmp_path / "out")
    assert checkpoint["epoch"] == 6 and torch.is_tensor(checkpoint["crops_generator"])
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == 0  # the cosine's end
    assert Image.open(tmp_path / "out" / "reconstructed_image.jpg").size == (40, 36)  # own size
    assert Image.open(tmp_path / "out" / "progress.gif").n_frames == 6  # epochs 1, 2, 5 and 6


@pytest.mark.parametrize(
    "network",
    [("--model", "unet"), ("--model", "resnet", "--adversarial_weight", "0.01")],
    ids=["unet", "resnet, adversarial"],
)
def test_a_resumed_folder_run_equals_an_uninterrupted_one(folder, tmp_path, monkeypatch, network):
    # Any blur with noise: the resumed run goes on drawing the same kernels and noise
    after_wiener = (*network, "--restore_from", "wiener", "--num_epochs", "8")
    after_wiener += ("--blur_kind", "random", "--blur_radius", "3", "--noise_level", "4")
    assert run(folder, tmp_path / "whole", *after_wiener) == 0
    real_due = Progress.due

    def stopped_at_5(progress, epoch):  # as if SIGTERM came during epoch 5
        if epoch == 5:
            progress.stop.signum = signal.SIGTERM
        return real_due(progress, epoch)

    monkeypatch.setattr(Progress, "due", stopped_at_5)
    assert run(folder, tmp_path / "split", *after_wiener) == 128 + signal.SIGTERM
    monkeypatch.setattr(Progress, "due", real_due)
    assert run(folder, tmp_path / "split", *after_wiener, "--resume") == 0
    whole = checkpoint_of(tmp_path / "whole")
    split = checkpoint_of(tmp_path / "split")
    assert split["settings"]["model"] == network[1] and split["settings"]["blur_kind"] == "random"
    assert_resumed_as_uninterrupted(whole, split)
    assert torch.equal(whole["crops_generator"], split["crops_generator"])


def test_a_folder_changed_since_its_checkpoint_is_said_and_training_goes_on(
    folder, tmp_path, capsys
):
    assert run(folder, tmp_path / "out", "--num_epochs", "1") == 0
    (folder / "photo0.png").unlink()
    save_photo(folder, "photo1.png", (56, 72), seed=9)  # the same name, another picture
    save_photo(folder, "new.png", (60, 60), seed=10)
    save_photo(folder, "photo2.png", (10, 10))  # still there, but too small: skipped
    assert run(folder, tmp_path / "out", "--num_epochs", "2", "--resume") == 0
    out = capsys.readouterr().out
    said = (
        "has photos 1 new (new.png); 1 gone (photo0.png); 1 skipped (photo2.png); "
        "1 changed (photo1.png) since"
    )
    assert said in out and "training goes on with the folder as it is now" in out
    assert sorted(checkpoint_of(tmp_path / "out")["photos"]) == ["new.png", "photo1.png"]


@pytest.mark.parametrize("kind", ["gaussian", "motion", "defocus", "box", "random"])
def test_wiener_first_works_for_every_blur_kind_even_with_zeros_in_its_spectrum(
    folder, tmp_path, capsys, kind
):
    args = ("--model", "unet", "--restore_from", "wiener", "--blur_kind", kind, "--num_epochs", "2")
    assert run(folder, tmp_path / "out", *args, "--noise_level", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    network = next(line for line in lines if line.startswith("Network:"))
    gain = float(network.split("gain ")[1].split(" dB")[0])
    assert gain > 0.5  # two steps from Wiener's own result: no kernel turns it into noise


def folder_batches(photos, crop_size, batch_size, restore_from, kind="gaussian", radius=2.0):
    """Deblur.folder_batches of the photos, as a run with these settings makes them."""
    cfg = SimpleNamespace(crop_size=crop_size, batch_size=batch_size, restore_from=restore_from)
    cfg.__dict__.update(blur_kind=kind, blur_radius=radius, blur_angle=0.0, noise_level=0.0)
    width = Deblur.kernel_width(cfg)
    cpu = torch.device("cpu")
    margin = wiener_margin(width) if cfg.restore_from == "wiener" else 0
    facts = Deblur.Facts(cpu, torch.float32, width, margin, width // 2 + margin, True)
    return Deblur.folder_batches(photos, cfg, facts, torch.Generator().manual_seed(0), None)


def test_wiener_first_crops_see_no_made_up_edge():
    """A ramp blurred from its real neighbours stays a ramp, and so does its Wiener deconvolution,
    provided the crop was cut with Wiener's margin: without it, the edges would ring. (A step of 1
    a pixel: blurred, it rounds to itself, and Wiener has no rounding noise to amplify.)"""
    ramp = torch.arange(200, dtype=torch.uint8).expand(3, 200, 200)  # brighter to the right
    inputs, sharp, _ = next(folder_batches([ramp.contiguous()], 16, 8, "wiener"))
    assert inputs.shape == (8, 5, 16, 16) and sharp.shape == (8, 3, 16, 16)
    assert (inputs[:, :3] - sharp).abs().max() < 0.5 / 255
    assert (inputs[:, 3] == 0).all()  # no noise; a sigma-2 kernel spreads light 2 sqrt(2) px
    assert torch.allclose(inputs[:, 4], torch.tensor(2 * 2**0.5 / 10), atol=1e-4)


def test_a_folders_steps_after_the_first_copy_no_kernel_to_the_device(monkeypatch):
    """The blur's and Wiener's transfer functions are made at the first step and kept: on a GPU,
    a kernel copied from the host every step can hold the host until the device catches up."""
    photos = [torch.full((3, 160, 160), 128, dtype=torch.uint8)]
    steps = folder_batches(photos, 16, 2, "wiener")
    next(steps)
    copies = []
    real_as_tensor = torch.as_tensor

    def counted_as_tensor(*args, **kwargs):
        copies.append(args[0])
        return real_as_tensor(*args, **kwargs)

    monkeypatch.setattr(torch, "as_tensor", counted_as_tensor)
    for _ in range(3):
        next(steps)
    assert copies == []


def test_a_folder_warms_the_learning_rate_up_then_decays_it():
    cfg = SimpleNamespace(**{**TINY, "lr": 1e-3, "num_epochs": 1000})
    assert Deblur.learning_rate(cfg, 50) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi / 20)) / 2)
    rates = [Deblur.learning_rate(cfg, epoch) for epoch in (100, 500, 900)]
    assert rates == sorted(rates, reverse=True) and rates[-1] > 0
    assert Deblur.learning_rate(cfg, 1000) == pytest.approx(0, abs=1e-12)


def test_the_seed_setting_decides_the_crops(folder, tmp_path):
    checkpoints = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "7")):
        assert run(folder, tmp_path / name, "--seed", seed, "--num_epochs", "2") == 0
        checkpoints[name] = checkpoint_of(tmp_path / name)
    a, b, c = checkpoints["a"], checkpoints["b"], checkpoints["c"]
    assert torch.equal(a["crops_generator"], b["crops_generator"])
    assert torch.equal(a["model"]["main.0.weight"], b["model"]["main.0.weight"])
    assert not torch.equal(a["crops_generator"], c["crops_generator"])


def test_crops_are_blurred_from_a_margin_and_seen_turned_and_mirrored():
    ramp = torch.arange(40, dtype=torch.uint8).expand(3, 40, 40) * 6  # brighter to the right
    batches = folder_batches([ramp.contiguous()], 8, 64, "blurred", radius=1.0)
    blurred, sharp, targets = next(batches)  # (blurred, sharp), always
    assert sharp.shape == blurred.shape == (64, 3, 8, 8) and targets is None
    # Blurring a ramp from real neighbours leaves it a ramp: no edge was blurred against padding
    assert torch.allclose(blurred, sharp, atol=1 / 255 + 1e-6)
    rows = (sharp[:, 0, 1:, :] - sharp[:, 0, :-1, :]).mean(dim=(1, 2))
    columns = (sharp[:, 0, :, 1:] - sharp[:, 0, :, :-1]).mean(dim=(1, 2))
    steps = torch.stack([rows, columns], dim=1) * 255
    directions = {tuple(step) for step in steps.round().int().tolist()}
    assert directions == {(0, 6), (0, -6), (6, 0), (-6, 0)}  # all four turns of the ramp


def empty(folder):
    pass


def only_text(folder):
    (folder / "notes.txt").write_text("not a picture")


def only_tiny(folder):
    save_photo(folder, "tiny.png", (12, 12))


def one_huge(folder):
    (folder / "huge.png").write_bytes(png_bytes(20000, 20000))


@pytest.mark.parametrize(
    "make, words",
    [
        (empty, "is an empty folder"),
        (only_text, "none of the 1 files"),
        (only_tiny, "of at least 28x28 pixels"),
        (one_huge, "none of the 1 files"),
    ],
    ids=["empty", "no image", "all smaller than a crop", "one huge image"],
)
def test_a_folder_with_nothing_to_train_on_is_refused_and_nothing_is_written(
    tmp_path, capsys, make, words
):
    folder = tmp_path / "train"
    folder.mkdir()
    make(folder)
    assert run(folder, tmp_path / "out") == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and words in errors[0], errors
    assert not (tmp_path / "out").exists()


def test_small_and_unreadable_files_are_skipped_with_a_note(folder, tmp_path, capsys):
    save_photo(folder, "tiny.png", (12, 12))
    (folder / "notes.txt").write_text("not a picture")
    assert run(folder, tmp_path / "out", "--num_epochs", "1") == 0
    out = capsys.readouterr().out
    assert "skipped tiny.png: 12x12 is smaller than a crop" in out
    assert "training on 3 images" in out and "the other files were skipped" in out


def test_a_folders_photos_are_decoded_once_into_the_cache_and_read_through_a_memory_map(
    folder, tmp_path, capsys
):
    photos = photo_folder.read_image_folder(folder, 16, 6)
    assert "decoding 3 photos into" in capsys.readouterr().out
    cached = sorted((tmp_path / "cache" / "deblur").iterdir())
    assert [path.name for path in cached] == sorted(f"{photo.digest}.npy" for photo in photos)
    for photo in photos:
        decoded = torch.from_numpy(np.array(Image.open(photo.path))).permute(2, 0, 1)
        assert torch.equal(photo.pixels, decoded)
    again = photo_folder.read_image_folder(folder, 16, 6)
    assert "decoding" not in capsys.readouterr().out  # the second run reads them from the cache
    assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(photos, again, strict=True))


def anonymous_memory():
    """This process's memory that no file backs (Linux's RssAnon), in bytes."""
    status = Path("/proc/self/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("RssAnon")).split()[1])
        * 1024
    )


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's memory counts")
def test_a_cached_photo_is_read_from_its_file_not_copied_into_memory(tmp_path):
    folder = tmp_path / "large"
    folder.mkdir()
    Image.linear_gradient("L").resize((3000, 3000)).convert("RGB").save(folder / "large.png")
    photo_folder.read_image_folder(folder, 16, 6)  # decodes it into the cache
    before = anonymous_memory()
    photos = photo_folder.read_image_folder(folder, 16, 6)
    assert int(photos[0].pixels.sum()) > 0  # every pixel read
    assert anonymous_memory() - before < 9_000_000  # decoded into memory, it takes 27 MB


def test_a_damaged_cached_copy_is_decoded_again(folder, tmp_path):
    photos = photo_folder.read_image_folder(folder, 16, 6)
    cached = tmp_path / "cache" / "deblur" / f"{photos[0].digest}.npy"
    start = cached.read_bytes()[:200]
    cached.unlink()  # (this process still maps the file: truncating it in place would be a fault)
    cached.write_bytes(start)  # cut short, as a full disk would leave it
    again = photo_folder.read_image_folder(folder, 16, 6)
    assert torch.equal(again[0].pixels, photos[0].pixels)


def test_a_cache_without_room_is_refused_before_anything_is_decoded(
    folder, tmp_path, monkeypatch, capsys
):
    room = SimpleNamespace(free=photo_folder.SPARE_BYTES + 20_000)  # the photos need 72,012 bytes
    monkeypatch.setattr(photo_folder.shutil, "disk_usage", lambda path: room)
    assert run(folder, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "the 3 photos new to the cache need 72.0 kB in" in error and "XDG_CACHE_HOME" in error
    assert f"whose disk has {room.free / 1e6:.2f} MB free" in error
    assert list((tmp_path / "cache" / "deblur").iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_a_cache_that_cannot_be_written_decodes_the_photos_into_memory(
    folder, tmp_path, monkeypatch, capsys
):
    (tmp_path / "a file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a file"))  # as a read-only home would
    photos = photo_folder.read_image_folder(folder, 16, 6)
    said = capsys.readouterr().out
    assert f"the photo cache {tmp_path / 'a file' / 'deblur'} cannot be written" in said
    assert "decoding the photos into memory instead; set XDG_CACHE_HOME" in said
    for photo in photos:
        assert torch.equal(
            photo.pixels, torch.from_numpy(np.array(Image.open(photo.path))).permute(2, 0, 1)
        )


def test_a_photo_whose_cached_copy_cannot_be_written_is_kept_in_memory(
    folder, tmp_path, monkeypatch, capsys
):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(photo_folder.np, "save", disk_full)
    photos = photo_folder.read_image_folder(folder, 16, 6)
    assert len(photos) == 3  # none skipped, none said to be unreadable
    assert capsys.readouterr().out.count("is kept in memory: could not write") == 3


def test_a_cached_copy_of_another_size_is_decoded_again(folder, tmp_path):
    photos = photo_folder.read_image_folder(folder, 16, 6)
    cached = tmp_path / "cache" / "deblur" / f"{photos[0].digest}.npy"
    cached.unlink()  # (still mapped by this process: replaced, not rewritten in place)
    np.save(cached, np.zeros((4, 4, 3), dtype=np.uint8))  # a valid array, but not the photo
    again = photo_folder.read_image_folder(folder, 16, 6)
    assert torch.equal(again[0].pixels, photos[0].pixels)


def test_the_shipped_training_set_is_free_small_and_apart_from_the_test_images():
    photos = sorted((ROOT / "data" / "train").iterdir())
    assert len(photos) >= 8
    assert sum(path.stat().st_size for path in photos) <= 2 * 2**20
    readme = (ROOT / "README.md").read_text()
    shipped = {path.read_bytes() for path in photos}
    for test_image in ("sample.jpg", "holdout.jpg"):
        assert (ROOT / "data" / test_image).read_bytes() not in shipped
    for path in photos:
        assert f"`{path.name}`" in readme, f"{path.name} is not credited in the README"


def test_a_users_photo_named_like_an_output_is_never_overwritten(folder, capsys):
    photo = save_photo(folder, "comparison.png", (70, 70), seed=5)
    before = photo.read_bytes()
    assert run(folder, folder) == 2  # output_dir: the training folder itself
    assert "comparison.png has the name of an output" in capsys.readouterr().err
    assert photo.read_bytes() == before


def test_training_in_its_own_output_folder_resumes_and_never_learns_from_its_results(
    folder, capsys
):
    assert run(folder, folder, "--num_epochs", "2") == 0  # cd photos && python Deblur.py ...
    assert (folder / "comparison.png").exists() and (folder / "history.csv").exists()
    assert run(folder, folder, "--num_epochs", "3", "--resume") == 0
    out = capsys.readouterr().out
    assert "Resumed from" in out and "training on 3 images" in out  # its figures left out
    assert run(folder, folder, "--num_epochs", "1") == 0  # a third run: its results stay out
    assert "training on 3 images" in capsys.readouterr().out


@pytest.mark.parametrize("test_image", ["sample", "holdout"])
def test_a_folder_that_holds_a_test_image_is_refused(folder, tmp_path, capsys, test_image):
    extra = []
    if test_image == "holdout":
        extra = ["--holdout_path", str(save_photo(folder, "cat.png", (70, 70), seed=8))]
    else:
        (folder / "sample.png").write_bytes(Path(Deblur.UNSEEN_SAMPLE).read_bytes())
    assert run(folder, tmp_path / "out", *extra) == 2
    error = capsys.readouterr().err
    assert "a test on it would not be unseen" in error and "data/train" in error
    assert not (tmp_path / "out").exists()


def test_a_damaged_photo_among_good_ones_is_skipped_with_a_note(folder, tmp_path, capsys):
    broken = save_photo(folder, "broken.jpg", (90, 90), seed=6, quality=95)
    broken.write_bytes(broken.read_bytes()[:2000])
    assert run(folder, tmp_path / "out", "--num_epochs", "1") == 0
    out = capsys.readouterr().out
    assert "skipped broken.jpg: cannot read" in out and "truncated" in out


def test_a_folder_of_folders_says_subfolders_are_not_searched(tmp_path, capsys):
    (tmp_path / "photos" / "holiday").mkdir(parents=True)
    save_photo(tmp_path / "photos" / "holiday")
    assert run(tmp_path / "photos", tmp_path / "out") == 2
    assert "holds folders but no files (subfolders are not searched)" in capsys.readouterr().err


def test_a_margin_too_large_for_the_photos_names_the_blur_radius(folder, tmp_path, capsys):
    # 16-pixel crops, 16 + 48 pixels on each side for the box blur and its Wiener step
    args = ("--restore_from", "wiener", "--blur_kind", "box", "--blur_radius", "16")
    assert run(folder, tmp_path / "out", *args) == 2
    error = capsys.readouterr().err
    assert "margin on each side" in error and "follows --blur_radius: lower it" in error


def test_a_resume_of_another_blur_is_refused_before_the_photos_are_measured(
    folder, tmp_path, capsys
):
    assert run(folder, tmp_path / "out", "--num_epochs", "1") == 0
    extra = ("--restore_from", "wiener", "--blur_kind", "box", "--blur_radius", "16", "--resume")
    assert run(folder, tmp_path / "out", *extra) == 2
    assert "it was trained with blur_kind = 'gaussian', not 'box'" in capsys.readouterr().err


def test_compiled_training_never_meets_the_test_images_sizes(folder, tmp_path, monkeypatch):
    """torch.compile compiles again for every new input size, and that compile may fail where the
    first one worked (or take minutes): the compiled forward sees the crops' size alone; the
    progress frames and the evaluation, at the test images' sizes, run eagerly."""

    def one_size_only(forward):
        sizes = set()

        def compiled(inputs, *rest):
            sizes.add(tuple(inputs.shape[-2:]))
            if len(sizes) > 1:
                raise RuntimeError(f"recompiling for {sizes} failed")
            return forward(inputs, *rest)

        return compiled

    monkeypatch.setattr(torch, "compile", one_size_only)
    assert run(folder, tmp_path / "out", "--torch_compile", "on", "--num_epochs", "3") == 0


def test_a_blur_too_large_for_a_folders_unseen_sample_names_it_and_no_option_it_lacks(
    folder, tmp_path, capsys
):
    extra = ("--blur_kind", "random", "--blur_radius", "300", "--crop_size", "16")
    assert run(folder, tmp_path / "out", *extra) == 2
    error = capsys.readouterr().err
    assert "larger than the unseen sample, data/sample.jpg" in error
    assert "--sample" not in error and "--image_size" not in error
