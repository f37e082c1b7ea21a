"""Every way a user can get the input wrong: a clear one-line error, the right exit code, nothing lost."""

import errno
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import make_photo, run_script, tiny_run_args
from PIL import Image, features

import Deblur

PRECIOUS = {"reconstructed_image.jpg": b"an earlier result", "checkpoint.pt": b"a day of training",
            "history.csv": b"epoch,total\n", "comparison.png": b"an earlier figure"}


def png_claiming(width, height):
    """A PNG header for a huge image: Pillow must refuse it before decoding anything."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def truncated_jpeg(path):
    make_photo((200, 200)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# (name, how to make the input in a folder, extra arguments, words the error line must contain)
BAD_INPUTS = [
    ("missing file", None, ["--image_path", "{dir}/nowhere.jpg"], "image not found"),
    ("a folder", None, ["--image_path", "{dir}"], "is a folder"),
    ("random bytes", lambda p: p.write_bytes(bytes(range(256)) * 8), [], "is not an image"),
    ("truncated jpeg", truncated_jpeg, [], "damaged or truncated"),
    ("decompression bomb", lambda p: p.write_bytes(png_claiming(20000, 20000)), [], "too large to open safely"),
    ("image_size too small", "photo", ["--image_size", "8"], "--image_size must be between 16 and 4096"),
    ("image_size too large", "photo", ["--image_size", "5000"], "--image_size must be between 16 and 4096"),
    ("non-numeric lr", "photo", ["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    ("negative epochs", "photo", ["--num_epochs", "-3"], "--num_epochs must be a positive whole number"),
    ("infinite weight", "photo", ["--mse_weight", "inf"], "--mse_weight must be a finite number"),
    ("negative blur", "photo", ["--blur_radius", "-1"], "--blur_radius must be zero or positive"),
    ("nothing to learn", "photo", ["--mse_weight", "0", "--perceptual_weight", "0"], "nothing to learn"),
    ("unknown option", "photo", ["--epochs", "5"], "unrecognized arguments: --epochs 5"),
    ("unknown device", "photo", ["--device", "quantum"], "--device 'quantum' is not a device"),
    ("absent device", "photo", ["--device", "cuda"], "no such device on this machine"),
    ("unknown amp dtype", "photo", ["--amp_dtype", "int8"], "--amp_dtype must be one of"),
    ("output_dir under a file", "photo", ["--output_dir", "{dir}/input.jpg/out"], "cannot write to output_dir"),
    ("resume without checkpoint", "photo", ["--resume", "{dir}/none.pt"], "no checkpoint at"),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Runs every case as `python Deblur.py` at once: each start costs seconds of importing torch."""
    cases = []
    for name, make, extra, _ in BAD_INPUTS:
        folder = tmp_path_factory.mktemp(name.replace(" ", "_"))
        image = folder / "input.jpg"
        if make == "photo":
            make_photo().save(image)
        elif make:
            make(image)
        out = folder / "out"
        out.mkdir()
        for file, content in PRECIOUS.items():
            (out / file).write_bytes(content)
        args = tiny_run_args(image, out) + [arg.format(dir=folder) for arg in extra]
        cases.append((args, out))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: run_script(*case[0]), cases))
    return {name: (result, out) for (name, *_), result, (_, out) in zip(BAD_INPUTS, results, cases, strict=True)}


@pytest.mark.parametrize("name, expected", [(case[0], case[3]) for case in BAD_INPUTS])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(bad_input_runs, name, expected):
    result, out = bad_input_runs[name]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected in lines[0]
    assert "error:" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == PRECIOUS


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
    assert f"cannot read {photo_path}: permission denied" in capsys.readouterr().err


def test_a_full_disk_is_refused_before_training(photo_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Deblur.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 10 * 2**20}))
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


def test_out_of_memory_names_the_size_and_suggests_a_smaller_one(photo_path, tmp_path, monkeypatch, capsys):
    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(Deblur, "train_step", out_of_memory)
    assert Deblur.main(tiny_run_args(photo_path, tmp_path)) == 1
    assert "out of memory on cpu at image_size 32; try a smaller --image_size such as 16" in capsys.readouterr().err
