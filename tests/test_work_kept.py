"""Issue 14's cases, each a real `python Deblur.py` process: whatever goes wrong, nothing the user
had is lost, and the run ends in one clear line.

Every case starts from a folder of files the user cares about; their SHA-256 digests are taken
before the run and must all be there afterwards.
"""

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, ParallelRuns, make_photo, signal_after, tiny_run_args

import Deblur
import support

PRECIOUS = b"a file of the user's"
SCRIPT = [sys.executable, "-u", str(ROOT / "Deblur.py")]


def digests(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink() and p.name != ".deblur.lock"
    }


def photo(folder, name="photo.png", size=(48, 40)):
    make_photo(size).save(folder / name)
    return folder / name


@pytest.fixture(scope="module", autouse=True)
def one_trained_checkpoint(tmp_path_factory):
    """A real checkpoint of a 2-epoch run, as --apply and --resume read them, made once."""
    folder = tmp_path_factory.mktemp("trained")
    args = tiny_run_args(photo(folder, "train.png"), folder, "--num_epochs", "2")
    assert Deblur.main(args) == 0
    TRAINED.append(folder / "checkpoint.pt")


TRAINED = []


def trained_checkpoint(folder):
    (folder / "out").mkdir(exist_ok=True)
    return Path(shutil.copy(TRAINED[0], folder / "out" / "checkpoint.pt"))


def hand_made(folder, **fields):
    """The 2-epoch checkpoint with some fields replaced, as a user's script might write them."""
    path = trained_checkpoint(folder)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint.update(fields)
    torch.save(checkpoint, folder / "hand.pt")
    path.unlink()
    return folder / "hand.pt"


# ---- How each case runs: (command, environment) -> (exit code, stdout, stderr)


def plain(command, env):
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    return result.returncode, result.stdout, result.stderr


def pipe_closed_after(lines, then_signal=None):
    """`| head -N` (the reader goes after N lines), or `| tee` and Ctrl-C (tee dies first)."""

    def run(command, env):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        seen = [process.stdout.readline().decode() for _ in range(lines)]
        process.stdout.close()
        if then_signal:
            process.send_signal(then_signal)
        err = process.stderr.read().decode()
        process.wait(timeout=300)
        return process.returncode, "".join(seen), err

    return run


def shell(redirection):
    def run(command, env):
        line = f"exec {shlex.join(command)} {redirection}"
        result = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env)
        return result.returncode, result.stdout, result.stderr

    return run


LONG = ["--num_epochs", "100000", "--log_every", "5"]


def case_offline_vgg(d):
    (d / "torch_home").mkdir()
    return photo(d), ["--mse_weight", "0", "--perceptual_weight", "0.1"], {}


def case_stale_partials(d):
    checkpoint = trained_checkpoint(d)  # --apply takes the lock as training does, in less time
    (d / "out" / ".checkpoint.pt.999999999.partial").write_bytes(b"0" * 4096)  # no such process
    (d / "out" / f".history.csv.{os.getpid()}.partial").write_bytes(PRECIOUS)  # a live process
    apply = ["--apply", str(photo(d)), "--resume", str(checkpoint)]
    return photo(d), apply, {"garbage": ["out/.checkpoint.pt.999999999.partial"]}


def case_apply_over_existing(d):
    checkpoint = trained_checkpoint(d)
    (checkpoint.parent / "photo_deblurred.png").write_bytes(PRECIOUS)
    (d / "b").mkdir()
    return photo(d), ["--apply", str(photo(d / "b")), "--resume", str(checkpoint)], {}


def case_long_name(d):
    checkpoint = trained_checkpoint(d)
    return photo(d), ["--apply", str(photo(d, "x" * 236 + ".png")), "--resume", str(checkpoint)], {}


def case_apply_stopped(d):
    checkpoint = trained_checkpoint(d)
    big = photo(d, "big.png", (1200, 1200))
    return photo(d), ["--apply", str(big), "--resume", str(checkpoint)], {}


def case_symlinked_lock(d):
    (d / "out").mkdir()
    (d / "notes.txt").write_bytes(PRECIOUS)
    (d / "out" / ".deblur.lock").symlink_to(d / "notes.txt")
    return photo(d), [], {}


