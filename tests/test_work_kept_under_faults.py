"""Faults that must not lose work: signals, closed pipes, full disks, a second run, names that
collide. Each starts from a folder of files the user cares about; their SHA-256 digests are taken
before the run and must all still be there afterwards (under their own name, or kept aside as
checkpoint.N.pt). The faults that need a real process (pipes, descriptors) run as one.
"""

import os
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import (
    HALF_PRECISION_SIZE,
    ROOT,
    SCRIPT,
    ProcessTable,
    checkpoint_of,
    digests,
    make_photo,
    offline,
    png_bytes,
    run_deblur,
    save_photo,
    tiny_run_args,
)
from PIL import Image

import Deblur
from networks import DeblurNet
from plumbing import checkpoints
from plumbing.progress import Progress

PRECIOUS = b"a file of the user's"
EARLIER_CHECKPOINT = b"an earlier run's checkpoint: a day of training"
LONG = ["--num_epochs", "100000", "--log_every", "5"]

# ---- How each case runs: (command, environment, folder) -> (exit code, stdout, stderr)


def plain(command, env, cwd):
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    return result.returncode, result.stdout, result.stderr


def signal_after(prefix, number):
    """Sends signal `number` once the run prints a line starting with `prefix`."""

    def run(command, env, cwd):
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd
        )
        seen = []
        for raw in process.stdout:
            line = raw.decode()
            seen.append(line)
            if line.startswith(prefix):
                process.send_signal(number)
                break
        out, err = process.communicate(timeout=120)
        return process.returncode, "".join(seen) + out.decode(), err.decode()

    return run


def pipe_closed_after(lines, then_signal=None):
    """`| head -N` (the reader goes after N lines), or `| tee` and Ctrl-C (tee dies first)."""

    def run(command, env, cwd):
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd
        )
        seen = [process.stdout.readline().decode() for _ in range(lines)]
        process.stdout.close()
        if then_signal:
            process.send_signal(then_signal)
        err = process.stderr.read().decode()
        process.wait(timeout=300)
        return process.returncode, "".join(seen), err

    return run


def shell(redirection):
    def run(command, env, cwd):
        line = f"exec {shlex.join(command)} {redirection}"
        result = subprocess.run(
            ["bash", "-c", line], capture_output=True, text=True, env=env, cwd=cwd
        )
        return result.returncode, result.stdout, result.stderr

    return run


def earlier_checkpoint_in(out):
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(EARLIER_CHECKPOINT)
    return out


def sigterm_in_a_folder_with_a_space(d):
    """With the shipped images, by relative paths that exist only next to Deblur.py, from a folder
    that is not the project."""
    out = earlier_checkpoint_in(d / "my run")
    return "data/sample.jpg", [
        *LONG,
        "--output_dir",
        str(out),
        "--holdout_path",
        "data/holdout.jpg",
    ]


# (case, how to prepare the folder -> (image, extra args), how it runs, exit code, words).
# Each runs in its own folder, not the project's: so every case also shows that the script runs
# from anywhere.
CASES = [
    (
        "SIGTERM mid-run, in a folder with a space",
        sigterm_in_a_folder_with_a_space,
        signal_after("Epoch 5,", signal.SIGTERM),
        143,
        "Training stopped early at epoch",
    ),
    # The sixth line is epoch 4's: epochs 5 to 8, their log lines and the summary go to no reader
    ("| head -6", lambda d: (save_photo(d), ["--num_epochs", "8"]), pipe_closed_after(6), 0, ""),
    (
        "| tee, then Ctrl-C",
        lambda d: (save_photo(d), LONG),
        pipe_closed_after(4, signal.SIGINT),
        130,
        "",
    ),
    ("stdout closed (>&-)", lambda d: (save_photo(d), []), shell(">&-"), 0, ""),
    ("stdout full (> /dev/full)", lambda d: (save_photo(d), []), shell("> /dev/full"), 0, "lost"),
    # Bad input from a shell: exit code 2 and one line (test_input_checks has every other kind)
    ("a missing image", lambda d: (d / "nowhere.jpg", []), plain, 2, "error: image not found"),
]


def prepare(case, folder, environ):
    image, extra = case[1](folder)
    args = tiny_run_args(image, folder / "out", *extra)
    env = {**environ, "MPLBACKEND": "Agg", "TORCH_HOME": str(folder / "torch_home")}
    env["XDG_CACHE_HOME"] = str(folder / "cache")  # a folder's decoded photos: never the user's
    env["OMP_NUM_THREADS"] = "1"  # one core: the tests in pytest's process have the other
    return args, digests(folder), env


def execute(case, folder, ready):
    args, _, env = ready
    return case[2]([*SCRIPT, *args], env, folder)


