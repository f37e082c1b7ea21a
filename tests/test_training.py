"""Training: the loss goes down, the log and history say so, the step is the original's (autocast,
scaler, unscale, clip), reproducible, and the host reads the device only when it logs."""

import re
import subprocess
import sys
from types import SimpleNamespace

import matplotlib.pyplot
import numpy as np
import pytest
import torch
from conftest import (
    HALF_PRECISION_SIZE,
    ROOT,
    apply_deblur,
    checkpoint_of,
    history,
    image_pair,
    run_deblur,
)
from PIL import Image
from torchvision.models import VGG19_Weights

import Deblur
from networks import DeblurNet
from plumbing.command_line import (
    ANY_BLUR_QUICK_LOOK,
    BLIND_QUICK_LOOK,
    FOLDER_QUICK_LOOK,
    QUICK_LOOK,
    parse_settings,
)
from plumbing.device import amp_dtype_for
from plumbing.progress import Progress, frame_epochs
from results import psnr_from_mse

LOG_LINE = re.compile(
    r"^Epoch (\d+), Total Loss: \d+\.\d{6}, MSE: \d+\.\d{6}, Perceptual: \d+\.\d{6}, "
    r"PSNR: -?\d+\.\d\d dB, \d+\.\d epochs/s, elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d$"
)
OUTPUTS = ("comparison.png", "reconstructed_image.jpg", "training_curves.png", "history.csv")


@pytest.mark.real_figures
def test_short_run_lowers_the_loss_and_writes_every_output(photo_path, tmp_path):
    out = tmp_path / "out"
    assert (
        run_deblur(photo_path, out, "--num_epochs", "12", "--log_every", "4", "--lr", "0.0003") == 0
    )
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == [4, 8, 12]
    assert float(rows[-1]["total"]) < float(rows[0]["total"]) * 0.8
    for name in (*OUTPUTS, "checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    assert Image.open(out / "reconstructed_image.jpg").size == (32, 32)
    assert Image.open(out / "comparison.png").size == (2000, 560)  # one row of four panels
    assert Image.open(out / "training_curves.png").size == (1200, 450)


def test_frames_of_progress_png_are_spaced_logarithmically_and_end_at_the_last_epoch():
    assert sorted(frame_epochs(1000)) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert sorted(frame_epochs(30)) == [1, 2, 5, 10, 20, 30]


def test_every_run_writes_progress_png_and_gif_with_a_frame_per_snapshot(photo_path, tmp_path):
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "6") == 0
    # The blurred input, epochs 1, 2, 5 and 6, the sharp original: six tiles of the 32-pixel image
    # enlarged four times, under a 36-pixel caption
    assert Image.open(tmp_path / "progress.png").size == (6 * 128, 128 + 36)
    assert Image.open(tmp_path / "progress.gif").n_frames == 6


def test_the_network_learns_to_turn_the_blurred_image_into_the_sharp_one(
    photo_path, tmp_path, monkeypatch
):
    """A swap of the pair anywhere would train the network to blur: it sees the blurred image and
    is compared with the sharp one."""
    seen, targets = [], []
    real_forward, real_mse = DeblurNet.forward, Deblur.F.mse_loss

    def recording_forward(net, x):
        seen.append(x.detach().clone())
        return real_forward(net, x)

    def recording_mse(restored, target):
        if restored.requires_grad:  # the training loss, not a measurement
            targets.append(target.detach().clone())
        return real_mse(restored, target)

    monkeypatch.setattr(DeblurNet, "forward", recording_forward)
    monkeypatch.setattr(Deblur.F, "mse_loss", recording_mse)
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "1") == 0
    blurred, sharp, _, _ = image_pair(photo_path, 32)
    assert torch.equal(seen[0], blurred) and torch.equal(targets[0], sharp)


