import csv
import re
from types import SimpleNamespace

import matplotlib.pyplot
import numpy as np
import pytest
import torch
from conftest import tiny_run_args
from PIL import Image
from torchvision.models import VGG19_Weights

import Deblur
import support

LOG_LINE = re.compile(
    r"^Epoch (\d+), Total Loss: \d+\.\d{6}, MSE: \d+\.\d{6}, Perceptual: \d+\.\d{6}, "
    r"PSNR: -?\d+\.\d\d dB, \d+\.\d epochs/s, elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d$"
)


def run(photo, out, *extra, vgg_weights=None):
    return Deblur.main(tiny_run_args(photo, out, *extra), vgg_weights=vgg_weights)


def history(out):
    with open(out / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_short_run_lowers_the_loss_and_writes_every_output(photo_path, tmp_path):
    out = tmp_path / "out"
    assert run(photo_path, out, "--num_epochs", "30", "--log_every", "5", "--lr", "0.001") == 0
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    assert float(rows[-1]["total"]) < float(rows[0]["total"]) * 0.8
    for name in (
        "comparison.png",
        "reconstructed_image.jpg",
        "training_curves.png",
        "history.csv",
        "checkpoint.pt",
    ):
        assert (out / name).stat().st_size > 0, name
    assert Image.open(out / "reconstructed_image.jpg").size == (32, 32)


def test_log_lines_start_with_the_seeds_format(photo_path, tmp_path, capsys):
    assert (
        run(
            photo_path,
            tmp_path,
            "--num_epochs",
            "20",
            "--log_every",
            "10",
            "--perceptual_weight",
            "0.1",
        )
        == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch ")]
    assert [LOG_LINE.match(line).group(1) for line in lines] == ["10", "20"]
    assert (
        float(re.search(r"Perceptual: (\S+),", lines[0]).group(1)) > 0
    )  # the (random) VGG term is in the loss


def test_history_row_matches_the_log_line(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path) == 0
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch 4,")][0]
    row = history(tmp_path)[-1]
    assert list(row) == ["epoch", "total", "mse", "perceptual", "psnr", "seconds"]
    assert (
        f"Total Loss: {float(row['total']):.6f}" in line
        and f"PSNR: {float(row['psnr']):.2f} dB" in line
    )


def test_the_final_epoch_is_logged_even_when_log_every_is_larger(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path, "--num_epochs", "3", "--log_every", "100") == 0
    assert [row["epoch"] for row in history(tmp_path)] == ["3"]
    assert (
        "Epoch 3, Total Loss" in capsys.readouterr().out
        and (tmp_path / "training_curves.png").exists()
    )


def test_comparison_figure_has_the_seeds_titled_panels_and_richardson_lucy(
    photo_path, tmp_path, figure_titles
):
    assert run(photo_path, tmp_path) == 0
    original, blurred, richardson_lucy, restored, kernel = figure_titles["comparison.png"]
    assert original == "Original Image"
    assert blurred.startswith("Blurred Image\nPSNR ") and "SSIM" in blurred
    assert richardson_lucy.startswith("Richardson–Lucy\nPSNR ")
    assert restored.startswith("Reconstructed Image\nPSNR ")
    assert kernel == "kernel 31x31"  # the inset drawn on the blurred panel


def test_same_seed_gives_an_identical_reconstruction(photo_path, tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "7")):
        assert run(photo_path, tmp_path / name, "--seed", seed) == 0
    a, b, c = ((tmp_path / name / "reconstructed_image.jpg").read_bytes() for name in "abc")
    assert a == b and a != c


def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(photo_path, tmp_path, capsys):
    common = ("--perceptual_weight", "0.1", "--checkpoint_every", "3")
    assert run(photo_path, tmp_path / "whole", "--num_epochs", "8", *common) == 0
    assert run(photo_path, tmp_path / "split", "--num_epochs", "5", *common) == 0
    assert run(photo_path, tmp_path / "split", "--num_epochs", "8", "--resume", *common) == 0
    assert "resuming with num_epochs = 8" in capsys.readouterr().out
    whole = torch.load(tmp_path / "whole/checkpoint.pt", weights_only=True)
    split = torch.load(tmp_path / "split/checkpoint.pt", weights_only=True)
    assert split["epoch"] == whole["epoch"] == 8
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, split["model"][name]), name
    logged = {
        row[0]: row[:5] for row in split["history"]
    }  # the split run also logged its last epoch, 5
    assert [logged[row[0]] for row in whole["history"]] == [row[:5] for row in whole["history"]]


