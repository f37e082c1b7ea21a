"""The CUDA path: float16 with a GradScaler, TF32 and torch.compile, as Deblur uses them on a GPU.

Skipped, with the reason, on a machine without CUDA (CI has none); run them where there is one.
"""

import pytest
import torch
from conftest import history, run_deblur, save_photo
from PIL import Image

import Deblur
from plumbing.checkpoints import SHIPPED_MODEL
from plumbing.command_line import parse_settings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_picks_float16_with_enabled_grad_scalers_on_cuda(tmp_path):
    argv = ["--device", "cuda", "--amp_dtype", "auto", "--output_dir", str(tmp_path)]
    argv += ["--adversarial_weight", "0.01"]  # the discriminator has a scaler of its own
    cfg, _ = parse_settings(Deblur.SETTINGS, argv)
    facts = Deblur.facts_of(cfg)
    net = Deblur.make_network(cfg.model, cfg.restore_from, cfg.seed, facts.device)
    vgg, optimizer, scaler, discriminator = Deblur.make_training(cfg, net, None, facts)
    assert facts.amp == torch.float16
    assert scaler.is_enabled()
    assert discriminator.scaler.is_enabled() and discriminator.scaler is not scaler


def test_the_float16_step_clips_the_unscaled_gradients(photo_path, tmp_path, first_clip_norms):
    """Clipping sees the true gradient norm: the float16 (scaled by 65536) step's norm equals the
    float32 step's within 5%."""
    for dtype in ("float16", "float32"):
        first_clip_norms.label = dtype
        args = ("--device", "cuda", "--num_epochs", "1", "--amp_dtype", dtype)
        assert run_deblur(photo_path, tmp_path / dtype, *args) == 0
    assert first_clip_norms["float16"] == pytest.approx(first_clip_norms["float32"], rel=0.05)


def test_compiled_training_on_cuda_lowers_the_loss_like_eager(photo_path, tmp_path):
    found = {}
    for mode in ("off", "on"):
        args = ("--device", "cuda", "--torch_compile", mode, "--num_epochs", "20")
        extra = ("--log_every", "10", "--perceptual_weight", "0.1")
        assert run_deblur(photo_path, tmp_path / mode, *args, *extra) == 0
        found[mode] = [float(row["total"]) for row in history(tmp_path / mode)]
    assert found["on"][-1] < found["on"][0]
    assert found["on"] == pytest.approx(found["off"], rel=0.05)


def test_a_run_on_cuda_waits_for_the_device_only_on_logged_and_snapshot_epochs(
    photo_path, tmp_path, host_waits
):
    args = ("--device", "cuda", "--num_epochs", "30", "--log_every", "10")
    assert run_deblur(photo_path, tmp_path, *args) == 0
    # The logged epochs (10, 20, 30) and progress.png's (1, 2, 5, 10, 20, 30), and the evaluation
    # after the last: never in between, where reading a loss would make every step wait
    assert {10, 20, 30} <= host_waits["cuda"] <= {0, 1, 2, 5, 10, 20, 30}


def test_apply_with_plug_and_play_on_cuda_is_the_cpus_within_an_8_bit_step(tmp_path):
    """The shipped any-blur model, a named blur, its rounds of plug and play: the photo's data
    steps on the GPU, its tiles back in 8 bits on the host between the rounds."""
    photo = save_photo(tmp_path, "photo.png", size=(96, 64))
    named = ("--blur_kind", "motion", "--blur_radius", "4", "--noise_level", "2")
    results = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / device
        argv = ["--apply", str(photo), "--resume", str(SHIPPED_MODEL), "--output_dir", str(out)]
        assert Deblur.main([*argv, "--device", device, "--amp_dtype", "float32", *named]) == 0
        results[device] = torch.tensor(list(Image.open(out / "photo_deblurred.png").getdata()))
    assert (results["cuda"] - results["cpu"]).abs().max() <= 2