def test_log_lines_start_with_the_originals_format(photo_path, tmp_path, capsys):
    args = ("--num_epochs", "6", "--log_every", "3", "--perceptual_weight", "0.1")
    assert run_deblur(photo_path, tmp_path, *args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch ")]
    assert [LOG_LINE.match(line).group(1) for line in lines] == ["3", "6"]
    perceptual = float(re.search(r"Perceptual: (\S+),", lines[0]).group(1))
    assert perceptual > 0  # the (random) VGG term is in the loss


def test_history_row_matches_the_log_line(photo_path, tmp_path, capsys):
    assert run_deblur(photo_path, tmp_path) == 0
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch 4,")][0]
    row = history(tmp_path)[-1]
    # At adversarial_weight 0 (TINY's), nothing of the term: no column, no words, no discriminator
    assert list(row) == ["epoch", "psnr", "seconds", "total", "mse", "perceptual"]
    assert "Adversarial" not in line and checkpoint_of(tmp_path)["discriminator"] is None
    assert f"Total Loss: {float(row['total']):.6f}" in line
    assert f"PSNR: {float(row['psnr']):.2f} dB" in line


def test_pixel_loss_l1_trains_on_the_mean_absolute_error_and_the_plan_says_so(
    photo_path, tmp_path, capsys
):
    args = ("--pixel_loss", "l1", "--mse_weight", "2", "--num_epochs", "1")
    assert run_deblur(photo_path, tmp_path, *args) == 0
    assert "loss 2.0*L1 + 0*VGG19 perceptual" in capsys.readouterr().out
    row = history(tmp_path)[-1]
    l1, mse = float(row["total"]) / 2, float(row["mse"])
    # For errors below 1, |e| > e**2, and the mean |e| is at most the root mean square
    assert mse < l1 <= mse**0.5


def test_the_final_epoch_is_logged_even_when_log_every_is_larger(photo_path, tmp_path, capsys):
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "3", "--log_every", "100") == 0
    assert [row["epoch"] for row in history(tmp_path)] == ["3"]
    assert "Epoch 3, Total Loss" in capsys.readouterr().out
    assert (tmp_path / "training_curves.png").stat().st_size > 0


def test_comparison_figure_has_the_originals_titled_panels_and_the_wiener_oracle(
    photo_path, tmp_path, figure_titles
):
    assert run_deblur(photo_path, tmp_path) == 0
    original, blurred, oracle, restored, kernel = figure_titles["comparison.png"]
    assert original == "Original Image"
    assert blurred.startswith("Blurred Image\nPSNR ") and "SSIM" in blurred
    assert oracle.startswith("Wiener at its best (oracle)\nPSNR ")
    assert restored.startswith("Reconstructed Image\nPSNR ")
    assert kernel == "kernel 31x31"  # the inset drawn on the blurred panel


def test_an_untrained_unet_after_wiener_gives_wieners_result_and_the_figure_shows_it(
    photo_path, tmp_path, capsys, figure_titles, monkeypatch
):
    # The untrained U-Net (its last convolution starts at zero) gives its first step's result:
    # Wiener's, at the balance the baseline uses
    args = ("--model", "unet", "--restore_from", "wiener", "--lr", "1e-12", "--num_epochs", "1")
    assert run_deblur(photo_path, tmp_path, *args) == 0
    lines = capsys.readouterr().out.splitlines()
    network = next(line for line in lines if line.startswith("Network:"))
    wiener = next(line for line in lines if line.startswith("Wiener:"))
    assert network.split("PSNR ")[1].split(" (")[0] == wiener.split("PSNR ")[1].split(" (")[0]
    assert figure_titles["comparison.png"][2].startswith("Wiener at its best (oracle)\nPSNR ")


def test_same_seed_gives_an_identical_reconstruction(photo_path, tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "7")):
        assert run_deblur(photo_path, tmp_path / name, "--seed", seed, "--num_epochs", "2") == 0
    a, b, c = ((tmp_path / name / "reconstructed_image.jpg").read_bytes() for name in "abc")
    assert a == b and a != c


def test_clipping_sees_unscaled_gradients_under_float16_and_a_grad_scaler(
    photo_path, tmp_path, first_clip_norms
):
    for dtype in ("float16", "float32"):  # the same first step, with a GradScaler and without
        first_clip_norms.label = dtype
        args = ("--amp_dtype", dtype, "--num_epochs", "1", *HALF_PRECISION_SIZE)
        assert run_deblur(photo_path, tmp_path / dtype, *args) == 0
    assert first_clip_norms["float16"] == pytest.approx(first_clip_norms["float32"], rel=0.05)


def test_auto_precision_on_a_cpu_is_bfloat16_only_where_it_is_fast(monkeypatch):
    cpu = torch.device("cpu")
    # AVX-512 alone (an Intel Xeon Ice Lake) emulates bfloat16: float32 is twice as fast there
    for bfloat16, amx, expected in [
        (True, False, torch.bfloat16),
        (False, True, torch.bfloat16),
        (False, False, torch.float32),
    ]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda b=bfloat16: b)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda a=amx: a)
        assert amp_dtype_for("auto", cpu) == expected
    assert amp_dtype_for("auto", torch.device("cuda")) == torch.float16
    assert amp_dtype_for("bfloat16", cpu) == torch.bfloat16