RUNS = ProcessTable(CASES, prepare, execute)


@pytest.fixture
def runs():
    return RUNS


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_a_fault_loses_nothing_and_ends_in_one_clear_line(runs, case):
    name, _, _, code, words = case
    (returncode, out, err), folder, args, before, _ = runs[name]
    assert returncode == code, out + err
    assert words in out + err, out + err
    assert "Traceback" not in err and "Warning" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) <= 1, err
    if code == 2:  # bad input: that one line, and nothing else
        assert len(err.strip().splitlines()) == 1, err
    after = set(digests(folder).values())
    lost = [path for path, digest in before.items() if digest not in after]
    assert not lost, f"lost: {lost}"


def test_the_script_runs_from_another_folder_with_the_shipped_images(runs):
    (_, out, _), *_ = runs["SIGTERM mid-run, in a folder with a space"]
    assert "Using device: cpu" in out and "held out:" in out


def test_a_stopped_run_saves_everything_and_its_printed_command_resumes_it(runs, capsys):
    (_, out, _), folder, *_ = runs["SIGTERM mid-run, in a folder with a space"]
    run_folder = folder / "my run"
    stopped = checkpoint_of(run_folder)["epoch"]
    assert f"stopped early at epoch {stopped} of 100000" in out
    assert (run_folder / "checkpoint.1.pt").read_bytes() == EARLIER_CHECKPOINT  # kept aside
    for name in ("history.csv", "comparison.png", "reconstructed_image.jpg", "training_curves.png"):
        assert (run_folder / name).exists(), name
    command = out.split("To continue: ")[1].splitlines()[0]
    words = shlex.split(command)  # as a shell splits it when pasted
    assert words[:3] == ["python", str(ROOT / "Deblur.py"), "--resume"]
    assert "--output_dir" in words and str(run_folder) in words
    assert Deblur.main([*words[2:], "--num_epochs", str(stopped + 2)], vgg_weights=None) == 0
    assert (
        f"Resumed from {run_folder / 'checkpoint.pt'} at epoch {stopped}" in capsys.readouterr().out
    )


def test_a_closed_pipe_costs_no_training(runs):
    for name, epoch in (
        ("| head -6", 8),
        ("stdout closed (>&-)", 4),
        ("stdout full (> /dev/full)", 4),
    ):
        _, folder, *_ = runs[name]
        assert checkpoint_of(folder / "out")["epoch"] == epoch
        assert (folder / "out" / "comparison.png").exists(), name
    _, folder, *_ = runs["| tee, then Ctrl-C"]
    assert checkpoint_of(folder / "out")["epoch"] >= 1


def test_a_second_run_in_the_same_folder_is_refused_naming_the_first(
    photo_path, tmp_path, monkeypatch, capsys
):
    # The second run starts while the first is at epoch 5. The lock is flock's, held by an open
    # file: a second opening of it conflicts in one process as it does between two.
    out = tmp_path / "out"
    seconds = []
    real_due = Progress.due

    def second_run_at_epoch_5(progress, epoch):
        if epoch == 5:
            seconds.append(run_deblur(photo_path, out))
        return real_due(progress, epoch)

    monkeypatch.setattr(Progress, "due", second_run_at_epoch_5)
    assert run_deblur(photo_path, out, "--num_epochs", "6") == 0  # the first run goes on
    errors = capsys.readouterr().err.strip().splitlines()
    assert seconds == [2] and len(errors) == 1, errors
    assert f"another Deblur run (PID {os.getpid()}) is using output_dir {out}" in errors[0]
    assert checkpoint_of(out)["epoch"] == 6  # the first's


# ---- The same kinds of fault where no real process is needed: in this process, in less time


def signal_during(monkeypatch, owner, name, number, first=1):
    """Replaces owner.name with itself preceded, on its `first`-th call, by a real signal to this
    process, as a Ctrl-C, a closed terminal or a scheduler's SIGTERM would come."""
    real = getattr(owner, name)
    calls = []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == first:
            os.kill(os.getpid(), number)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, signalled)


@pytest.mark.parametrize(
    "number, code", [(signal.SIGINT, 130), (signal.SIGHUP, 129)], ids=["Ctrl-C", "SIGHUP"]
)
def test_a_signal_mid_run_saves_everything_at_the_epoch_it_names(
    photo_path, tmp_path, monkeypatch, capsys, number, code
):
    signal_during(monkeypatch, Progress, "due", number, first=7)
    assert run_deblur(photo_path, tmp_path / "out", *LONG) == code
    out = capsys.readouterr().out
    stopped = checkpoint_of(tmp_path / "out")["epoch"]
    assert stopped == 7
    assert "Training stopped early at epoch 7 of 100000. To continue: python" in out
    outputs = ("history.csv", "comparison.png", "reconstructed_image.jpg", "training_curves.png")
    for name in (*outputs, "progress.png", "progress.gif"):
        assert (tmp_path / "out" / name).exists(), name


