"""Deblur: remove Gaussian blur from one image by training a small residual CNN on that image.

The network deliberately overfits a single (blurred, sharp) pair: an educational demo of residual
connections, mixed precision and a VGG19 perceptual loss, not a general-purpose deblurrer.

    python Deblur.py                                   # the defaults below
    python Deblur.py --image_size 128 --num_epochs 500 # a quick look
    python Deblur.py --resume                          # continue output_dir/checkpoint.pt
"""

import argparse
import csv
import io
import logging
import math
import os
import pickle
import random
import re
import shutil
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends import BackendFilter, backend_registry
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.models import VGG19_Weights
from torchvision.transforms.functional import to_tensor

from PerceptualLoss import VGG19Loss, perceptual_distance

# -----------------------------------------------------------------------------
# Settings: edit a line, or override it for one run: python Deblur.py --num_epochs 300
image_path = "data/sample.jpg"  # training image; a relative path is also looked up next to Deblur.py
image_size = 512  # the image is resized to image_size x image_size pixels (16 to 4096)
blur_radius = 5.0  # radius of the Gaussian blur the network learns to undo
num_epochs = 20000  # one optimisation step on the single image pair per epoch
lr = 0.0001  # Adam learning rate
weight_decay = 1e-5  # Adam weight decay (L2 regularisation)
mse_weight = 1.0  # weight of the pixel-wise MSE loss
perceptual_weight = 0.1  # weight of the VGG19 perceptual loss; 0 skips loading VGG19 at all
max_grad_norm = 1.0  # gradients are clipped to this norm
log_every = 10  # print a progress line and add a history.csv row every this many epochs
checkpoint_every = 1000  # write output_dir/checkpoint.pt every this many epochs (and at the end)
seed = 0  # seeds torch, numpy and random: the same seed and settings give the same result on a CPU
device = "auto"  # auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps
amp_dtype = "auto"  # auto (float16 on CUDA, bfloat16 on CPU, float32 on MPS), float16, bfloat16 or float32
compile = "auto"  # torch.compile the step's loss: auto (where it repays its start-up time), on or off
output_dir = "."  # where results, history.csv and checkpoint.pt are written (created if missing)
resume = ""  # '' starts afresh; 'auto' (or a bare --resume) continues output_dir/checkpoint.pt; or a path
# -----------------------------------------------------------------------------
SETTINGS = {name: value for name, value in globals().items()
            if not name.startswith("_") and isinstance(value, (bool, int, float, str))}

# Changing these would make a checkpoint's network answer a different question.
PROBLEM_SETTINGS = ("image_path", "image_size", "blur_radius")
AMP_DTYPES = ("auto", "float16", "bfloat16", "float32")
COMPILE_CHOICES = ("auto", "on", "off")
CHECKPOINT_NAME = "checkpoint.pt"
# What downloading or torch.load-ing a damaged, foreign or missing file raises (URLError is an OSError).
LOAD_ERRORS = (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError)
# A checkpoint (~16 MB), two figures and an image must fit in output_dir.
MIN_FREE_BYTES = 64 * 2**20
# On a CPU, compiling costs ~20 s once and saves ~2 ms per epoch per 1000 pixels of the image
# (benchmarks/RESULTS.md): it repays itself after ~10M pixel-epochs; 'auto' asks for twice that.
COMPILE_MIN_PIXEL_EPOCHS = 20_000_000
# Steps timed after the first (which includes warm-up) to predict the run's duration.
TIMED_STEPS = 3


class DeblurError(Exception):
    """A failure to report as one line: exit code 2 for bad input or settings, 1 at run time."""

    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code


def note(message):
    print(f"Note: {message}")


# -----------------------------------------------------------------------------
# Command line: every settings line above becomes an option of the same name


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def setting_help():
    """The comment of each settings line, so --help says what the line says."""
    source = Path(__file__).read_text(encoding="utf-8")
    return dict(re.findall(r"^(\w+) = .*?  # (.*)$", source, flags=re.MULTILINE))


