"""The CUDA path: float16 with a GradScaler, TF32 and torch.compile, as Deblur uses them on a GPU.

Skipped, with the reason, on a machine without CUDA (CI has none); run them where there is one.
"""

import pytest
import torch
from conftest import tiny_run_args

import Deblur
import support

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_cfg(tmp_path, *extra):
    argv = tiny_run_args("unused.png", tmp_path, "--device", "cuda", *extra)
    return support.parse_settings(Deblur.SETTINGS, Deblur.__file__, argv)


def test_auto_picks_float16_with_an_enabled_grad_scaler_on_cuda(tmp_path):
    cfg = cuda_cfg(tmp_path, "--amp_dtype", "auto")
    device = torch.device("cuda")
    net, vgg, optimizer, scaler = Deblur.make_training(cfg, device, None)
    assert Deblur.amp_dtype_of(cfg, device) == torch.float16
    assert scaler.is_enabled()
    assert torch.backends.cuda.matmul.allow_tf32  # set_float32_matmul_precision("high")


def test_the_float16_step_clips_the_unscaled_gradients(photo_path, tmp_path, monkeypatch):
    """Clipping sees the true gradient norm: the float16 (scaled by 65536) step's norm equals the
    float32 step's within 5%."""
    norms = {}
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, **kwargs):
        parameters = list(parameters)
        grads = torch.stack([p.grad.float().norm() for p in parameters])
        norms.setdefault(dtype, torch.linalg.vector_norm(grads).item())
        return real_clip(parameters, max_norm, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    for dtype in ("float16", "float32"):
        args = tiny_run_args(photo_path, tmp_path / dtype, "--device", "cuda", "--num_epochs", "1")
        assert Deblur.main([*args, "--amp_dtype", dtype], vgg_weights=None) == 0
    assert norms["float16"] == pytest.approx(norms["float32"], rel=0.05)


def test_compiled_training_on_cuda_lowers_the_loss_like_eager(photo_path, tmp_path):
    losses = {}
    for mode in ("off", "on"):
        args = tiny_run_args(photo_path, tmp_path / mode, "--device", "cuda", "--compile", mode)
        extra = ["--num_epochs", "20", "--log_every", "10", "--perceptual_weight", "0.1"]
        assert Deblur.main([*args, *extra], vgg_weights=None) == 0
        history = (tmp_path / mode / "history.csv").read_text().splitlines()[1:]
        losses[mode] = [float(line.split(",")[1]) for line in history]
    assert losses["on"][-1] < losses["on"][0]
    assert losses["on"] == pytest.approx(losses["off"], rel=0.05)


def test_a_run_on_cuda_reads_the_device_only_on_logged_epochs(photo_path, tmp_path, monkeypatch):
    synced = []
    real_item = torch.Tensor.item

    def item(tensor):
        synced.append(tensor.device.type)
        return real_item(tensor)

    monkeypatch.setattr(torch.Tensor, "item", item)
    args = tiny_run_args(photo_path, tmp_path, "--device", "cuda", "--num_epochs", "30")
    assert Deblur.main([*args, "--log_every", "10"], vgg_weights=None) == 0
    # 3 logged epochs x 3 loss values, against 90 if every step read its losses
    assert synced.count("cuda") <= 3 * 3 + 2
