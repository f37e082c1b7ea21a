import csv
import re

import pytest
import torch
from conftest import tiny_run_args

import Deblur

LOG_LINE = re.compile(r"^Epoch (\d+), Total Loss: \d+\.\d{6}, MSE: \d+\.\d{6}, Perceptual: \d+\.\d{6}, "
                      r"PSNR: -?\d+\.\d\d dB, \d+\.\d epochs/s, elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d$")


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
    for name in ("comparison.png", "reconstructed_image.jpg", "training_curves.png", "history.csv", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    from PIL import Image
    assert Image.open(out / "reconstructed_image.jpg").size == (32, 32)


def test_log_lines_start_with_the_seeds_format(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path, "--num_epochs", "20", "--log_every", "10", "--perceptual_weight", "0.1") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch ")]
    assert [LOG_LINE.match(line).group(1) for line in lines] == ["10", "20"]
    perceptual = float(re.search(r"Perceptual: (\S+),", lines[0]).group(1))
    assert perceptual > 0  # the (random) VGG term is really in the loss


def test_history_row_matches_the_log_line(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path) == 0
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch 4,")][0]
    row = history(tmp_path)[-1]
    assert list(row) == ["epoch", "total", "mse", "perceptual", "psnr", "seconds"]
    assert f"Total Loss: {float(row['total']):.6f}" in line and f"PSNR: {float(row['psnr']):.2f} dB" in line


def test_comparison_figure_has_the_seeds_three_titled_panels(photo_path, tmp_path, monkeypatch):
    titles = {}
    real_save = Deblur.save_figure
    monkeypatch.setattr(Deblur, "save_figure",
                        lambda fig, path: (titles.setdefault(path.name, [a.get_title() for a in fig.axes]),
                                           real_save(fig, path)))
    assert run(photo_path, tmp_path) == 0
    original, blurred, restored = titles["comparison.png"]
    assert original == "Original Image"
    assert blurred.startswith("Blurred Image\nPSNR ") and "SSIM" in blurred
    assert restored.startswith("Reconstructed Image\nPSNR ")


def test_same_seed_gives_an_identical_reconstruction(photo_path, tmp_path):
    for name in ("a", "b"):
        assert run(photo_path, tmp_path / name, "--perceptual_weight", "0.1") == 0
    assert run(photo_path, tmp_path / "c", "--seed", "7") == 0
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
    assert [row[:5] for row in split["history"]] == [row[:5] for row in whole["history"]]


def test_resume_with_another_image_size_is_refused_by_name(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path) == 0
    assert Deblur.main(tiny_run_args(photo_path, tmp_path, "--image_size", "48", "--resume")) == 2
    assert "image_size = 32" in capsys.readouterr().err


def test_resume_with_a_new_learning_rate_is_allowed_and_said(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path) == 0
    assert run(photo_path, tmp_path, "--num_epochs", "6", "--lr", "0.001", "--resume") == 0
    out = capsys.readouterr().out
    assert "resuming with lr = 0.001 (the checkpoint used 0.0001)" in out and "Resumed from" in out
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"] == 0.001


def test_resume_may_switch_between_bfloat16_and_float16_with_a_grad_scaler(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path) == 0
    assert run(photo_path, tmp_path, "--num_epochs", "6", "--amp_dtype", "float16", "--resume") == 0
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["scaler"]["scale"] > 0
    assert run(photo_path, tmp_path, "--num_epochs", "8", "--amp_dtype", "bfloat16", "--resume") == 0
    assert "resuming with amp_dtype = 'bfloat16' (the checkpoint used 'float16')" in capsys.readouterr().out


def test_a_fresh_run_keeps_the_previous_checkpoint(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path, "--num_epochs", "2") == 0
    assert run(photo_path, tmp_path, "--num_epochs", "3") == 0
    assert torch.load(tmp_path / "checkpoint.previous.pt", weights_only=True)["epoch"] == 2
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 3


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_pickle_checkpoint_is_refused_without_running_it(photo_path, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    torch.save({"model": Payload(marker)}, tmp_path / "checkpoint.pt")
    assert Deblur.main(tiny_run_args(photo_path, tmp_path, "--resume")) == 2
    assert "refusing" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all", "not a readable checkpoint"),
    ({"weights": [1, 2, 3]}, "not a Deblur checkpoint"),
])
def test_files_that_are_not_checkpoints_are_refused(photo_path, tmp_path, capsys, content, message):
    path = tmp_path / "other.pt"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    assert Deblur.main(tiny_run_args(photo_path, tmp_path, "--resume", str(path))) == 2
    assert message in capsys.readouterr().err