def test_every_thread_of_a_job_computes_numbers_below_float32s_smallest_as_zero():
    # In a fresh process, as a user's run starts: 1e-40 is a float32 denormal, slow on some CPUs
    job = (
        "import torch, Deblur\n"
        "torch.set_num_threads(2)\n"
        "try:\n    Deblur.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "left = int((torch.full((4_000_000,), 1e-20) * 1e-20).count_nonzero())\n"
        "print(left, torch.set_flush_denormal(True))"  # then whether this CPU can flush at all
    )
    ran = subprocess.run([sys.executable, "-c", job], cwd=ROOT, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    left, can_flush = ran.stdout.split()[-2:]
    if can_flush == "False":
        pytest.skip("this CPU cannot flush denormals (torch.set_flush_denormal says so)")
    assert left == "0"


def test_unloadable_vgg_weights_mean_mse_only_with_an_explanation(photo_path, tmp_path, capsys):
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]).write_bytes(b"half a download")
    args = ("--perceptual_weight", "0.1")
    assert run_deblur(photo_path, tmp_path, *args, vgg_weights="IMAGENET1K_V1") == 0
    assert "MSE loss only" in capsys.readouterr().err
    assert all(float(r["perceptual"]) == 0 for r in history(tmp_path))


def test_perceptual_weight_zero_never_builds_the_vgg(photo_path, tmp_path, monkeypatch):
    monkeypatch.setattr(Deblur, "load_vgg19_loss", lambda *args: pytest.fail("VGG19 was built"))
    assert run_deblur(photo_path, tmp_path, "--perceptual_weight", "0") == 0


def test_divergence_stops_training_and_keeps_the_last_good_weights(photo_path, tmp_path, capsys):
    args = ("--lr", "1e36", "--log_every", "1", "--checkpoint_every", "1", "--num_epochs", "50")
    assert run_deblur(photo_path, tmp_path, *args) == 1
    err = capsys.readouterr().err
    assert "became NaN or infinite" in err and "try --lr 1e+35" in err
    checkpoint = checkpoint_of(tmp_path)
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert checkpoint["epoch"] < 50 and f"epoch {checkpoint['epoch']}'s weights" in err
    reconstruction = np.asarray(Image.open(tmp_path / "reconstructed_image.jpg"))
    assert reconstruction.std() > 0  # not NaN made one flat colour
    assert "the last good checkpoint was kept" in err


def test_a_divergence_before_any_checkpoint_says_none_was_saved_and_names_the_adversarial_term(
    photo_path, tmp_path, capsys
):
    args = ("--lr", "1e36", "--log_every", "1", "--num_epochs", "50", "--adversarial_weight", "1")
    assert run_deblur(photo_path, tmp_path, *args) == 1
    err = capsys.readouterr().err
    assert "(none was saved)" in err and not (tmp_path / "checkpoint.pt").exists()
    assert "try --adversarial_weight 0.1, or --lr 1e+35" in err


@pytest.mark.parametrize(
    "folder, kind, restore_from, expected",
    [
        (False, "gaussian", "blurred", QUICK_LOOK),
        (True, "gaussian", "wiener", FOLDER_QUICK_LOOK),
        (True, "random", "wiener", ANY_BLUR_QUICK_LOOK),
        (True, "random", "blurred", BLIND_QUICK_LOOK),
    ],
    ids=["one image", "a folder", "a folder, any blur", "a folder, blind"],
)
def test_a_long_run_suggests_the_quick_look_of_its_mode(
    capsys, tmp_path, folder, kind, restore_from, expected
):
    cfg = SimpleNamespace(num_epochs=20000, output_dir=tmp_path, image_path=str(tmp_path))
    cfg.__dict__.update(folder=folder, blur_kind=kind, restore_from=restore_from)
    progress = Progress(cfg, None, psnr_from_mse)
    progress.epoch = 10
    terms = {"total": 0.1, "mse": 0.1, "perceptual": 0.0}
    progress.log(terms, rate=0.5)
    if folder:
        expected = f"--image_path {tmp_path} {expected}"
    assert f"A quick look: python Deblur.py {expected}\n" in capsys.readouterr().out
    progress.log(terms, rate=0.5)
    assert "quick look" not in capsys.readouterr().out  # said once, at the first log line


def test_compile_on_compiles_the_network_and_computes_what_eager_does(
    photo_path, tmp_path, monkeypatch
):
    # Traced by dynamo and differentiated by AOT autograd, as by default, but run by the eager
    # backend: inductor's C++ code generation takes 40 s here on a cold cache (CI's), and is
    # PyTorch's to test; test_cuda.py and benchmarks/bench_train.py --compile use it for real.
    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda function: real_compile(function, backend="aot_eager")
    )
    losses = {}
    for mode in ("off", "on"):
        assert run_deblur(photo_path, tmp_path / mode, "--torch_compile", mode) == 0
        losses[mode] = [float(r["total"]) for r in history(tmp_path / mode)]
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-2)
    checkpoint = checkpoint_of(tmp_path / "on")
    assert set(checkpoint["model"]) == set(DeblurNet().state_dict())  # names unchanged