def case_resume_in_a_folder_with_a_space(d):
    return photo(d), [*LONG, "--output_dir", str(d / "my run")], {}


# (case, how to prepare the folder -> (image, extra args, options), how it runs, exit code, words)
CASES = [
    ("1 | head -6", lambda d: (photo(d), ["--num_epochs", "20"], {}), pipe_closed_after(6), 0, ""),
    (
        "1 | tee, then Ctrl-C",
        lambda d: (photo(d), LONG, {}),
        pipe_closed_after(4, signal.SIGINT),
        130,
        "",
    ),
    ("1 >&-", lambda d: (photo(d), [], {}), shell(">&-"), 0, ""),
    ("1 > /dev/full", lambda d: (photo(d), [], {}), shell("> /dev/full"), 0, "output lost"),
    (
        "3 --apply stopped by SIGTERM",
        case_apply_stopped,
        signal_after("Deblurring", signal.SIGTERM),
        143,
        "nothing was written",
    ),
    (
        "4 --apply beside an earlier result",
        case_apply_over_existing,
        plain,
        0,
        "exists already and is kept; writing photo_deblurred.1.png",
    ),
    (
        "5 SIGTERM after training",
        lambda d: (photo(d), ["--num_epochs", "4"], {}),
        signal_after("Epoch 4,", signal.SIGTERM),
        143,
        "came after training had finished",
    ),
    (
        "6 resume command, a folder with a space",
        case_resume_in_a_folder_with_a_space,
        signal_after("Epoch 10,", signal.SIGTERM),
        143,
        "--output_dir '",
    ),
    ("7 nothing to learn without VGG19", case_offline_vgg, plain, 2, "nothing would be learned"),
    (
        "8 blur larger than the image",
        lambda d: (photo(d), ["--blur_radius", "100"], {}),
        plain,
        2,
        "larger than the 32x32 image",
    ),
    (
        "9 --device cpu:abc",
        lambda d: (photo(d), ["--device", "cpu:abc"], {}),
        plain,
        2,
        "no such device",
    ),
    ("10 a 240-character photo name", case_long_name, plain, 0, "_deblurred.png"),
    (
        "11 partial files of killed runs",
        case_stale_partials,
        plain,
        0,
        "removed the temporary files of killed runs",
    ),
    (
        "12 where to put the VGG19 weights",
        lambda d: (photo(d), ["--perceptual_weight", "0.1"], {}),
        plain,
        0,
        "and put it in",
    ),
    (
        "14 elapsed NaN",
        lambda d: (photo(d), ["--resume", str(hand_made(d, elapsed=float("nan")))], {}),
        plain,
        2,
        "not a Deblur checkpoint",
    ),
    ("15 a symbolic link as the lock", case_symlinked_lock, plain, 2, "is a symbolic link"),
]


def prepare(case, folder):
    name, make, *_ = case
    image, extra, options = make(folder)
    args = tiny_run_args(image, folder / "out", *extra)
    before = digests(folder)
    for garbage in options.get("garbage", []):
        del before[garbage]
    env = {**os.environ, "MPLBACKEND": "Agg", "TORCH_HOME": str(folder / "torch_home")}
    env["https_proxy"] = env["HTTPS_PROXY"] = "http://127.0.0.1:9"  # never a real download
    return args, before, env


def execute(case, ready):
    args, _, env = ready
    return case[2]([*SCRIPT, *args], env)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    return ParallelRuns(request, tmp_path_factory, CASES, prepare, execute)


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_nothing_is_lost_and_the_run_ends_in_one_clear_line(runs, case):
    name, _, _, code, words = case
    (returncode, out, err), folder, args, before, _ = runs[name]
    assert returncode == code, out + err
    assert words in out + err, out + err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == (code == 2), err  # a refusal is one line; 7's follows VGG19's note
    after = set(digests(folder).values())
    lost = [path for path, digest in before.items() if digest not in after]
    assert not lost, f"lost: {lost}"


