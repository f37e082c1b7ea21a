"""Every way a user can get the input wrong: one clear line, the right exit code, nothing lost."""

import errno
import os

import pytest
import torch
from conftest import digests, make_photo, png_bytes, run_deblur

from networks import DeblurNet
from plumbing import files, images

PRECIOUS = {
    "reconstructed_image.jpg": b"an earlier result",
    "checkpoint.pt": b"a day of training",
    "history.csv": b"epoch,total\n",
    "comparison.png": b"an earlier figure",
}


def truncated_jpeg(path):
    make_photo((200, 200)).save(path, format="JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# (name, how to make the input in a folder, extra arguments, words the error line must contain)
BAD_INPUTS = [
    ("missing file", None, ["--image_path", "{dir}/nowhere.jpg"], "image not found"),
    ("a folder of folders", None, ["--image_path", "{dir}"], "subfolders are not searched"),
    ("a folder to apply", "photo", ["--apply", "{dir}"], "is a folder, not an image file"),
    ("random bytes", lambda p: p.write_bytes(bytes(range(256)) * 8), [], "is not an image"),
    ("truncated jpeg", truncated_jpeg, [], "image file is truncated"),
    (
        "decompression bomb",
        lambda p: p.write_bytes(png_bytes(20000, 20000)),
        [],
        "exceeds limit of",
    ),
    (
        "image_size too small",
        "photo",
        ["--image_size", "8"],
        "--image_size must be between 16 and 4,096",
    ),
    (
        "image_size too large",
        "photo",
        ["--image_size", "5000"],
        "--image_size must be between 16 and 4,096",
    ),
    ("non-numeric lr", "photo", ["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (
        "negative epochs",
        "photo",
        ["--num_epochs", "-3"],
        "--num_epochs must be between 1 and 1,000,000,000, got -3",
    ),
    ("infinite weight", "photo", ["--mse_weight", "inf"], "--mse_weight must be a finite number"),
    ("negative blur", "photo", ["--blur_radius", "-1"], "--blur_radius must be between 0 and 682"),
    (
        "nothing to learn",
        "photo",
        ["--mse_weight", "0", "--perceptual_weight", "0"],
        "nothing to learn",
    ),
    ("unknown option", "photo", ["--epochs", "5"], "unrecognized arguments: --epochs 5"),
    ("unknown model", "photo", ["--model", "vgg"], "--model: invalid choice: 'vgg' (choose"),
    (
        "unknown first step",
        "photo",
        ["--restore_from", "sharp"],
        "--restore_from: invalid choice: 'sharp' (choose from 'blurred', 'wiener')",
    ),
    ("unknown device", "photo", ["--device", "quantum"], "--device 'quantum': no such device"),
    (
        "absent device",
        "photo",
        ["--device", "cuda:99"],  # refused on a machine with GPUs too
        "--device 'cuda:99': no such device on this machine",
    ),
    (
        "unknown amp dtype",
        "photo",
        ["--amp_dtype", "int8"],
        "argument --amp_dtype: invalid choice: 'int8'",
    ),
    (
        "output_dir under a file",
        "photo",
        ["--output_dir", "{dir}/input.jpg/out"],
        "cannot create files in output_dir",
    ),
    ("resume without checkpoint", "photo", ["--resume", "{dir}/none.pt"], "no checkpoint at"),
    ("a 300-character image", None, ["--image_path", "{dir}/" + "x" * 300], "File name too long"),
    ("a 300-character photo", "photo", ["--apply", "{dir}/" + "x" * 300], "File name too long"),
    ("a 300-character checkpoint", "photo", ["--resume", "x" * 300], "File name too long"),
    ("a pipe to apply", "fifo", ["--apply", "{dir}/pipe"], "is not a regular file"),
    (
        "resume a folder",
        "photo",
        ["--resume", "{dir}"],
        "is a folder; pass the checkpoint file in it",
    ),
]


@pytest.mark.parametrize(
    "name, make, extra, expected", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_is_refused_in_one_line_and_changes_nothing(
    tmp_path, capsys, name, make, extra, expected
):
    image, out = tmp_path / "input.jpg", tmp_path / "out"
    if make in ("photo", "fifo"):
        make_photo().save(image)
    if make == "fifo":
        os.mkfifo(tmp_path / "pipe")
    elif callable(make):
        make(image)
    out.mkdir()
    for file, content in PRECIOUS.items():
        (out / file).write_bytes(content)
    try:
        code = run_deblur(image, out, *[arg.format(dir=tmp_path) for arg in extra])
    except SystemExit as exit_:  # argparse's own errors exit from inside main, as from a shell
        code = exit_.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert expected in lines[0] and "error:" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".deblur.lock"} == PRECIOUS


def test_a_full_disk_is_refused_before_training(photo_path, tmp_path, monkeypatch, capsys):
    usage = type("Usage", (), {"free": 10 * 2**20, "total": 2**40})
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage)
    assert run_deblur(photo_path, tmp_path) == 2
    assert "has only 10 MB free" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.pt").exists()


def test_the_free_space_asked_for_is_what_this_run_needs(photo_path, tmp_path, monkeypatch, capsys):
    needed = files.space_needed(DeblurNet(), 32)  # two checkpoints and the outputs at 32 px
    assert needed == 2 * 3 * 4 * 1_331_459 + 16 * 32**2 + 2**24
    for free, code in ((needed - 2**20, 2), (needed + 2**20, 0)):
        usage = type("Usage", (), {"free": free, "total": 2**40})
        monkeypatch.setattr(files.shutil, "disk_usage", lambda path, usage=usage: usage)
        assert run_deblur(photo_path, tmp_path / str(code), "--num_epochs", "1") == code
    assert f"this run needs about {needed // 2**20 + 1} MB" in capsys.readouterr().err


def test_a_failed_write_leaves_the_earlier_file_whole(photo_path, tmp_path, monkeypatch, capsys):
    (tmp_path / "reconstructed_image.jpg").write_bytes(b"an earlier result")
    files.remember(tmp_path / "reconstructed_image.jpg")  # an earlier run's: Deblur's to replace
    real_save = images.Image.Image.save

    def disk_full(self, fp, *args, **kwargs):
        if kwargs.get("format") != "JPEG":
            return real_save(self, fp, *args, **kwargs)
        fp.write_bytes(b"half an ima")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(images.Image.Image, "save", disk_full)
    assert run_deblur(photo_path, tmp_path) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert (tmp_path / "reconstructed_image.jpg").read_bytes() == b"an earlier result"
    assert not list(tmp_path.glob(".*.partial"))


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"),
    ],
    ids=["CUDA", "CPU"],
)
def test_out_of_memory_names_the_size_and_suggests_a_smaller_one(
    photo_path, tmp_path, monkeypatch, capsys, error
):
    def out_of_memory(*args):
        raise error

    monkeypatch.setattr(DeblurNet, "forward", out_of_memory)
    assert run_deblur(photo_path, tmp_path) == 1
    assert "error: out of memory at image_size 32; try --image_size 16" in capsys.readouterr().err


def test_other_runtime_errors_are_not_disguised_as_out_of_memory(photo_path, tmp_path, monkeypatch):
    def bug(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(DeblurNet, "forward", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        run_deblur(photo_path, tmp_path)


def test_output_dir_with_a_tilde_is_the_home_folder(photo_path, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert run_deblur(photo_path, "~/runs", "--num_epochs", "1") == 0
    assert (tmp_path / "home" / "runs" / "checkpoint.pt").exists()
    assert not (tmp_path / "~").exists()


def test_a_users_own_figures_in_output_dir_are_never_replaced(photo_path, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("progress.png", "progress.gif", "comparison.png", "history.csv"):
        (out / name).write_bytes(f"the user's own {name}".encode())
    before = digests(out)
    assert run_deblur(photo_path, out) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "which Deblur did not write" in errors[0], errors
    assert digests(out) == before and not (out / ".deblur.lock").exists()


def test_a_refused_run_creates_no_output_dir(photo_path, tmp_path, monkeypatch, capsys):
    usage = type("Usage", (), {"free": 10 * 2**20, "total": 2**40})
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage)
    assert run_deblur(photo_path, tmp_path / "new" / "run") == 2
    assert "has only 10 MB free" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