def test_resume_with_another_image_size_is_refused_by_name(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path) == 0
    assert Deblur.main(tiny_run_args(photo_path, tmp_path, "--image_size", "48", "--resume")) == 2
    assert "it was trained with image_size = 32, not 48" in capsys.readouterr().err


def test_resume_with_a_new_learning_rate_is_allowed_and_said(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path) == 0
    assert run(photo_path, tmp_path, "--num_epochs", "6", "--lr", "0.001", "--resume") == 0
    out = capsys.readouterr().out
    assert "resuming with lr = 0.001 (the checkpoint used 0.0001)" in out and "Resumed from" in out
    assert (
        torch.load(tmp_path / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"][0][
            "lr"
        ]
        == 0.001
    )


def test_resume_may_switch_between_bfloat16_and_float16_with_a_grad_scaler(
    photo_path, tmp_path, capsys
):
    assert run(photo_path, tmp_path, "--num_epochs", "2") == 0
    assert run(photo_path, tmp_path, "--num_epochs", "3", "--amp_dtype", "float16", "--resume") == 0
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["scaler"]["scale"] > 0
    assert (
        run(photo_path, tmp_path, "--num_epochs", "4", "--amp_dtype", "bfloat16", "--resume") == 0
    )
    assert (
        "resuming with amp_dtype = 'bfloat16' (the checkpoint used 'float16')"
        in capsys.readouterr().out
    )


def test_clipping_sees_unscaled_gradients_under_float16_and_a_grad_scaler(
    photo_path, tmp_path, monkeypatch
):
    norms = {}
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, **kwargs):
        parameters = list(parameters)
        norms.setdefault(
            dtype, torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters])).item()
        )
        return real_clip(parameters, max_norm, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    for dtype in (
        "float16",
        "bfloat16",
    ):  # the same first step, with a GradScaler (scale 65536) and without
        assert run(photo_path, tmp_path / dtype, "--amp_dtype", dtype, "--num_epochs", "1") == 0
    assert norms["float16"] == pytest.approx(norms["bfloat16"], rel=0.05)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_pickle_checkpoint_is_refused_without_running_it(photo_path, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    torch.save({"model": Payload(marker)}, tmp_path / "checkpoint.pt")
    assert Deblur.main(tiny_run_args(photo_path, tmp_path, "--resume")) == 2
    assert (
        "not a Deblur checkpoint, or is damaged; nothing in it was run" in capsys.readouterr().err
    )
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"not a checkpoint at all", {"weights": [1, 2, 3]}, [1, 2, 3]])
def test_files_that_are_not_checkpoints_are_refused(photo_path, tmp_path, capsys, content):
    path = tmp_path / "other.pt"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    assert Deblur.main(tiny_run_args(photo_path, tmp_path, "--resume", str(path))) == 2
    assert "is not a Deblur checkpoint" in capsys.readouterr().err


def test_checkpoint_of_another_architecture_is_refused(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path) == 0
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    checkpoint["model"]["main.0.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    assert run(photo_path, tmp_path, "--resume") == 2
    assert "different network architecture" in capsys.readouterr().err


def test_unloadable_vgg_weights_mean_mse_only_with_an_explanation(photo_path, tmp_path, capsys):
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]).write_bytes(b"half a download")
    assert run(photo_path, tmp_path, "--perceptual_weight", "0.1", vgg_weights="IMAGENET1K_V1") == 0
    assert "MSE loss only" in capsys.readouterr().err
    assert all(float(r["perceptual"]) == 0 for r in history(tmp_path))


def test_perceptual_weight_zero_never_builds_the_vgg(photo_path, tmp_path, monkeypatch):
    monkeypatch.setattr(Deblur, "load_vgg19_loss", lambda *args: pytest.fail("VGG19 was built"))
    assert run(photo_path, tmp_path, "--perceptual_weight", "0") == 0


