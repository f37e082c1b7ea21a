"""Training in several processes under torchrun: one model, each process its own crops, the first
alone printing and writing; a Ctrl-C stops them together; the checkpoint resumes and applies in a
plain process. The real run is two CPU processes talking through gloo, in the background."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import (
    ROOT,
    ProcessTable,
    apply_deblur,
    checkpoint_of,
    history,
    run_deblur,
    save_photo,
    tiny_run_args,
    training_folder,
)

import Deblur
from plumbing.command_line import launcher
from plumbing.job import StopRequest, stop_after_this_step

# With the adversarial term: its discriminator is shared as the network is, and checkpointed
FOLDER = ["--crop_size", "16", "--batch_size", "2", "--blur_radius", "2.0", "--log_every", "2"]
FOLDER += ["--adversarial_weight", "0.01"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# What a test run changes in Deblur, as the other tests' fixtures do in this process: the figures
# only as 1x1 PNGs, and a small unseen sample in place of the shipped 512x600 one
LAUNCHER = """import sys
sys.path.insert(0, {root!r})
import matplotlib.figure
from PIL import Image
import Deblur
def savefig(figure, path, **options):
    Image.new("RGB", (1, 1)).save(path, format="png")
matplotlib.figure.Figure.savefig = savefig
Deblur.UNSEEN_SAMPLE = {sample!r}
raise SystemExit(Deblur.main(vgg_weights=None))
"""


def prepare(case, folder, environ):
    sample = save_photo(folder, "unseen.png", (40, 36), seed=11)
    launch = folder / "launch.py"
    launch.write_text(LAUNCHER.format(root=str(ROOT), sample=str(sample)))
    photos = training_folder(folder / "train")
    args = tiny_run_args(photos, folder / "out", *FOLDER, "--num_epochs", "100000")
    env = {**environ, "MPLBACKEND": "Agg", "XDG_CACHE_HOME": str(folder / "cache")}
    env["TORCH_HOME"] = str(folder / "torch_home")
    return [*TORCHRUN, str(launch), *args], env


def ctrl_c_after_epoch_4(case, folder, ready):
    """torchrun in a session of its own, and Ctrl-C to all of it once epoch 4 is logged, as a
    terminal sends it to every process in the foreground."""
    command, env = ready
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=folder,
        start_new_session=True,
    )
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("Epoch 4,"):
            os.killpg(process.pid, signal.SIGINT)
            break
    out, err = process.communicate(timeout=120)
    return process.returncode, "".join(seen) + out, err


CASE = "two processes, Ctrl-C"
RUNS = ProcessTable([(CASE,)], prepare, ctrl_c_after_epoch_4)


@pytest.fixture
def stopped_run(case):
    (code, out, err), folder, *_ = RUNS[case]
    return out, err, folder


# The case as a parameter: so that its run starts in the background as the session begins
@pytest.mark.parametrize("case", [CASE])
def test_two_processes_train_one_model_print_once_and_a_ctrl_c_stops_both(stopped_run):
    out, err, folder = stopped_run
    assert out.count("Using device: cpu") == 1 and out.count("torchrun: 2 processes") == 1, out
    logged = [line.split(",")[0] for line in out.splitlines() if line.startswith("Epoch ")]
    assert len(logged) == len(set(logged)) >= 2, out  # each epoch logged once, by one process
    assert out.count("To continue: torchrun --standalone --nproc_per_node=2 ") == 1, out
    assert "error:" not in err, err  # their weights were equal before the checkpoint
    files = sorted(path.name for path in (folder / "out").iterdir())
    assert [name for name in files if name.startswith("checkpoint")] == ["checkpoint.pt"]
    checkpoint = checkpoint_of(folder / "out")
    epochs = [int(row["epoch"]) for row in history(folder / "out")]
    assert epochs == [2 * n for n in range(1, len(epochs) + 1)]  # one history, no row twice
    assert checkpoint["epoch"] == epochs[-1] == int(logged[-1].split()[1])
    first, second = checkpoint["crops_generators"]  # each process drew its own crops
    assert not torch.equal(first, second)
    assert torch.equal(first, checkpoint["crops_generator"])


@pytest.mark.parametrize("case", [CASE])
def test_a_checkpoint_of_two_processes_resumes_and_applies_in_one(
    stopped_run, tmp_path, monkeypatch, capsys
):
    _, _, folder = stopped_run
    monkeypatch.setattr(Deblur, "UNSEEN_SAMPLE", str(folder / "unseen.png"))
    epoch = checkpoint_of(folder / "out")["epoch"]
    more = ("--num_epochs", str(epoch + 2), "--resume", str(folder / "out" / "checkpoint.pt"))
    assert run_deblur(folder / "train", tmp_path / "more", *FOLDER, *more) == 0
    said = capsys.readouterr().out
    assert f"Resumed from {folder / 'out' / 'checkpoint.pt'} at epoch {epoch}" in said
    assert "trained by 2 processes, now 1: the crops differ from an uninterrupted run's" in said
    resumed = checkpoint_of(tmp_path / "more")
    assert resumed["epoch"] == epoch + 2 and "discriminator" in resumed
    photo = save_photo(tmp_path, "photo.png", (40, 40), seed=3)
    assert apply_deblur(photo, tmp_path / "applied", tmp_path / "more" / "checkpoint.pt") == 0
    assert (tmp_path / "applied" / "photo_deblurred.png").exists()


@pytest.fixture
def under_torchrun(monkeypatch):
    """This process, as torchrun would start its first of two (nothing is joined before the
    checks under test refuse)."""
    for name, value in {"RANK": 0, "WORLD_SIZE": 2, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": 2}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("MASTER_ADDR", "node0")
    return monkeypatch


@pytest.mark.parametrize(
    "extra, words",
    [
        ((), "is one image: torchrun's processes each train on their own random crops"),
        (("--device", "cuda:1"), "under torchrun each process takes its own GPU"),
    ],
    ids=["one image", "a device number"],
)
def test_under_torchrun_what_it_cannot_share_is_refused_in_one_line(
    under_torchrun, photo_path, tmp_path, capsys, extra, words
):
    image = photo_path if not extra else training_folder(tmp_path / "train")
    assert run_deblur(image, tmp_path / "out", *extra) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and words in error[0], error
    assert not (tmp_path / "out").exists()


def test_under_torchrun_an_apply_is_refused(under_torchrun, trained_checkpoint, tmp_path, capsys):
    photo = save_photo(tmp_path, "photo.png")
    assert apply_deblur(photo, tmp_path / "out", trained_checkpoint) == 2
    assert "--apply runs in one process" in capsys.readouterr().err


def test_the_other_processes_say_nothing(under_torchrun, tmp_path, capsys):
    under_torchrun.setenv("RANK", "1")
    assert run_deblur(tmp_path / "missing", tmp_path / "out") == 2  # the first says why
    said = capsys.readouterr()
    assert said.out == said.err == ""


def test_under_torchrun_a_second_ctrl_c_is_torchrun_passing_the_first_on(under_torchrun):
    stop = StopRequest()
    request = stop_after_this_step(stop)
    request(signal.SIGINT, None)  # from the terminal
    request(signal.SIGINT, None)  # from torchrun: the stop still waits for its safe point
    assert stop.signum == signal.SIGINT
    under_torchrun.delenv("RANK")
    with pytest.raises(KeyboardInterrupt):  # alone, a second Ctrl-C quits at once
        request(signal.SIGINT, None)


def test_the_resume_command_starts_as_many_processes_again(under_torchrun):
    assert launcher() == ["torchrun", "--standalone", "--nproc_per_node=2"]
    under_torchrun.setenv("WORLD_SIZE", "8")  # two machines of four
    under_torchrun.setenv("LOCAL_WORLD_SIZE", "4")
    rendezvous = ["--rdzv_backend=c10d", "--rdzv_endpoint=node0:29400"]
    assert launcher() == ["torchrun", "--nnodes=2", "--nproc_per_node=4", *rendezvous]


@pytest.mark.parametrize(
    "error",
    [
        torch.distributed.DistBackendError("Connection closed by peer [127.0.0.1]:1234"),
        RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection reset by peer [10.0.0.2]:1234"),
    ],
    ids=["DistBackendError", "gloo's RuntimeError"],
)
def test_a_process_that_ends_mid_run_leaves_the_last_checkpoint_intact(
    photo_path, tmp_path, monkeypatch, capsys, error
):
    real_step = Deblur.training_step
    steps = []

    def peer_gone_at_step_3(*args):  # what gloo raises when another process has died
        steps.append(1)
        if len(steps) == 3:
            raise error
        return real_step(*args)

    monkeypatch.setattr(Deblur, "training_step", peer_gone_at_step_3)
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "6", "--checkpoint_every", "2") == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "another of torchrun's processes has ended" in said[0], said
    assert f"({error})" in said[0] and "--resume" in said[0]
    assert checkpoint_of(tmp_path)["epoch"] == 2