def test_a_signal_after_training_finishes_the_results_first(
    photo_path, tmp_path, monkeypatch, capsys
):
    signal_during(monkeypatch, Deblur, "print_summary", signal.SIGTERM)
    assert run_deblur(photo_path, tmp_path / "out") == 143
    assert "SIGTERM came after training had finished: all is saved" in capsys.readouterr().out
    assert (tmp_path / "out" / "comparison.png").exists()


def test_a_disk_full_inside_torch_save_replaces_nothing_and_leaves_no_partial_file(
    photo_path, tmp_path, monkeypatch, capsys
):
    out = earlier_checkpoint_in(tmp_path / "out")

    def full_disk(state, path, *args, **kwargs):  # as PyTorch reports it, after part of the file
        Path(path).write_bytes(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    assert run_deblur(photo_path, out) == 1
    err = capsys.readouterr().err
    assert "could not write" in err and "nothing was replaced" in err
    assert "the disk is probably full" in err  # not only PyTorch's words for it
    assert (out / "checkpoint.pt").read_bytes() == EARLIER_CHECKPOINT
    assert not list(out.glob(".*partial"))


def test_a_stopped_apply_writes_nothing(trained_checkpoint, tmp_path, monkeypatch, capsys):
    big = save_photo(tmp_path, "big.png", (200, 1200))
    signal_during(monkeypatch, DeblurNet, "correction", signal.SIGTERM)
    args = ("--apply", str(big), "--resume", str(trained_checkpoint))
    assert run_deblur("unused.png", tmp_path / "out", *args) == 143
    captured = capsys.readouterr()
    assert "200x1200 pixels, in 3 tiles" in captured.out
    assert "SIGTERM: stopped; nothing was written" in captured.err
    assert not list((tmp_path / "out").glob("*deblurred*")) and not list(
        tmp_path.rglob("*.partial")
    )


def test_nothing_to_learn_without_the_vgg19_weights_is_refused(
    photo_path, tmp_path, monkeypatch, capsys
):
    offline(monkeypatch)
    args = ("--mse_weight", "0", "--perceptual_weight", "0.1")
    assert run_deblur(photo_path, tmp_path / "out", *args, vgg_weights="IMAGENET1K_V1") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nothing would be learned" in errors[0]  # after VGG19's note
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_apply_beside_an_earlier_result_keeps_it(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo_deblurred.png").write_bytes(PRECIOUS)
    (tmp_path / "b").mkdir()
    photo = save_photo(tmp_path / "b")  # another photo of the same name
    args = ("--apply", str(photo), "--resume", str(trained_checkpoint))
    assert run_deblur("unused.png", out, *args) == 0
    assert "exists already and is kept; writing photo_deblurred.1.png" in capsys.readouterr().out
    assert (out / "photo_deblurred.png").read_bytes() == PRECIOUS
    assert (out / "photo_deblurred.1.png").stat().st_size > 0


def test_apply_to_a_photo_with_a_240_character_name(trained_checkpoint, tmp_path, capsys):
    photo = save_photo(tmp_path, "x" * 236 + ".png")
    args = ("--apply", str(photo), "--resume", str(trained_checkpoint))
    assert run_deblur("unused.png", tmp_path / "out", *args) == 0
    written = list((tmp_path / "out").glob("*_deblurred.png"))
    assert len(written) == 1 and str(written[0]) in capsys.readouterr().out


def test_partial_files_of_killed_runs_are_removed_and_of_live_ones_kept(
    trained_checkpoint, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".checkpoint.pt.999999999.partial").write_bytes(b"0" * 4096)  # no such process
    (out / f".history.csv.{os.getpid()}.partial").write_bytes(PRECIOUS)  # a live process
    args = ("--apply", str(save_photo(tmp_path)), "--resume", str(trained_checkpoint))
    assert run_deblur("unused.png", out, *args) == 0  # --apply takes the lock as training does
    assert "removed the temporary files of killed runs" in capsys.readouterr().out
    assert not (out / ".checkpoint.pt.999999999.partial").exists()
    assert (out / f".history.csv.{os.getpid()}.partial").read_bytes() == PRECIOUS


def test_a_symbolic_link_as_the_lock_is_refused_and_its_target_untouched(
    photo_path, tmp_path, capsys
):
    (tmp_path / "out").mkdir()
    (tmp_path / "notes.txt").write_bytes(PRECIOUS)
    (tmp_path / "out" / ".deblur.lock").symlink_to(tmp_path / "notes.txt")
    assert run_deblur(photo_path, tmp_path / "out") == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_bytes() == PRECIOUS


def test_the_lock_is_a_file_of_text_not_a_program(trained_checkpoint, photo_path, tmp_path):
    out = tmp_path / "out"
    assert (
        run_deblur(
            "unused.png", out, "--apply", str(photo_path), "--resume", str(trained_checkpoint)
        )
        == 0
    )
    assert (out / ".deblur.lock").stat().st_mode & 0o111 == 0  # no one's to execute


def test_a_blur_larger_than_the_image_is_refused(photo_path, tmp_path, capsys):
    assert run_deblur(photo_path, tmp_path / "out", "--blur_radius", "100") == 2
    error = capsys.readouterr().err
    assert "larger than the --image_path image, 32x32; lower --blur_radius" in error
    assert "or a larger --image_size" in error
    assert not (tmp_path / "out").exists()


def test_an_input_named_like_an_output_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    image = save_photo(out, "reconstructed_image.jpg")
    before = image.read_bytes()
    assert run_deblur(image, out) == 2
    assert "has the name of an output in output_dir" in capsys.readouterr().err
    assert image.read_bytes() == before


def rgb16_png(folder):
    rows = b"".join(b"\0" + bytes(range(256))[: 40 * 6] for _ in range(32))  # filter 0, 40 pixels
    (folder / "deep.png").write_bytes(png_bytes(40, 32, bit_depth=16, rows=rows))
    return folder / "deep.png"


def animated(folder):
    frames = [make_photo(seed=1), make_photo(seed=2)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    return folder / "anim.gif"


def flat(folder):
    return save_photo(folder, image=Image.new("RGB", (40, 40), (90, 120, 150)))


# (case, how to make the image in a folder, extra arguments, exit code, words in the output)
SMALLER_FAULTS = [
    ("a flat image", flat, [], 0, "(no blur to undo)"),
    ("blur radius 0", save_photo, ["--blur_radius", "0"], 0, "classical result: no blur to undo"),
    ("an animated image", animated, [], 0, "used its first frame only"),
    ("output_dir /proc", save_photo, ["--output_dir", "/proc"], 2, "cannot create files in"),
    ("a 16-bit RGB PNG", rgb16_png, [], 0, "deep.png: reduced it to 8"),
    (
        "a 1x4000 image",
        lambda d: save_photo(d, size=(1, 4000)),
        [],
        0,
        "1x4000; resized it to 32x32",
    ),
    (
        "float16 on a CPU",
        save_photo,
        ["--amp_dtype", "float16", "--num_epochs", "1", *HALF_PRECISION_SIZE],
        0,
        "emulated",
    ),
]


@pytest.mark.parametrize(
    "make, extra, code, words",
    [case[1:] for case in SMALLER_FAULTS],
    ids=[case[0] for case in SMALLER_FAULTS],
)
def test_the_smaller_faults_end_in_one_clear_line_and_lose_nothing(
    tmp_path, capsys, make, extra, code, words
):
    image = make(tmp_path)
    before = digests(tmp_path)
    assert run_deblur(image, tmp_path / "out", *extra) == code
    captured = capsys.readouterr()
    assert words in captured.out + captured.err and "upscal" not in captured.out
    assert set(digests(tmp_path).values()) >= set(before.values())


# ---- A disk that fills up for a while, mid-run, on a real small file system


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)])
    if made.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def fill(folder):
    with open(folder / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 2**20)
                filler.flush()
        except OSError:
            pass


