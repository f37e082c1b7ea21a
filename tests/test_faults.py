"""Faults that must not lose work, each run as a real `python Deblur.py` process (issue 9's cases).

Every case starts from a folder holding files the user cares about; their bytes are checksummed
before and must all still be there afterwards (under their own name, or kept aside as
checkpoint.N.pt).
"""

import hashlib
import signal
import subprocess
import sys
import textwrap
import zlib
from struct import pack

import numpy as np
import pytest
import torch
from conftest import (
    ROOT,
    ParallelRuns,
    make_photo,
    signal_after,
    start_a_long_run,
    tiny_run_args,
)
from PIL import Image

import Deblur
import support

EARLIER_CHECKPOINT = b"an earlier run's checkpoint: a day of training"


def png_rgb16(path, width=40, height=32):
    """A 16-bit-per-channel RGB PNG, written by hand: Pillow opens it as 8-bit RGB, silently."""
    pixels = (np.random.default_rng(0).random((height, width, 3)) * 65535).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in pixels)

    def chunk(kind, data):
        return pack(">I", len(data)) + kind + data + pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def nan_checkpoint(path):
    net = Deblur.DeblurNet()
    state = net.state_dict()
    state["main.0.weight"][0, 0, 0, 0] = float("nan")
    settings = {
        "image_size": 32,
        "blur_radius": 5.0,
        "image_path": "",
        "blur_kind": "gaussian",
        "blur_angle": 0.0,
    }
    torch.save(
        {
            "model": state,
            "optimizer": torch.optim.Adam(net.parameters()).state_dict(),
            "scaler": {},
            "settings": settings,
            "epoch": 4,
            "elapsed": 1.0,
            "history": [],
        },
        path,
    )


# Disk full inside torch.save, as PyTorch reports it: a RuntimeError after part of the file.
DISK_FULL = textwrap.dedent("""
    import sys, torch
    def full_disk(obj, f, *args, **kwargs):
        open(f, "wb").write(b"half a checkpoint")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\\nfile write failed"
        )
    torch.save = full_disk
    sys.path.insert(0, {root!r})
    import Deblur
    sys.exit(Deblur.main(sys.argv[1:]))
""").format(root=str(ROOT))


def animated(folder):
    frames = [make_photo(seed=1), make_photo(seed=2)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    return folder / "anim.gif"


def photo(folder, name="photo.png", image=None):
    (image or make_photo()).save(folder / name)
    return folder / name


# (case, how to prepare the folder -> (image, extra args), exit code, words in the output,
#  signal to send)
CASES = [
    (
        "1 SIGTERM",
        lambda d: (photo(d), ["--num_epochs", "100000", "--log_every", "5"]),
        143,
        "Training stopped early at epoch",
        signal.SIGTERM,
    ),
    (
        "1 SIGHUP",
        lambda d: (photo(d), ["--num_epochs", "100000", "--log_every", "5"]),
        129,
        "Training stopped early at epoch",
        signal.SIGHUP,
    ),
    ("6 disk full inside torch.save", lambda d: (photo(d), []), 1, "could not write", None),
]


def prepare(case, folder):
    name, make, *_ = case
    out = folder / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(EARLIER_CHECKPOINT)
    if name.startswith("3"):
        (out / "checkpoint.1.pt").write_bytes(b"an even earlier run's checkpoint")
    if name == "5 checkpoint with NaN weights":
        nan_checkpoint(folder / "nan.pt")
    image, extra = make(folder)
    before = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }
    return image, tiny_run_args(image, out, *extra), before


def execute(case, ready):
    name, _, _, _, send = case
    _, args, _ = ready
    command = [sys.executable, "-u", str(ROOT / "Deblur.py"), *args]
    if name.startswith("6"):
        command = [sys.executable, "-u", "-c", DISK_FULL, *args]
    if send is None:
        return subprocess.run(command, capture_output=True, text=True, timeout=180)
    code, out, err = signal_after("Epoch 10,", send)(command, env=None)
    return subprocess.CompletedProcess(command, code, out, err)


@pytest.fixture(scope="module")
def fault_runs(request, tmp_path_factory):
    return ParallelRuns(request, tmp_path_factory, CASES, prepare, execute)


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_a_fault_ends_in_one_clear_line_and_loses_nothing(fault_runs, case):
    name, _, code, words, _ = case
    result, _, image, args, before = fault_runs[name]
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert words in output, output
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    if code == 2:  # refused: exactly one line on stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    folder = image.parent if image.parent.name != "out" else image.parent.parent
    after = {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}
    lost = {path for path, digest in before.items() if digest not in after}
    assert not lost, f"lost: {lost}"


def test_sigterm_writes_a_checkpoint_that_resume_continues(fault_runs, capsys):
    result, _, image, args, _ = fault_runs["1 SIGTERM"]
    out = image.parent / "out"
    stopped = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert f"stopped early at epoch {stopped} of 100000" in result.stdout
    assert (
        out / "checkpoint.1.pt"
    ).read_bytes() == EARLIER_CHECKPOINT  # moved aside only once replaced
    assert Deblur.main(tiny_run_args(image, out, "--resume", "--num_epochs", str(stopped + 2))) == 0
    assert f"Resumed from {out / 'checkpoint.pt'} at epoch {stopped}" in capsys.readouterr().out