def test_checkpoint_of_another_architecture_is_refused(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path) == 0
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    checkpoint["model"]["main.0.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    assert run(photo_path, tmp_path, "--resume") == 2
    assert "different network architecture" in capsys.readouterr().err


def test_unloadable_vgg_weights_mean_mse_only_with_an_explanation(photo_path, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    damaged = cache / Deblur.VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    damaged.write_bytes(b"half a download")
    assert run(photo_path, tmp_path, "--perceptual_weight", "0.1",
               vgg_weights=Deblur.VGG19_Weights.IMAGENET1K_V1) == 0
    captured = capsys.readouterr()
    assert f"delete {damaged}" in captured.err and "MSE loss only" in captured.err
    assert "perceptual_weight = 0" in captured.err
    assert all(float(r["perceptual"]) == 0 for r in history(tmp_path))


def test_perceptual_weight_zero_never_builds_the_vgg(photo_path, tmp_path, monkeypatch):
    def fail(*args):
        raise AssertionError("VGG19 was built")
    monkeypatch.setattr(Deblur, "VGG19Loss", fail)
    assert run(photo_path, tmp_path, "--perceptual_weight", "0") == 0


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(photo_path, tmp_path, capsys):
    code = run(photo_path, tmp_path, "--lr", "1e36", "--log_every", "1", "--checkpoint_every", "1",
               "--num_epochs", "50")
    assert code == 1
    err = capsys.readouterr().err
    assert "became NaN or infinite" in err and "--lr" in err
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert checkpoint["epoch"] < 50
    assert f"epoch {checkpoint['epoch']}'s weights" in err
    assert (tmp_path / "reconstructed_image.jpg").exists()


def test_expected_duration_is_printed_before_a_long_run(photo_path, tmp_path, capsys):
    assert run(photo_path, tmp_path, "--num_epochs", "6") == 0
    assert re.search(r"Measured \S+ s/epoch: 6 epochs will take about \d+:\d\d:\d\d", capsys.readouterr().out)


def test_compiled_step_computes_what_the_eager_one_does(photo_path, tmp_path, capsys):
    losses = {}
    for mode in ("off", "on"):
        assert run(photo_path, tmp_path / mode, "--compile", mode, "--perceptual_weight", "0.1") == 0
        out = capsys.readouterr().out
        assert f"compile {mode}" in out
        losses[mode] = [float(r["total"]) for r in history(tmp_path / mode)]
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-2)


@pytest.mark.parametrize("args, expected", [
    (["--image_size", "128", "--num_epochs", "500"], False),
    (["--image_size", "128", "--num_epochs", "20000"], True),
    (["--image_size", "512", "--num_epochs", "20000"], True),
    (["--image_size", "512", "--num_epochs", "50"], False),
    (["--image_size", "512", "--num_epochs", "20000", "--compile", "off"], False),
    (["--image_size", "64", "--compile", "on"], True),
])
def test_compile_auto_is_on_only_where_it_repays_its_start_up_time_on_a_cpu(args, expected):
    assert Deblur.should_compile(Deblur.parse_settings(args), torch.device("cpu")) is expected


def test_the_host_waits_for_the_device_only_on_logged_epochs(photo_path, tmp_path, monkeypatch):
    steps, waits = [0], set()
    real_step, real_item, real_bool = Deblur.train_step, torch.Tensor.item, torch.Tensor.__bool__

    def counted_step(*args):
        steps[0] += 1
        return real_step(*args)

    def reading(real):
        def read(tensor):
            waits.add(steps[0])
            return real(tensor)
        return read

    monkeypatch.setattr(Deblur, "train_step", counted_step)
    monkeypatch.setattr(torch.Tensor, "item", reading(real_item))
    monkeypatch.setattr(torch.Tensor, "__bool__", reading(real_bool))
    assert run(photo_path, tmp_path, "--num_epochs", "30", "--log_every", "10", "--checkpoint_every", "1000") == 0
    # Before training (0), the speed measurement (1 and 1 + 3), the logged epochs.
    assert waits == {0, 1, 4, 10, 20, 30}


@pytest.mark.parametrize("backend, shown", [("agg", False), ("tkagg", True)])
def test_figures_are_shown_only_with_an_interactive_backend(photo_path, tmp_path, monkeypatch, backend, shown):
    calls = []
    monkeypatch.setattr(Deblur.plt, "get_backend", lambda: backend)
    monkeypatch.setattr(Deblur.plt, "show", lambda: calls.append(backend))
    assert run(photo_path, tmp_path) == 0
    assert bool(calls) is shown