def test_divergence_stops_training_and_keeps_the_last_good_weights(photo_path, tmp_path, capsys):
    code = run(
        photo_path,
        tmp_path,
        "--lr",
        "1e36",
        "--log_every",
        "1",
        "--checkpoint_every",
        "1",
        "--num_epochs",
        "50",
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "became NaN or infinite" in err and "try --lr 1e+35" in err
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert checkpoint["epoch"] < 50 and f"epoch {checkpoint['epoch']}'s weights" in err
    assert (
        np.asarray(Image.open(tmp_path / "reconstructed_image.jpg")).std() > 0
    )  # not NaN made one flat colour


def test_a_long_run_suggests_the_quick_look(capsys, tmp_path):
    progress = support.Progress(SimpleNamespace(num_epochs=20000, output_dir=tmp_path), stop=None)
    progress.epoch = 10
    progress.log([0.1, 0.1, 0.0], rate=0.5)
    assert f"A quick look: python Deblur.py {support.QUICK_LOOK}" in capsys.readouterr().out
    progress.log([0.1, 0.1, 0.0], rate=0.5)
    assert "quick look" not in capsys.readouterr().out  # said once, at the first log line


def test_compile_on_compiles_the_loss_and_computes_what_eager_does(
    photo_path, tmp_path, monkeypatch
):
    compiled, real_compile = [], torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda function, **kw: compiled.append(function) or real_compile(function)
    )
    losses = {}
    for mode in ("off", "on"):
        assert run(photo_path, tmp_path / mode, "--compile", mode) == 0
        losses[mode] = [float(r["total"]) for r in history(tmp_path / mode)]
    assert compiled == [Deblur.compute_losses]
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-2)


def test_compile_auto_is_off_on_a_cpu(photo_path, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: pytest.fail("compiled on a CPU"))
    assert run(photo_path, tmp_path, "--compile", "auto") == 0


def test_a_failing_compile_is_said_and_training_runs_eagerly(
    photo_path, tmp_path, monkeypatch, capsys
):
    def broken(*args):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda function: broken)
    assert run(photo_path, tmp_path, "--compile", "on") == 0
    assert (
        "torch.compile failed (no C++ compiler found); training without it"
        in capsys.readouterr().out
    )
    assert len(history(tmp_path)) == 2


def test_the_host_waits_for_the_device_only_on_logged_epochs(photo_path, tmp_path, monkeypatch):
    steps, waits = [0], set()
    real_losses, real_item, real_bool = (
        Deblur.compute_losses,
        torch.Tensor.item,
        torch.Tensor.__bool__,
    )

    def counted_losses(*args):
        steps[0] += 1
        return real_losses(*args)

    def reading(real):
        def read(tensor):
            waits.add(steps[0])
            return real(tensor)

        return read

    monkeypatch.setattr(Deblur, "compute_losses", counted_losses)
    monkeypatch.setattr(torch.Tensor, "item", reading(real_item))
    monkeypatch.setattr(torch.Tensor, "__bool__", reading(real_bool))
    assert run(photo_path, tmp_path, "--num_epochs", "30", "--log_every", "10") == 0
    # Before training (the baseline), then the logged epochs only. A `loss.item()` or `print(loss)`
    # in the loop reads the loss every step: on a GPU the host then waits for the device every
    # step, instead of queueing the next one, and training slows down.
    assert waits == {0, 10, 20, 30}, (
        f"the host read a tensor's value after steps {sorted(waits - {0, 10, 20, 30})}, which are "
        "not logged epochs: on a GPU that makes the host wait for the device every step"
    )


@pytest.mark.parametrize("backend, shown", [("agg", False), ("tkagg", True)])
def test_figures_are_shown_only_with_an_interactive_backend(
    photo_path, tmp_path, monkeypatch, backend, shown
):
    calls = []
    monkeypatch.setattr(matplotlib.pyplot, "get_backend", lambda: backend)
    monkeypatch.setattr(matplotlib.pyplot, "show", lambda: calls.append(backend))
    assert run(photo_path, tmp_path) == 0
    assert bool(calls) is shown
