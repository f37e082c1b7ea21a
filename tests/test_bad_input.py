"""Every way a user can get the input wrong: one clear line, the right exit code, nothing lost."""

import errno
import struct
import zlib

import pytest
import torch
from conftest import make_photo, run_script, tiny_run_args
from PIL import Image, features

import Deblur
import support

PRECIOUS = {
    "reconstructed_image.jpg": b"an earlier result",
    "checkpoint.pt": b"a day of training",
    "history.csv": b"epoch,total\n",
    "comparison.png": b"an earlier figure",
}


def png_claiming(width, height):
    """A PNG header for a huge image: Pillow must refuse it before decoding anything."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def truncated_jpeg(path):
    make_photo((200, 200)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# (name, how to make the input in a folder, extra arguments, words the error line must contain)
BAD_INPUTS = [
    ("missing file", None, ["--image_path", "{dir}/nowhere.jpg"], "image not found"),
    ("an empty folder", None, ["--image_path", "{dir}"], "is an empty folder"),
    ("a folder to apply", "photo", ["--apply", "{dir}"], "is a folder, not an image file"),
    ("random bytes", lambda p: p.write_bytes(bytes(range(256)) * 8), [], "is not an image"),
    ("truncated jpeg", truncated_jpeg, [], "image file is truncated"),
    (
        "decompression bomb",
        lambda p: p.write_bytes(png_claiming(20000, 20000)),
        [],
        "exceeds limit of",
    ),
    (
        "image_size too small",
        "photo",
        ["--image_size", "8"],
        "--image_size must be between 16 and 4096",
    ),
    (
        "image_size too large",
        "photo",
        ["--image_size", "5000"],
        "--image_size must be between 16 and 4096",
    ),
    ("non-numeric lr", "photo", ["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    ("negative epochs", "photo", ["--num_epochs", "-3"], "--num_epochs must be positive, got -3"),
    ("infinite weight", "photo", ["--mse_weight", "inf"], "--mse_weight must be a finite number"),
    ("negative blur", "photo", ["--blur_radius", "-1"], "--blur_radius must be zero or positive"),
    (
        "nothing to learn",
        "photo",
        ["--mse_weight", "0", "--perceptual_weight", "0"],
        "nothing to learn",
    ),
    ("unknown option", "photo", ["--epochs", "5"], "unrecognized arguments: --epochs 5"),
    ("unknown device", "photo", ["--device", "quantum"], "--device 'quantum': no such device"),
    (
        "absent device",
        "photo",
        ["--device", "cuda"],
        "--device 'cuda': no such device on this machine",
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
    if make == "photo":
        make_photo().save(image)
    elif make:
        make(image)
    out.mkdir()
    for file, content in PRECIOUS.items():
        (out / file).write_bytes(content)
    try:
        code = Deblur.main(tiny_run_args(image, out) + [arg.format(dir=tmp_path) for arg in extra])
    except (
        SystemExit
    ) as exit_:  # argparse's own errors exit from inside main, as they do from the shell
        code = exit_.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert expected in lines[0] and "error:" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".deblur.lock"} == PRECIOUS


def test_the_real_process_exits_2_with_one_line_and_no_traceback(tmp_path):
    for args in (["--image_path", str(tmp_path / "nowhere.jpg")], ["--lr", "fast"]):
        result = run_script(*args, "--output_dir", str(tmp_path))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (
            result.stderr
        )
        assert result.stderr.startswith(
            ("error: image not found", "Deblur.py: error: argument --lr")
        )


def working(tmp_path, name, image, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def exif_rotated(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    return working(tmp_path, "rotated.jpg", make_photo(), exif=exif)


GOOD_INPUTS = {
    "greyscale L": lambda d: working(d, "l.png", make_photo().convert("L")),
    "palette P": lambda d: working(d, "p.png", make_photo().convert("P")),
    "RGBA": lambda d: working(d, "rgba.png", make_photo().convert("RGBA")),
    "LA": lambda d: working(d, "la.png", make_photo().convert("LA")),
    "CMYK JPEG": lambda d: working(d, "cmyk.jpg", make_photo().convert("CMYK")),
    "16-bit PNG": lambda d: working(d, "i16.png", make_photo().convert("L").convert("I;16")),
    "EXIF orientation": exif_rotated,
    "BMP": lambda d: working(d, "photo.bmp", make_photo()),
    "TIFF": lambda d: working(d, "photo.tiff", make_photo()),
    "WebP": lambda d: working(d, "photo.webp", make_photo(), lossless=True),
    "non-square": lambda d: working(d, "wide.png", make_photo((90, 30))),
    "very small": lambda d: working(d, "small.png", make_photo((8, 8))),
}


@pytest.mark.parametrize("kind", GOOD_INPUTS)
def test_inputs_that_must_work_complete_a_short_run(tmp_path, kind):
    if kind == "WebP" and not features.check("webp"):
        pytest.skip("this Pillow was built without WebP")
    image = GOOD_INPUTS[kind](tmp_path)
    assert Deblur.main(tiny_run_args(image, tmp_path / "out", "--num_epochs", "2")) == 0
    assert Image.open(tmp_path / "out" / "reconstructed_image.jpg").size == (32, 32)


def test_unreadable_file_is_refused(photo_path, tmp_path, monkeypatch, capsys):
    # Root reads any file whatever its mode bits, so the refusal itself is simulated.
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Deblur.Image, "open", denied)
    assert Deblur.main(tiny_run_args(photo_path, tmp_path)) == 2
    assert f"cannot read {photo_path}: [Errno 13] Permission denied" in capsys.readouterr().err


def test_a_full_disk_is_refused_before_training(photo_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        support.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 10 * 2**20})
    )
    assert Deblur.main(tiny_run_args(photo_path, tmp_path)) == 2
    assert "has only 10 MB free" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_failed_write_leaves_the_earlier_file_whole(photo_path, tmp_path, monkeypatch, capsys):
    (tmp_path / "reconstructed_image.jpg").write_bytes(b"an earlier result")

    real_save = Deblur.Image.Image.save

    def disk_full(self, fp, *args, **kwargs):
        if kwargs.get("format") != "JPEG":
            return real_save(self, fp, *args, **kwargs)
        fp.write_bytes(b"half an ima")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Deblur.Image.Image, "save", disk_full)
    assert Deblur.main(tiny_run_args(photo_path, tmp_path)) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert (tmp_path / "reconstructed_image.jpg").read_bytes() == b"an earlier result"
    assert not list(tmp_path.glob(".*.partial"))


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"),
    ],
)
def test_out_of_memory_names_the_size_and_suggests_a_smaller_one(
    photo_path, tmp_path, monkeypatch, capsys, error
):
    def out_of_memory(*args):
        raise error

    monkeypatch.setattr(Deblur, "compute_losses", out_of_memory)
    assert Deblur.main(tiny_run_args(photo_path, tmp_path)) == 1
    assert "error: out of memory at image_size 32; try --image_size 16" in capsys.readouterr().err


def test_other_runtime_errors_are_not_disguised_as_out_of_memory(photo_path, tmp_path, monkeypatch):
    monkeypatch.setattr(
        Deblur, "compute_losses", lambda *args: (_ for _ in ()).throw(RuntimeError("a bug"))
    )
    with pytest.raises(RuntimeError, match="a bug"):
        Deblur.main(tiny_run_args(photo_path, tmp_path))


def test_a_mistyped_resume_folder_is_not_created(photo_path, tmp_path, capsys):
    typo = tmp_path / "rnus" / "a"
    assert Deblur.main(tiny_run_args(photo_path, typo, "--resume")) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert not (tmp_path / "rnus").exists()


def test_output_dir_with_a_tilde_is_the_home_folder(photo_path, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert Deblur.main(tiny_run_args(photo_path, "~/runs", "--num_epochs", "1")) == 0
    assert (tmp_path / "home" / "runs" / "checkpoint.pt").exists()
    assert not (tmp_path / "~").exists()


def test_a_holdout_that_is_the_training_image_is_said(photo_path, tmp_path, capsys):
    args = tiny_run_args(
        photo_path, tmp_path, "--num_epochs", "1", "--holdout_path", str(photo_path)
    )
    assert Deblur.main(args) == 0
    assert "holdout_path is the training image itself" in capsys.readouterr().out


def test_an_image_changed_since_the_checkpoint_is_not_resumed(photo_path, tmp_path, capsys):
    assert Deblur.main(tiny_run_args(photo_path, tmp_path / "out", "--num_epochs", "1")) == 0
    make_photo(seed=7).save(photo_path)  # another picture, the same name
    assert Deblur.main(tiny_run_args(photo_path, tmp_path / "out", "--resume")) == 2
    assert "has changed since it was trained on" in capsys.readouterr().err