def test_compile_on_compiles_the_forwards_of_the_network_and_the_vgg(
    photo_path, tmp_path, monkeypatch
):
    compiled = []

    def recording_compile(function):
        compiled.append(function.__qualname__)
        return function  # the compiling itself is the test above's

    monkeypatch.setattr(torch, "compile", recording_compile)
    args = ("--torch_compile", "on", "--perceptual_weight", "0.1", "--num_epochs", "1")
    assert run_deblur(photo_path, tmp_path, *args) == 0
    assert compiled == ["Restorer.forward", "VGG19Loss.forward"]  # DeblurNet's is Restorer's


def test_compile_auto_is_off_on_a_cpu(photo_path, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: pytest.fail("compiled on a CPU"))
    assert run_deblur(photo_path, tmp_path, "--torch_compile", "auto") == 0


def test_a_failing_compile_is_said_and_training_runs_eagerly(
    photo_path, tmp_path, monkeypatch, capsys
):
    def broken(*args):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda function: broken)
    assert run_deblur(photo_path, tmp_path, "--torch_compile", "on") == 0
    message = "torch.compile failed (no C++ compiler found); training without it"
    assert message in capsys.readouterr().out
    assert len(history(tmp_path)) == 2


def test_the_host_waits_for_the_device_only_on_logged_and_snapshot_epochs(
    photo_path, tmp_path, host_waits
):
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "12", "--log_every", "10") == 0
    # Before training (the baseline), then the logged epochs and the progress.png snapshots (1, 2,
    # 5, 10 and the last) only. A `loss.item()` or `print(loss)` in the loop reads the loss
    # every step: on a GPU the host then waits for the device every step, instead of queueing.
    expected = {0, 1, 2, 5, 10, 12}
    waits = host_waits["cpu"]
    assert waits == expected, (
        f"the host read a tensor's value after steps {sorted(waits - expected)}, which are neither "
        "logged nor snapshot epochs: on a GPU that makes the host wait for the device every step"
    )


@pytest.mark.parametrize("backend, shown", [("agg", False), ("tkagg", True)])
def test_figures_are_shown_only_with_an_interactive_backend(
    photo_path, tmp_path, monkeypatch, backend, shown
):
    calls = []
    monkeypatch.setattr(matplotlib.pyplot, "get_backend", lambda: backend)
    monkeypatch.setattr(matplotlib.pyplot, "show", lambda: calls.append(backend))
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "1") == 0
    assert bool(calls) is shown


def test_on_apples_mps_neither_adam_nor_clipping_asks_for_multi_tensor_kernels(
    photo_path, monkeypatch
):
    argv = ["--image_path", str(photo_path), "--image_size", "32", "--perceptual_weight", "0"]
    cfg = parse_settings(Deblur.SETTINGS, argv)[0]
    monkeypatch.setattr(Deblur, "pick_device", lambda name, team: torch.device("mps"))
    facts = Deblur.facts_of(cfg)
    assert not facts.multi_tensor
    clip = torch.nn.utils.clip_grad_norm_

    def as_on_mps(parameters, max_norm, foreach=None):
        if foreach:
            raise RuntimeError("foreach=True was passed, but can't use the foreach API on mps")
        return clip(parameters, max_norm, foreach=foreach)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", as_on_mps)
    facts = facts._replace(device=torch.device("cpu"))  # MPS's constraints, on the CPU
    net = Deblur.make_network(cfg.model, cfg.restore_from, cfg.seed, facts.device)
    _, adam, scaler, _ = Deblur.make_training(cfg, net, None, facts)
    assert not adam.defaults["fused"]
    batch = next(
        Deblur.image_batches(
            Deblur.load_image_pair(photo_path, 32, cfg, None), cfg, facts, None, None
        )
    )
    Deblur.training_step(cfg, net, None, adam, scaler, batch, facts)


def test_a_training_job_sets_tf32_matmuls_and_the_convolution_autotuner_and_apply_no_autotuner(
    photo_path, tmp_path, monkeypatch
):
    """Process-wide, set by the job (they only act on CUDA): a training step's shapes are fixed,
    so cuDNN may time its algorithms once; --apply's edge tiles each have a shape of their own."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    torch.set_float32_matmul_precision("highest")  # the default; the job sets "high" again
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "1") == 0
    assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "high"
    torch.backends.cudnn.benchmark = False
    assert apply_deblur(photo_path, tmp_path / "applied", tmp_path / "checkpoint.pt") == 0
    assert not torch.backends.cudnn.benchmark