def test_a_briefly_full_disk_mid_run_is_a_warning_and_training_goes_on(
    small_disk, tmp_path, monkeypatch, capsys
):
    out = small_disk / "out"
    out.mkdir()
    (out / "notes.txt").write_bytes(PRECIOUS)
    before = digests(small_disk)
    real_due = Progress.due

    def disk_full_from_epoch_4_to_5(progress, epoch):
        if epoch == 4:  # before epoch 4's history row and checkpoint are written
            fill(out)
        if epoch == 5:
            (out / "filler").unlink()
        return real_due(progress, epoch)

    monkeypatch.setattr(Progress, "due", disk_full_from_epoch_4_to_5)
    signal_during(monkeypatch, Progress, "due", signal.SIGTERM, first=8)
    args = ("--checkpoint_every", "4", "--log_every", "2", "--num_epochs", "100000")
    assert run_deblur(save_photo(tmp_path), out, *args) == 143
    captured = capsys.readouterr()
    assert "could not write" in captured.err and "training goes on" in captured.err
    assert "Epoch 6," in captured.out
    assert checkpoint_of(out)["epoch"] == 8
    assert (out / "history.csv").read_text().count("\n") == 5  # header, epochs 2, 4, 6, 8
    assert set(before.values()) <= set(digests(small_disk).values())