def fresh_run(folder):
    return photo(folder), []


def final_epoch_only(folder):
    return photo(folder), ["--num_epochs", "3", "--log_every", "50"]


def test_fresh_runs_keep_every_earlier_checkpoint_under_a_new_number(tmp_path):
    image, args, _ = prepare(("3 fresh run over earlier checkpoints", fresh_run), tmp_path)
    assert Deblur.main(args) == 0
    out = image.parent / "out"
    assert (out / "checkpoint.1.pt").read_bytes() == b"an even earlier run's checkpoint"
    assert (out / "checkpoint.2.pt").read_bytes() == EARLIER_CHECKPOINT
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 4


def test_a_failed_checkpoint_write_replaces_nothing_and_leaves_no_partial_file(fault_runs):
    result, _, image, _, _ = fault_runs["6 disk full inside torch.save"]
    out = image.parent / "out"
    assert "could not write" in result.stderr and "nothing was replaced" in result.stderr
    assert (out / "checkpoint.pt").read_bytes() == EARLIER_CHECKPOINT
    assert not list(out.glob(".*partial"))


def test_the_final_epoch_makes_the_history_and_the_curves(tmp_path):
    image, args, _ = prepare(("8 log_every > num_epochs", final_epoch_only), tmp_path)
    assert Deblur.main(args) == 0
    out = image.parent / "out"
    assert (out / "history.csv").read_text().splitlines()[1].startswith("3,")
    assert (out / "training_curves.png").stat().st_size > 0


def test_a_second_run_in_the_same_folder_is_refused_naming_the_first(photo_path, tmp_path):
    out = tmp_path / "out"
    first = start_a_long_run(photo_path, out, until="Epoch 5,")
    second = subprocess.run(
        [sys.executable, str(ROOT / "Deblur.py"), *tiny_run_args(photo_path, out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"another Deblur run (PID {first.pid}) is using output_dir {out}" in second.stderr
    assert first.returncode == 130
    assert (
        torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] >= 5
    )  # the first run's, untouched


def test_the_free_space_asked_for_is_what_this_run_needs(photo_path, tmp_path, monkeypatch, capsys):
    needed = support.space_needed(32)  # two checkpoints and the outputs at 32 px
    for free, code in ((needed - 2**20, 2), (needed + 2**20, 0)):
        monkeypatch.setattr(
            support.shutil, "disk_usage", lambda path, free=free: type("Usage", (), {"free": free})
        )
        assert Deblur.main(tiny_run_args(photo_path, tmp_path)) == code
    assert f"this run needs about {needed // 2**20 + 1} MB" in capsys.readouterr().err


# Cases 2, 3, 5, 7, 8 and 9, in-process (a process each would add minutes to the suite), with the
# same checks.
IN_PROCESS = [
    (
        "2 input named like an output",
        lambda d: (photo(d / "out", "reconstructed_image.jpg"), []),
        2,
        "has the name of an output in output_dir",
    ),
    ("3 fresh run over earlier checkpoints", fresh_run, 0, "was kept as checkpoint.2.pt"),
    ("8 log_every > num_epochs", final_epoch_only, 0, "Epoch 3, Total Loss"),
    (
        "5 checkpoint with NaN weights",
        lambda d: (photo(d), ["--resume", str(d / "nan.pt")]),
        2,
        "holds NaN weights",
    ),
    (
        "5 flat image",
        lambda d: (photo(d, image=Image.new("RGB", (40, 40), (90, 120, 150))), []),
        0,
        "(no blur to undo)",
    ),
    (
        "7 seed -1",
        lambda d: (photo(d), ["--seed", "-1"]),
        2,
        "--seed must be between 0 and 4294967295",
    ),
    ("9 animated image", lambda d: (animated(d), []), 0, "used its first frame only"),
    (
        "9 output_dir /proc",
        lambda d: (photo(d), ["--output_dir", "/proc"]),
        2,
        "cannot create files in output_dir /proc",
    ),
    ("5 blur radius 0", lambda d: (photo(d), ["--blur_radius", "0"]), 0, "(no blur to undo)"),
    (
        "7 seed 99999999999",
        lambda d: (photo(d), ["--seed", "99999999999"]),
        2,
        "--seed must be between",
    ),
    (
        "9 16-bit RGB PNG",
        lambda d: (png_rgb16(d / "deep.png") or d / "deep.png", []),
        0,
        "deep.png: reduced it to 8",
    ),
    (
        "9 1x4000 image",
        lambda d: (photo(d, image=make_photo((1, 4000))), []),
        0,
        "1x4000; resized it to 32x32, stretching it",
    ),
    (
        "9 float16 on a CPU",
        lambda d: (photo(d), ["--amp_dtype", "float16", "--num_epochs", "1"]),
        0,
        "float16 on a CPU is emulated",
    ),
]


@pytest.mark.parametrize(
    "name, make, code, words", IN_PROCESS, ids=[case[0] for case in IN_PROCESS]
)
def test_the_smaller_faults_end_in_one_clear_line_and_lose_nothing(
    tmp_path, capsys, name, make, code, words
):
    image, args, before = prepare((name, make), tmp_path)
    assert Deblur.main(args) == code
    captured = capsys.readouterr()
    assert words in captured.out + captured.err and "upscal" not in captured.out
    assert {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.rglob("*") if p.is_file()
    } >= set(before.values())