def test_a_closed_pipe_costs_no_training(runs):
    for name, epoch in (("1 | head -6", 20), ("1 >&-", 4), ("1 > /dev/full", 4)):
        (_, _, err), folder, *_ = runs[name]
        assert torch.load(folder / "out" / "checkpoint.pt", weights_only=True)["epoch"] == epoch
        assert (folder / "out" / "comparison.png").exists(), name
    (_, _, err), folder, *_ = runs["1 | tee, then Ctrl-C"]
    assert torch.load(folder / "out" / "checkpoint.pt", weights_only=True)["epoch"] >= 1


def test_a_stopped_apply_writes_nothing_and_a_second_apply_keeps_the_first(runs):
    (_, out, _), folder, *_ = runs["3 --apply stopped by SIGTERM"]
    assert "1200x1200 pixels, in 19 strips" in out
    assert not list((folder / "out").glob("*deblurred*")) and not list(folder.rglob("*.partial"))
    _, folder, *_ = runs["4 --apply beside an earlier result"]
    assert (folder / "out" / "photo_deblurred.png").read_bytes() == PRECIOUS
    assert (folder / "out" / "photo_deblurred.1.png").stat().st_size > 0


def test_the_printed_resume_command_works_when_pasted(runs):
    (_, out, _), folder, *_ = runs["6 resume command, a folder with a space"]
    command = out.split("To continue: ")[1].splitlines()[0]
    words = shlex.split(command)
    assert words[:3] == ["python", str(ROOT / "Deblur.py"), "--resume"]
    stopped = torch.load(folder / "my run" / "checkpoint.pt", weights_only=True)["epoch"]
    pasted = [*SCRIPT[:-1], *words[1:], "--num_epochs", str(stopped + 2)]
    result = subprocess.run(pasted, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"at epoch {stopped}" in result.stdout


def test_partial_files_of_live_processes_are_kept(runs):
    _, folder, *_ = runs["11 partial files of killed runs"]
    assert not (folder / "out" / ".checkpoint.pt.999999999.partial").exists()
    assert (folder / "out" / f".history.csv.{os.getpid()}.partial").read_bytes() == PRECIOUS


def test_the_symbolic_link_target_is_untouched(runs):
    _, folder, *_ = runs["15 a symbolic link as the lock"]
    assert (folder / "notes.txt").read_bytes() == PRECIOUS


# ---- Case 2: a disk that fills up for a while, mid-run, on a real small file system


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


def test_a_briefly_full_disk_mid_run_is_a_warning_and_training_goes_on(small_disk, tmp_path):
    out = small_disk / "out"
    out.mkdir()
    (out / "notes.txt").write_bytes(PRECIOUS)
    before = digests(small_disk)
    args = tiny_run_args(photo(tmp_path), out, "--checkpoint_every", "10", *LONG)
    process = subprocess.Popen(
        [*SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines, freed = [], None
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Epoch 10,"):
            fill(out)
        if line.startswith("warning: could not write"):
            (out / "filler").unlink()
            freed = len(lines)
        if line.startswith("Epoch 30,"):
            process.send_signal(signal.SIGTERM)
            break
    rest = process.communicate(timeout=120)[0]
    output = "".join(lines) + rest
    assert process.returncode == 143, output
    assert "training goes on" in output and "Traceback" not in output
    assert freed is not None, output
    assert any(line.startswith("Epoch 20,") for line in lines[freed:]), output
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] >= 30
    assert (out / "history.csv").read_text().count("\n") >= 7  # header and epochs 5 .. 30
    assert set(before.values()) <= set(digests(small_disk).values())


# The same faults once more, in-process: a process each would add seconds to the suite.


@pytest.mark.parametrize("device", ["cpu:0:0", "cuda:x", "cpu:-1"])
def test_a_malformed_device_is_a_settings_error(device):
    with pytest.raises(support.DeblurError, match="no such device"):
        support.pick_device(device)


@pytest.mark.parametrize("field", [{"history": None}, {"epoch": 2.5}, {"history": [[1, 2]]}])
def test_a_hand_made_checkpoint_is_refused_before_training(tmp_path, capsys, field):
    checkpoint = hand_made(tmp_path, **field)
    args = tiny_run_args(photo(tmp_path), tmp_path / "out", "--resume", str(checkpoint))
    assert Deblur.main(args) == 2
    assert "not a Deblur checkpoint" in capsys.readouterr().err