def parse_settings(argv=None):
    parser = _Parser(prog="Deblur.py", description=__doc__.split("\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    comments = setting_help()
    for name, default in SETTINGS.items():
        kwargs = {"default": default, "help": comments.get(name, "")}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=type(default), metavar=type(default).__name__.upper())
        if name == "resume":
            kwargs.update(nargs="?", const="auto", metavar="PATH")
        parser.add_argument(f"--{name}", **kwargs)
    cfg = parser.parse_args(argv)
    check_settings(cfg)
    return cfg


def check_settings(cfg):
    for name, value in vars(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise DeblurError(f"--{name} must be a finite number, got {value}")
    rules = [
        ("image_size", 16 <= cfg.image_size <= 4096, "must be between 16 and 4096 pixels"),
        ("num_epochs", cfg.num_epochs > 0, "must be a positive whole number"),
        ("lr", cfg.lr > 0, "must be a positive number"),
        ("blur_radius", cfg.blur_radius >= 0, "must be zero or positive"),
        ("weight_decay", cfg.weight_decay >= 0, "must be zero or positive"),
        ("mse_weight", cfg.mse_weight >= 0, "must be zero or positive"),
        ("perceptual_weight", cfg.perceptual_weight >= 0, "must be zero or positive"),
        ("max_grad_norm", cfg.max_grad_norm > 0, "must be a positive number"),
        ("log_every", cfg.log_every > 0, "must be a positive whole number"),
        ("checkpoint_every", cfg.checkpoint_every > 0, "must be a positive whole number"),
        ("amp_dtype", cfg.amp_dtype in AMP_DTYPES, f"must be one of {', '.join(AMP_DTYPES)}"),
        ("compile", cfg.compile in COMPILE_CHOICES, f"must be one of {', '.join(COMPILE_CHOICES)}"),
    ]
    for name, ok, requirement in rules:
        if not ok:
            raise DeblurError(f"--{name} {requirement}, got {getattr(cfg, name)!r}")
    if cfg.mse_weight == 0 and cfg.perceptual_weight == 0:
        raise DeblurError("--mse_weight and --perceptual_weight are both 0: there is nothing to learn")


# -----------------------------------------------------------------------------
# Data: one sharp image and its blurred copy


def resolve_image_path(path):
    """A relative path missing from the current folder is looked up next to Deblur.py."""
    path = Path(path).expanduser()
    beside_script = Path(__file__).resolve().parent / path
    if not path.is_absolute() and not path.exists() and beside_script.exists():
        return beside_script
    return path


def open_image(path):
    """Reads an image file fully, refusing with one clear line whatever Pillow cannot read."""
    if not path.exists():
        raise DeblurError(f"image not found: {path} (set image_path or pass --image_path FILE)")
    if path.is_dir():
        raise DeblurError(f"{path} is a folder, not an image file (pass --image_path FILE)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; a training image never needs that.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return ImageOps.exif_transpose(image), image.getexif().get(0x0112, 1)
    except PermissionError:
        raise DeblurError(f"cannot read {path}: permission denied (check the file's permissions)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DeblurError(f"{path} is too large to open safely: {e} Use a smaller image.") from None
    except UnidentifiedImageError:
        raise DeblurError(f"{path} is not an image Pillow can read (use a JPEG, PNG, BMP, TIFF or WebP file)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DeblurError(f"{path} is damaged or truncated and cannot be decoded ({e})") from None


def to_rgb(image, name):
    """8-bit RGB from any mode, with a notice saying what was changed."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        note(f"{name} has transparency ({mode}); composited it on a white background")
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    if mode.startswith("I"):
        # 16-bit (I;16) or 32-bit integer grey: Pillow's own convert clips instead of rescaling.
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or pixels.max() > 255 else 255.0
        note(f"{name} is {mode} greyscale; rescaled it to 8 bits and converted it to RGB")
        return Image.fromarray(np.round(pixels / top * 255).clip(0, 255).astype(np.uint8)).convert("RGB")
    note(f"{name} is {mode}; converted it to RGB")
    return image.convert("RGB")


def load_image_pair(path, size, radius):
    """The sharp training image and its blurred copy, as size x size RGB PIL images."""
    image, orientation = open_image(path)
    if orientation != 1:
        note(f"{path.name}: applied its EXIF orientation ({orientation}) before resizing")
    image = to_rgb(image, path.name)
    width, height = image.size
    if width < size or height < size:
        note(f"{path.name} is {width}x{height}; upscaled it to {size}x{size}, so it will look soft")
    elif width != height:
        note(f"{path.name} is {width}x{height}; resized to {size}x{size} without keeping its aspect ratio")
    sharp = image.resize((size, size))
    return sharp, sharp.filter(ImageFilter.GaussianBlur(radius=radius))


def image_to_tensor(image, device):
    """(1, 3, H, W) float32 in [0, 1], channels_last: the layout oneDNN and cuDNN convolve fastest."""
    return to_tensor(image).unsqueeze(0).to(device, memory_format=torch.channels_last)


# -----------------------------------------------------------------------------
# Model


class DeblurNet(nn.Module):
    """Seven 3x3 convolutions, 3-64-128-256-256-128-64-3, Tanh between them, residual, sigmoid."""

    CHANNELS = (3, 64, 128, 256, 256, 128, 64, 3)

    def __init__(self):
        super().__init__()
        layers = []
        for c_in, c_out in pairwise(self.CHANNELS):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.Tanh()]
        self.main = nn.Sequential(*layers[:-1])  # no Tanh after the last convolution

    def forward(self, x):
        # The residual keeps the input's colours and structure; the convolutions add the detail.
        return torch.sigmoid(self.main(x) + x)


# -----------------------------------------------------------------------------
# Loss and quality metrics


def load_perceptual_loss(cfg, device, weights):
    """VGG19Loss, or None when it is not wanted or its weights cannot be had (then MSE only)."""
    if cfg.perceptual_weight == 0:
        return None
    try:
        vgg = VGG19Loss(weights)
    except LOAD_ERRORS as e:  # offline, no cache, damaged file: any of them means MSE only
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        fix = (f"That file looks damaged: delete {cached} and run again to download it afresh."
               if cached.exists() else
               f"Deblur downloads them once into {cached}; connect to the internet and run again, "
               f"or copy {weights.url} there.")
        print(f"Could not load the pretrained VGG19 weights ({type(e).__name__}: {e}). {fix} "
              f"Training with the MSE loss only; set perceptual_weight = 0 to skip VGG19 and this "
              f"message.", file=sys.stderr)
        return None
    return vgg.to(device, memory_format=torch.channels_last)


def psnr_from_mse(mse):
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def image_quality(image, reference):
    """(PSNR in dB, SSIM) of an image in [0, 1] against the reference."""
    image, reference = image.float(), reference.float()
    ssim = structural_similarity_index_measure(image, reference, data_range=1.0)
    return psnr_from_mse(F.mse_loss(image, reference).item()), ssim.item()


# -----------------------------------------------------------------------------
# Training


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise DeblurError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(chosen.type, False):
        raise DeblurError(f"--device {name}: no such device on this machine; use --device auto or cpu")
    if chosen.type == "cuda":  # as the original: TF32 matmuls and convolutions on Ampere and newer
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return chosen


def pick_amp_dtype(name, device):
    if name == "auto":
        return {"cuda": torch.float16, "cpu": torch.bfloat16}.get(device.type, torch.float32)
    return getattr(torch, name)


def seed_everything(value):
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def make_optimizer(net, cfg, device):
    # Fused Adam updates every tensor in one kernel and, under a GradScaler, skips inf steps
    # on the device instead of asking the host.
    return torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type in ("cuda", "cpu"))


def should_compile(cfg, device):
    """'auto': on CUDA, and on a CPU for runs long enough to repay the compilation."""
    if cfg.compile != "auto":
        return cfg.compile == "on"
    pixel_epochs = cfg.num_epochs * cfg.image_size**2
    return device.type == "cuda" or (device.type == "cpu" and pixel_epochs >= COMPILE_MIN_PIXEL_EPOCHS)


def make_loss_fn(net, vgg, sharp, cfg, device, amp_dtype, compiled):
    """A function of the blurred input giving (total, mse, perceptual) under autocast."""
    autocast = {"device_type": device.type, "dtype": amp_dtype, "enabled": amp_dtype != torch.float32}
    target_maps = None
    if vgg is not None:
        # The target never changes, so its VGG features are computed once, not at every step.
        with torch.no_grad(), torch.autocast(**autocast):
            target_maps = vgg.feature_maps(sharp)
    zero = torch.zeros((), device=device)

    def losses(blurred):
        with torch.autocast(**autocast):
            prediction = net(blurred)
            mse = F.mse_loss(prediction, sharp)
            perceptual = zero if vgg is None else perceptual_distance(vgg.feature_maps(prediction), target_maps)
            return cfg.mse_weight * mse + cfg.perceptual_weight * perceptual, mse, perceptual

    if not compiled:
        return losses
    # Where torch.compile cannot work (no C++ compiler, no Triton), run eagerly rather than stop.
    torch._dynamo.config.suppress_errors = True
    # Inductor's CPU build warns that no CUDA runtime is found: true, and of no concern here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(losses)


def train_step(loss_fn, blurred, net, optimizer, scaler, max_grad_norm):
    """One optimisation step; returns the losses as device tensors, without waiting for them."""
    total, mse, perceptual = loss_fn(blurred)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm, foreach=True)
    scaler.step(optimizer)
    scaler.update()
    return total.detach(), mse.detach(), perceptual.detach()


class StopOnCtrlC:
    """First Ctrl-C: finish the current step, then stop cleanly. A second one stops at once."""

    def __enter__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGINT, self.request)
        return self

    def request(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step and saving (press Ctrl-C again to quit at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def format_duration(seconds):
    return str(timedelta(seconds=round(seconds)))


def train(state, cfg, net, step, save_checkpoint, write_history):
    """Runs `step` for epochs state.epoch + 1 .. num_epochs; returns 'done', 'stopped' or 'diverged'.

    Losses stay on the device except on the epochs that log or checkpoint: reading them is
    what makes the host wait for the device.
    """
    first = state.epoch + 1
    timer = (state.epoch, time.perf_counter())
    state.good = {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}
    with StopOnCtrlC() as ctrl_c:
        for epoch in range(first, cfg.num_epochs + 1):
            losses = step()
            if epoch in (first, first + TIMED_STEPS) and epoch < cfg.num_epochs:
                losses[0].item()  # wait for the device, so that the time read is the real one
                if epoch == first:
                    warmed_up = time.perf_counter()
                else:
                    predict_duration((time.perf_counter() - warmed_up) / TIMED_STEPS, cfg.num_epochs - first + 1)
            stopping = ctrl_c.requested  # read once: a Ctrl-C arriving later waits for the next epoch
            last = epoch == cfg.num_epochs or stopping
            logs = epoch % cfg.log_every == 0
            checkpoints = epoch % cfg.checkpoint_every == 0 or last
            if not (logs or checkpoints):
                continue
            total, mse, perceptual = (value.item() for value in losses)
            now = time.perf_counter()
            if not all(map(math.isfinite, (total, mse, perceptual))) or not weights_are_finite(net):
                state.diverged_at = epoch
                return "diverged"
            state.epoch = epoch
            state.elapsed += now - timer[1]
            # Results on a later divergence come from the last weights known to be finite.
            for saved, current in zip(state.good.values(), net.state_dict().values(), strict=True):
                saved.copy_(current)
            if logs:
                rate = (epoch - timer[0]) / (now - timer[1])
                psnr = psnr_from_mse(mse)
                state.history.append([epoch, total, mse, perceptual, psnr, state.elapsed])
                print(f"Epoch {epoch}, Total Loss: {total:.6f}, MSE: {mse:.6f}, Perceptual: {perceptual:.6f}, "
                      f"PSNR: {psnr:.2f} dB, {rate:.1f} epochs/s, "
                      f"elapsed {format_duration(state.elapsed)}, "
                      f"ETA {format_duration((cfg.num_epochs - epoch) / rate)}", flush=True)
                write_history()
            if checkpoints:
                save_checkpoint()
            timer = (epoch, now)
            if stopping:
                return "stopped"
    return "done"


def weights_are_finite(net):
    return bool(torch.stack([p.isfinite().all() for p in net.parameters()]).all())


def predict_duration(per_epoch, epochs):
    total = per_epoch * epochs
    print(f"Measured {per_epoch:.3g} s/epoch: {epochs} epochs will take about {format_duration(total)}.",
          flush=True)
    if total > 3600:
        print("That is a long run (Ctrl-C stops it cleanly and --resume continues it). For a quick "
              "look: python Deblur.py --image_size 128 --num_epochs 500", flush=True)


# -----------------------------------------------------------------------------
# Checkpoints: written atomically, read without ever running code


@contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` that replaces it only once fully written."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as e:
        raise DeblurError(f"could not write {path}: {e.strerror or e}; nothing was replaced", 1) from None
    finally:
        temporary.unlink(missing_ok=True)


def save_checkpoint(path, state, net, optimizer, scaler, cfg):
    checkpoint = {
        "model": net.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "epoch": state.epoch, "elapsed": state.elapsed, "history": state.history, "settings": vars(cfg),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
                "python": random.getstate()},
    }
    with atomic_path(path) as temporary:
        torch.save(checkpoint, temporary)


def load_checkpoint(path):
    if not path.is_file():
        raise DeblurError(f"no checkpoint at {path}; run without --resume to start afresh")
    try:
        # weights_only: a checkpoint is data; a file that would run code is refused, not executed.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # junk bytes, rather than a pickle naming code to run
            raise DeblurError(f"{path} is not a readable checkpoint (damaged, or not a PyTorch file); "
                              f"run without --resume to start afresh") from None
        raise DeblurError(f"refusing {path}: it holds Python objects other than tensors and plain values, "
                          f"so it is not a Deblur checkpoint and will not be run") from None
    except LOAD_ERRORS as e:
        raise DeblurError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                          f"run without --resume to start afresh") from None
    keys = {"model", "optimizer", "scaler", "epoch", "elapsed", "history", "settings", "rng"}
    if not isinstance(checkpoint, dict) or not keys <= checkpoint.keys():
        raise DeblurError(f"{path} is not a Deblur checkpoint (its contents are not what Deblur writes)")
    return checkpoint


def restore_checkpoint(checkpoint, path, state, net, optimizer, scaler, cfg):
    saved = checkpoint["settings"]
    for name in PROBLEM_SETTINGS:
        if saved.get(name) != getattr(cfg, name):
            raise DeblurError(f"cannot resume {path}: it was trained with {name} = {saved.get(name)!r}, "
                              f"not {getattr(cfg, name)!r}; use --{name} {saved.get(name)} or start afresh")
    try:
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError):
        raise DeblurError(f"cannot resume {path}: it holds a different network architecture") from None
    if checkpoint["scaler"]:  # empty when saved by a disabled scaler (bfloat16 or float32 runs)
        scaler.load_state_dict(checkpoint["scaler"])
    for name, value in vars(cfg).items():
        if name not in ("resume", "output_dir") and name in saved and saved[name] != value:
            note(f"resuming with {name} = {value!r} (the checkpoint used {saved[name]!r})")
    for group in optimizer.param_groups:
        group.update(lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = checkpoint["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(("MT19937", np.array(rng["numpy"], dtype=np.uint32), 624))
    random.setstate(rng["python"])
    state.epoch, state.elapsed, state.history = checkpoint["epoch"], checkpoint["elapsed"], checkpoint["history"]
    print(f"Resumed from {path} at epoch {state.epoch}")
    if state.epoch >= cfg.num_epochs:
        note(f"the checkpoint has already trained {state.epoch} epochs; raise --num_epochs to train further")


# -----------------------------------------------------------------------------
# Results


HISTORY_COLUMNS = ("epoch", "total", "mse", "perceptual", "psnr", "seconds")


def write_history(path, history):
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(HISTORY_COLUMNS)
    writer.writerows(history)
    with atomic_path(path) as temporary:
        temporary.write_text(text.getvalue(), encoding="utf-8")


def save_figure(figure, path):
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")


def to_hwc(image):
    """A (1, 3, H, W) tensor as an (H, W, 3) float array in [0, 1], for matplotlib and Pillow."""
    return image[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def save_results(out, sharp, blurred, restored, baseline, history):
    """Writes comparison.png, reconstructed_image.jpg, history.csv and training_curves.png, then
    shows the figures where there is a screen. Returns the reconstruction's (PSNR, SSIM)."""
    quality = image_quality(restored, sharp)
    print(f"Blurred:       PSNR {baseline[0]:.2f} dB, SSIM {baseline[1]:.4f}")
    print(f"Reconstructed: PSNR {quality[0]:.2f} dB, SSIM {quality[1]:.4f} "
          f"(gain {quality[0] - baseline[0]:+.2f} dB, {quality[1] - baseline[1]:+.4f} SSIM)")

    panels = [("Original Image", sharp),
              (f"Blurred Image\nPSNR {baseline[0]:.2f} dB, SSIM {baseline[1]:.3f}", blurred),
              (f"Reconstructed Image\nPSNR {quality[0]:.2f} dB, SSIM {quality[1]:.3f}", restored)]
    comparison, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    for ax, (title, image) in zip(axes, panels, strict=True):
        ax.imshow(to_hwc(image))
        ax.set_title(title)
        ax.axis("off")
    save_figure(comparison, out / "comparison.png")

    pixels = (to_hwc(restored) * 255).round().astype(np.uint8)
    with atomic_path(out / "reconstructed_image.jpg") as temporary:
        Image.fromarray(pixels).save(temporary, format="JPEG", quality=95)

    write_history(out / "history.csv", history)
    if history:
        rows = np.array(history, dtype=np.float64)
        curves, (loss_ax, psnr_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
        for column, label in ((1, "total"), (2, "MSE"), (3, "perceptual")):
            if (rows[:, column] > 0).any():
                loss_ax.plot(rows[:, 0], rows[:, column], label=label)
        loss_ax.set(yscale="log", xlabel="epoch", ylabel="loss", title="Loss")
        loss_ax.legend()
        psnr_ax.plot(rows[:, 0], rows[:, 4], label="reconstruction")
        psnr_ax.axhline(baseline[0], color="grey", linestyle="--", label="blurred input")
        psnr_ax.set(xlabel="epoch", ylabel="PSNR (dB)", title="PSNR against the original")
        psnr_ax.legend()
        save_figure(curves, out / "training_curves.png")

    if plt.get_backend() in backend_registry.list_builtin(BackendFilter.INTERACTIVE):
        plt.show()
    plt.close("all")
    return quality


# -----------------------------------------------------------------------------
# The job


def prepare_output_dir(out):
    """Creates `out` and proves it can hold the results before any time is spent training."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".deblur-write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise DeblurError(f"cannot write to output_dir {out}: {e.strerror or e} (pass --output_dir DIR)") from None
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise DeblurError(f"output_dir {out} has only {free // 2**20} MB free; Deblur needs about "
                          f"{MIN_FREE_BYTES // 2**20} MB (free some space or pass --output_dir DIR)")


def keep_previous_checkpoint(out):
    """A fresh run moves an earlier run's checkpoint aside instead of overwriting it."""
    if (out / CHECKPOINT_NAME).exists():
        kept = out / "checkpoint.previous.pt"
        os.replace(out / CHECKPOINT_NAME, kept)
        note(f"this is a fresh run; the earlier {CHECKPOINT_NAME} was moved to {kept} (--resume continues a run)")


def print_plan(cfg, first_epoch, chosen, amp, perceptual, compiled, baseline, out):
    loss = f"{cfg.mse_weight}*MSE" + (f" + {cfg.perceptual_weight}*VGG19 perceptual" if perceptual else "")
    print(f"Image: {cfg.image_path} at {cfg.image_size}x{cfg.image_size}, blur radius {cfg.blur_radius}; "
          f"blurred baseline PSNR {baseline[0]:.2f} dB, SSIM {baseline[1]:.4f}")
    print(f"Training epochs {first_epoch} to {cfg.num_epochs} on {chosen}, AMP {str(amp).removeprefix('torch.')}, "
          f"loss {loss}, lr {cfg.lr}, compile {'on' if compiled else 'off'}; outputs in {out.resolve()}")


def run(cfg, vgg_weights):
    chosen = pick_device(cfg.device)
    amp = pick_amp_dtype(cfg.amp_dtype, chosen)
    cfg.image_path = str(resolve_image_path(cfg.image_path).resolve())
    sharp_image, blurred_image = load_image_pair(Path(cfg.image_path), cfg.image_size, cfg.blur_radius)
    out = Path(cfg.output_dir)
    prepare_output_dir(out)
    checkpoint_path = Path(cfg.resume) if cfg.resume not in ("", "auto") else out / CHECKPOINT_NAME
    checkpoint = load_checkpoint(checkpoint_path) if cfg.resume else None
    print(f"Using device: {chosen}")

    seed_everything(cfg.seed)
    net = DeblurNet().to(chosen, memory_format=torch.channels_last)
    vgg = load_perceptual_loss(cfg, chosen, vgg_weights)
    optimizer = make_optimizer(net, cfg, chosen)
    scaler = torch.amp.GradScaler(chosen.type, enabled=amp == torch.float16)
    state = SimpleNamespace(epoch=0, elapsed=0.0, history=[], good=None, diverged_at=None)
    if checkpoint:
        restore_checkpoint(checkpoint, checkpoint_path, state, net, optimizer, scaler, cfg)
    else:
        keep_previous_checkpoint(out)

    sharp, blurred = image_to_tensor(sharp_image, chosen), image_to_tensor(blurred_image, chosen)
    compiled = should_compile(cfg, chosen)
    baseline = image_quality(blurred, sharp)
    print_plan(cfg, state.epoch + 1, chosen, amp, vgg is not None, compiled, baseline, out)
    loss_fn = make_loss_fn(net, vgg, sharp, cfg, chosen, amp, compiled)

    def step():
        return train_step(loss_fn, blurred, net, optimizer, scaler, cfg.max_grad_norm)

    def checkpoint():
        save_checkpoint(out / CHECKPOINT_NAME, state, net, optimizer, scaler, cfg)

    try:
        outcome = train(state, cfg, net, step, checkpoint, lambda: write_history(out / "history.csv", state.history))
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise
        raise DeblurError(f"out of memory on {chosen} at image_size {cfg.image_size}; "
                          f"try a smaller --image_size such as {cfg.image_size // 2}", 1) from None
    if outcome == "diverged":
        net.load_state_dict(state.good)

    net.eval()
    with torch.no_grad():
        restored = net(blurred)
    save_results(out, sharp, blurred, restored, baseline, state.history)

    if outcome == "diverged":
        raise DeblurError(f"the loss became NaN or infinite by epoch {state.diverged_at}, so training stopped; "
                          f"results are from epoch {state.epoch}'s weights, the last good ones, and the last "
                          f"good checkpoint was kept. lr {cfg.lr} is probably too high: "
                          f"try --lr {cfg.lr / 10:g}", 1)
    print(f"Results are in {out.resolve()}: comparison.png, reconstructed_image.jpg, history.csv, "
          f"training_curves.png and {CHECKPOINT_NAME}")
    if outcome == "stopped":
        again = "python Deblur.py --resume" + (f" --output_dir {cfg.output_dir}" if cfg.output_dir != "." else "")
        print(f"Training stopped early at epoch {state.epoch} of {cfg.num_epochs}. To continue: {again}")
        return 130
    return 0


def main(argv=None, vgg_weights=VGG19_Weights.IMAGENET1K_V1):
    """Runs the job; returns the exit code. Tests pass vgg_weights=None for a random VGG19."""
    try:
        return run(parse_settings(argv), vgg_weights)
    except DeblurError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; try a smaller --image_size", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
