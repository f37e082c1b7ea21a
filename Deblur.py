"""Deblur: remove blur from one image by training a small residual CNN on that very image.

It overfits one (blurred, sharp) pair on purpose: a demo of residual connections, mixed precision and a
VGG19 perceptual loss, measured against classical deconvolution and tried on an image it never saw.
`python Deblur.py --help` lists the settings; --resume continues a run; --apply PHOTO deblurs a photo.
"""

import argparse
import math
import os
import re
import shutil
import signal
import sys
from contextlib import contextmanager
from datetime import timedelta
from itertools import count, pairwise
from pathlib import Path
from time import perf_counter
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends import BackendFilter, backend_registry
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from skimage import restoration
from torch import nn
from torch.nn import functional as F

from PerceptualLoss import load_vgg19_loss, perceptual_distance

# ---- Settings: edit a line, or override it for one run: python Deblur.py --num_epochs 300
image_path = "data/sample.jpg"  # training image; a relative path is also looked up next to Deblur.py
image_size = 512  # the image is resized to image_size x image_size pixels (16 to 4096)
blur_kind = "gaussian"  # the blur to undo: gaussian (Pillow's GaussianBlur), motion, defocus or box
blur_radius = 5.0  # blur size in pixels: Gaussian sigma, half the motion length, disk or box radius
blur_angle = 0.0  # direction of a motion blur, in degrees anticlockwise from horizontal
num_epochs = 20000  # one optimisation step on the single image pair per epoch
lr = 0.0001  # Adam learning rate
weight_decay = 1e-5  # Adam weight decay (L2 regularisation)
mse_weight = 1.0  # weight of the pixel-wise MSE loss
perceptual_weight = 0.1  # weight of the VGG19 perceptual loss; 0 skips loading VGG19 at all
max_grad_norm = 1.0  # gradients are clipped to this norm
log_every = 10  # print a progress line and add a history.csv row every this many epochs (and the last)
checkpoint_every = 1000  # write output_dir/checkpoint.pt every this many epochs (and at the end)
seed = 0  # seeds the network's initialisation: same seed and settings, same result on a CPU
device = "auto"  # auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps
amp_dtype = "auto"  # auto (float16 on CUDA, bfloat16 on CPU, float32 on MPS), float16, bfloat16 or float32
compile = "auto"  # torch.compile the loss computation: auto (on CUDA only), on or off
holdout_path = "data/holdout.jpg"  # a second image, never trained on, to test the network on; '' skips it
output_dir = "."  # where results, history.csv and checkpoint.pt are written (created if missing)
resume = ""  # '' starts afresh; 'auto' (or a bare --resume) continues output_dir/checkpoint.pt; or a path
apply = ""  # a photo to deblur with the network in --resume's checkpoint, instead of training
# ----
SETTINGS = {name: value for name, value in globals().items() if isinstance(value, (int, float, str))
            and not name.startswith("_")}

# ---- Data: one sharp image and its blurred copy

def load_image_pair(path, size, kind="gaussian", radius=5.0, angle=0.0, setting="image_path"):
    """The image resized to size x size and a copy blurred by `kind`, both as RGB PIL images."""
    image = read_rgb_image(path, setting)
    soft, squashed = min(image.size) < size, image.width != image.height
    if soft or squashed:
        note(f"{path.name} is {image.width}x{image.height}; resized it to {size}x{size}"
             + ", stretching it: it will look soft" * soft + ", not keeping its aspect ratio" * squashed)
    sharp = image.resize((size, size))
    if kind == "gaussian":  # exactly the original's blur
        return sharp, sharp.filter(ImageFilter.GaussianBlur(radius=radius))
    kernel = torch.from_numpy(blur_kernel(kind, radius, angle)).float()
    pad = kernel.shape[0] // 2  # edges replicated, as Pillow's filters do
    padded = F.pad(image_to_tensor(sharp, "cpu"), [pad] * 4, mode="replicate")
    return sharp, Image.fromarray((to_hwc(F.conv2d(padded, kernel.expand(3, 1, -1, -1), groups=3)) * 255).round()
                                  .astype(np.uint8))

def blur_kernel(kind, radius, angle=0.0):
    """The blur as an explicit 2-D kernel summing to 1: what the classical baselines deconvolve with."""
    if kind == "gaussian":
        return np.outer(pillow_gaussian_1d(radius), pillow_gaussian_1d(radius))
    half = math.ceil(radius)
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    if kind == "box":
        kernel = np.ones_like(x)
    elif kind == "defocus":  # the uniform disk an out-of-focus lens spreads a point into
        kernel = (x**2 + y**2 <= radius**2).astype(np.float64)
    else:  # motion: a line 2 * radius + 1 pixels long through the centre, anti-aliased across its width
        dx, dy = math.cos(math.radians(angle)), -math.sin(math.radians(angle))  # rows grow downwards
        kernel = np.clip(1 - np.abs(x * dy - y * dx), 0, 1) * (np.abs(x * dx + y * dy) <= radius)
    return kernel / kernel.sum()

def pillow_gaussian_1d(radius):
    """Pillow's GaussianBlur is not a sampled Gaussian but three 'extended box' passes of variance
    radius**2 / 3 each (Gwosdek et al.; Pillow's BoxBlur.c), with 24-bit fixed-point weights."""
    variance = radius**2 / 3
    inner = math.floor((math.sqrt(12 * variance + 1) - 1) / 2)
    extended = inner + (2 * inner + 1) * (inner * (inner + 1) - 3 * variance) / (6 * (variance - (inner + 1) ** 2))
    weight = math.floor(2**24 / (2 * extended + 1)) / 2**24
    edge = (1 - (2 * inner + 1) * weight) / 2
    box = np.array([edge, *[weight] * (2 * inner + 1), edge])
    return np.convolve(np.convolve(box, box), box)

def image_to_tensor(image, device):
    """(1, 3, H, W) float32 in [0, 1], channels_last: the layout oneDNN and cuDNN convolve fastest."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    return pixels.to(device, memory_format=torch.channels_last)

# ---- Model

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

# ---- Loss: mse_weight x MSE + perceptual_weight x VGG19 distance (PerceptualLoss.py), summed in the loop

def compute_losses(net, vgg, blurred, sharp, target_maps):
    """The loss's two terms: pixel-wise MSE, and the distance between VGG19 features (0 without a VGG)."""
    restored = net(blurred)
    mse = F.mse_loss(restored, sharp)
    if vgg is None:
        return mse, torch.zeros_like(mse)
    return mse, perceptual_distance(vgg.feature_maps(restored), target_maps)

# ---- Training: one step per epoch on the single pair

def make_training(cfg, device, vgg_weights):
    """The seeded network, the perceptual loss (None for MSE only), Adam and the float16 gradient scaler."""
    torch.manual_seed(cfg.seed)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA, as the original (convolutions already are)
    net = DeblurNet().to(device, memory_format=torch.channels_last)
    vgg = load_vgg19_loss(vgg_weights, device) if cfg.perceptual_weight else None
    # Fused Adam: one kernel for all tensors, and no host sync for a GradScaler's skipped steps.
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 fused=device.type in ("cuda", "cpu"))
    return net, vgg, optimizer, torch.amp.GradScaler(device.type, enabled=amp_dtype_of(cfg, device) == torch.float16)

def train(cfg, net, vgg, optimizer, scaler, sharp, blurred, progress, stop):
    """Trains epochs progress.epoch + 1 .. num_epochs; returns 'done', 'stopped' or 'diverged', and the epoch."""
    device, amp, out = blurred.device, amp_dtype_of(cfg, blurred.device), Path(cfg.output_dir)
    target_maps = None
    if vgg is not None:  # the target never changes: its VGG19 features are computed once, not every step
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
            target_maps = vgg.feature_maps(sharp)
    losses = compute_losses
    if cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda"):
        losses = compile_or_not(compute_losses, net, (vgg, blurred, sharp, target_maps), amp)
    last_good, timer = snapshot(net), (progress.epoch, perf_counter())
    for epoch in range(progress.epoch + 1, cfg.num_epochs + 1):
        with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
            mse, perceptual = losses(net, vgg, blurred, sharp, target_maps)
            loss = cfg.mse_weight * mse + cfg.perceptual_weight * perceptual
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # float16: the loss is scaled up so that small gradients survive
        scaler.unscale_(optimizer)  # so that clipping sees the true gradients
        nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm, foreach=True)
        scaler.step(optimizer)
        scaler.update()

        # Every log_every epochs: log, maybe checkpoint. Only then does the host wait for the device.
        stopping = stop.signum is not None  # read once: a later signal waits for the next epoch
        final = epoch == cfg.num_epochs or stopping
        logs, saves = epoch % cfg.log_every == 0 or final, epoch % cfg.checkpoint_every == 0 or final
        if not (logs or saves):
            continue
        values, weights = [loss.item(), mse.item(), perceptual.item()], snapshot(net)
        if not all(map(math.isfinite, values)) or not torch.stack([w.isfinite().all() for w in weights.values()]).all():
            net.load_state_dict(last_good)  # results come from the last weights known to be finite
            return "diverged", epoch
        last_good, now = weights, perf_counter()
        progress.epoch, progress.elapsed = epoch, progress.elapsed + now - timer[1]
        if logs:
            log_progress(cfg, progress, values, rate=(epoch - timer[0]) / (now - timer[1]))
            write_history(out / "history.csv", progress.history)
        if saves:
            save_checkpoint(out / CHECKPOINT, net, optimizer, scaler, cfg, progress)
        timer = (epoch, now)
        if stopping:
            return "stopped", epoch
    return "done", progress.epoch

def log_progress(cfg, progress, values, rate):
    (total, mse, perceptual), remaining = values, (cfg.num_epochs - progress.epoch) / rate
    psnr = psnr_from_mse(mse)
    progress.history.append([progress.epoch, *values, psnr, progress.elapsed])
    print(f"Epoch {progress.epoch}, Total Loss: {total:.6f}, MSE: {mse:.6f}, Perceptual: {perceptual:.6f}, PSNR: "
          f"{psnr:.2f} dB, {rate:.1f} epochs/s, elapsed {hms(progress.elapsed)}, ETA {hms(remaining)}")
    if len(progress.history) == 1 and remaining > 3600:
        print(f"A long run: Ctrl-C stops it cleanly, --resume continues. A quick look: python Deblur.py {QUICK_LOOK}")

# ---- Results: the network against the blurred input and two classical deconvolutions

# Chosen per blur kind on the sample at 128 and 512 px (benchmarks/tune_baselines.py). Iterations are Richardson-
# Lucy's regulariser: on a kernel whose spectrum has zeros it first sharpens, then amplifies the noise.
WIENER_BALANCE = {"gaussian": 0.03, "motion": 0.1, "defocus": 0.1, "box": 0.3}
RL_ITERATIONS = {"gaussian": 100, "motion": 20, "defocus": 20, "box": 20}

def deconvolve(blurred, kind, kernel):
    """Non-blind Wiener and Richardson-Lucy deconvolution with the known kernel, channel by channel."""
    pad = kernel.shape[0]  # both assume what lies past the border: give them the edge, crop it after
    image = np.pad(to_hwc(blurred).astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    methods = {"Wiener": lambda c: restoration.wiener(c, kernel, WIENER_BALANCE[kind]),
               "Richardson–Lucy": lambda c: restoration.richardson_lucy(c, kernel, num_iter=RL_ITERATIONS[kind])}
    restored = {}
    for name, method in methods.items():
        channels = np.stack([method(image[..., c]) for c in range(3)])[:, pad:-pad, pad:-pad]
        restored[name] = torch.from_numpy(channels)[None].float().clamp(0, 1)
    return restored

def evaluate(net, sharp, blurred, kind, kernel):
    """{method: (image, (PSNR, SSIM) against the sharp image)} for the blurred input and its restorations."""
    with torch.no_grad():
        images = {"Blurred": blurred.cpu(), **deconvolve(blurred, kind, kernel), "Network": net(blurred).float().cpu()}
    sharp = sharp.cpu()
    return {name: (image, image_quality(image, sharp)) for name, image in images.items()}

def print_summary(*evaluations):
    """A line per method: PSNR, SSIM and gain over the blurred input, for the training and held-out images."""
    for name in evaluations[0]:
        print(f"{name + ':':17}" + " | held out: ".join(describe(*results[name][1], *results["Blurred"][1], name)
                                                         for results in evaluations))

def describe(psnr, ssim, blurred_psnr, blurred_ssim, name):
    gain = f" (gain {psnr - blurred_psnr:+.2f} dB, {ssim - blurred_ssim:+.4f} SSIM)" * (name != "Blurred")
    return f"PSNR {psnr:.2f} dB, SSIM {ssim:.4f}" + (gain if math.isfinite(blurred_psnr) else " (no blur to undo)")

def save_results(out, rows, kernel, history):
    """comparison.png, reconstructed_image.jpg, history.csv, training_curves.png; shown where there is a screen."""
    comparison, axes = plt.subplots(len(rows), 4, figsize=(20, 5.6 * len(rows)), squeeze=False)
    for row_axes, (label, sharp, row) in zip(axes, rows, strict=True):
        panels = [("Original Image", sharp, None), ("Blurred Image", *row["Blurred"]),
                  ("Richardson–Lucy", *row["Richardson–Lucy"]), ("Reconstructed Image", *row["Network"])]
        for ax, (title, image, quality) in zip(row_axes, panels, strict=True):
            ax.imshow(to_hwc(image))
            ax.set_title(label + title + (f"\nPSNR {quality[0]:.2f} dB, SSIM {quality[1]:.3f}" if quality else ""))
            ax.axis("off")
        inset = row_axes[1].inset_axes([0.72, 0.02, 0.26, 0.26], xticks=[], yticks=[])
        inset.imshow(kernel, cmap="magma")
        inset.set_title(f"kernel {kernel.shape[0]}x{kernel.shape[1]}", fontsize=8)
    save_figure(comparison, out / "comparison.png")
    save_image(rows[0][2]["Network"][0], out / "reconstructed_image.jpg", "JPEG")
    write_history(out / "history.csv", history)

    epochs, results = np.array(history, dtype=np.float64).reshape(-1, 6), rows[0][2]
    curves, (loss_ax, psnr_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for column, label in ((1, "total"), (2, "MSE"), (3, "perceptual")):
        if (epochs[:, column] > 0).any():  # an unused term (all 0) has no place on a log scale
            loss_ax.plot(epochs[:, 0], epochs[:, column], ".-", label=label)
    psnr_ax.plot(epochs[:, 0], epochs[:, 4], ".-", label="reconstruction")
    for name, style in (("Blurred", "--"), ("Richardson–Lucy", ":")):
        if math.isfinite(results[name][1][0]):
            psnr_ax.axhline(results[name][1][0], color="grey", linestyle=style, label=name)
    loss_ax.set(yscale="log", xlabel="epoch", ylabel="loss", title="Loss")
    psnr_ax.set(xlabel="epoch", ylabel="PSNR (dB)", title="PSNR against the original")
    loss_ax.legend(), psnr_ax.legend()
    save_figure(curves, out / "training_curves.png")
    if plt.get_backend() in backend_registry.list_builtin(BackendFilter.INTERACTIVE):
        plt.show()
    plt.close("all")

# ---- The job

def run(cfg, vgg_weights, stop):
    device, out = pick_device(cfg.device), Path(cfg.output_dir)
    inputs = {name: resolve_image_path(getattr(cfg, name)) for name in ("image_path", "holdout_path")
              if getattr(cfg, name)}
    cfg.image_path = str(inputs["image_path"].resolve())
    pairs = {name: [image_to_tensor(image, device) for image in load_image_pair(
        path, cfg.image_size, cfg.blur_kind, cfg.blur_radius, cfg.blur_angle, name)] for name, path in inputs.items()}
    with locked_output_dir(out, inputs, needed=2 * CHECKPOINT_BYTES + 16 * cfg.image_size**2 + 2**24):
        net, vgg, optimizer, scaler = make_training(cfg, device, vgg_weights)
        progress = SimpleNamespace(epoch=0, elapsed=0.0, history=[], ours=False)  # ours: output_dir's checkpoint
        if cfg.resume:
            restore_training(cfg, *load_checkpoint(cfg, net), optimizer, scaler, progress)
        (sharp, blurred), amp = pairs["image_path"], amp_dtype_of(cfg, device)
        baseline = image_quality(blurred, sharp)
        print(f"Using device: {device}\nImage: {cfg.image_path} at {cfg.image_size}x{cfg.image_size}, "
              f"{cfg.blur_kind} blur of radius {cfg.blur_radius}; blurred PSNR {baseline[0]:.2f} dB, SSIM "
              f"{baseline[1]:.4f}\nTraining epochs {progress.epoch + 1} to {cfg.num_epochs}, AMP {str(amp)[6:]}, "
              f"loss {cfg.mse_weight}*MSE + {cfg.perceptual_weight if vgg else 0}*VGG19 perceptual, lr {cfg.lr}")
        if amp == torch.float16 and device.type == "cpu":
            note("float16 on a CPU is emulated and far slower than bfloat16 (--amp_dtype auto)")
        outcome, epoch = train(cfg, net, vgg, optimizer, scaler, sharp, blurred, progress, stop)

        net.eval()
        kernel = blur_kernel(cfg.blur_kind, cfg.blur_radius, cfg.blur_angle)
        rows = [(label, pairs[name][0].cpu(), evaluate(net, *pairs[name], cfg.blur_kind, kernel))
                for name, label in (("image_path", ""), ("holdout_path", "Held out: ")) if name in pairs]
        print_summary(*(results for _, _, results in rows))
        save_results(out, rows, kernel, progress.history)
    if outcome == "diverged":
        raise DeblurError(f"the loss became NaN or infinite by epoch {epoch}, so training stopped; results are "
                          f"from epoch {progress.epoch}'s weights, the last good ones, and the last good checkpoint "
                          f"was kept. lr {cfg.lr} is probably too high: try --lr {cfg.lr / 10:g}", 1)
    print(f"Results are in {out.resolve()}: comparison.png, reconstructed_image.jpg, history.csv, "
          f"training_curves.png and {CHECKPOINT}")
    if outcome == "stopped":
        again = "python Deblur.py --resume" + (f" --output_dir {cfg.output_dir}" if cfg.output_dir != "." else "")
        print(f"Training stopped early at epoch {epoch} of {cfg.num_epochs}. To continue: {again}")
        return 128 + stop.signum
    return 0

def apply_to_photo(cfg):
    """--apply: the trained network on a photo at the photo's own size, written as <name>_deblurred.png."""
    device, out, photo_path = pick_device(cfg.device), Path(cfg.output_dir), resolve_image_path(cfg.apply)
    image = image_to_tensor(read_rgb_image(photo_path, "apply"), device)
    net = DeblurNet().to(device, memory_format=torch.channels_last).eval()
    load_checkpoint(cfg, net)
    with locked_output_dir(out, {}, needed=32 * image.numel() + 2**24), torch.no_grad():
        restored = torch.empty_like(image)
        rows, reach = 64, len(DeblurNet.CHANNELS) - 1  # seven 3x3 layers see 7 pixels each way
        for top in range(0, image.shape[2], rows):  # in strips, to bound the memory; a margin of `reach`
            start = max(top - reach, 0)  # rows makes each strip exactly what the whole would give
            restored[:, :, top:top + rows] = net(image[:, :, start:top + rows + reach])[:, :, top - start:][:, :, :rows]
        target = out / f"{photo_path.stem}_deblurred.png"  # a new name: the photo itself is never replaced
        save_image(restored, target, "PNG")
    print(f"Deblurred {photo_path} at its own size, {image.shape[3]}x{image.shape[2]} (the network is convolutional, "
          f"so any size works; it undoes blur of the pixel size it was trained on): {target}")
    return 0

def main(argv=None, vgg_weights="IMAGENET1K_V1"):
    """Runs the job; returns the exit code. Tests pass vgg_weights=None for a random VGG19."""
    cfg, stop = SimpleNamespace(image_size=image_size), SimpleNamespace(signum=None)
    previous_handlers = {number: signal.signal(number, stop_after_this_step(stop)) for number in STOP_SIGNALS}
    try:
        cfg = parse_settings(argv)
        return apply_to_photo(cfg) if cfg.apply else run(cfg, vgg_weights, stop)
    except DeblurError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 128 + (stop.signum or signal.SIGINT)
    except (MemoryError, RuntimeError) as e:  # PyTorch's CPU allocator says so only in its message
        if not isinstance(e, (MemoryError, torch.OutOfMemoryError)) and "can't allocate memory" not in str(e):
            raise
        print(f"error: out of memory at image_size {cfg.image_size}; try --image_size {cfg.image_size // 2}",
              file=sys.stderr)
        return 1
    finally:
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)

# =============================================================================
# Support code: the command line, checks, checkpoints, safe writes, error reporting. A learner can skip it.

CHECKPOINT, CHECKPOINT_BYTES = "checkpoint.pt", 3 * 4 * 1_331_459  # float32 weights and Adam's two moments
CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "settings", "epoch", "elapsed", "history")
OUTPUTS = ("comparison.png", "reconstructed_image.jpg", "history.csv", "training_curves.png", CHECKPOINT)
PROBLEM = {"image_path": None, "image_size": None, "blur_radius": None, "blur_kind": "gaussian", "blur_angle": 0.0}
QUICK_LOOK = "--image_size 80 --num_epochs 1000 --lr 0.001"
CHOICES = {"blur_kind": ("gaussian", "motion", "defocus", "box"), "compile": ("auto", "on", "off"),
           "amp_dtype": ("auto", "float16", "bfloat16", "float32")}
STOP_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]

class DeblurError(Exception):
    """A failure reported as one line: exit code 2 for bad input or settings, 1 at run time."""
    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code

class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

def parse_settings(argv=None):
    """Every settings line becomes an option of the same name, type and default; --help shows its comment."""
    parser = Parser(prog="Deblur.py", description=__doc__.split("\n")[0],
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    comments = dict(re.findall(r"^(\w+) = .*?  # (.*)$", Path(__file__).read_text(encoding="utf-8"), re.MULTILINE))
    for name, default in SETTINGS.items():
        parser.add_argument(f"--{name}", default=default, type=type(default), help=comments.get(name, ""),
                            choices=CHOICES.get(name), **({"nargs": "?", "const": "auto"} if name == "resume" else {}))
    cfg = parser.parse_args(argv)
    rules = [*[(name, math.isfinite(value), "must be a finite number") for name, value in vars(cfg).items()
               if isinstance(value, float)],
             ("image_size", 16 <= cfg.image_size <= 4096, "must be between 16 and 4096 pixels"),
             ("seed", 0 <= cfg.seed < 2**32, "must be between 0 and 4294967295"),
             *[(name, getattr(cfg, name) > 0, "must be positive") for name in
               ("num_epochs", "lr", "max_grad_norm", "log_every", "checkpoint_every")],
             *[(name, getattr(cfg, name) >= 0, "must be zero or positive") for name in
               ("blur_radius", "weight_decay", "mse_weight", "perceptual_weight")],
             ("perceptual_weight", cfg.mse_weight + cfg.perceptual_weight > 0, "and --mse_weight are both 0, so "
              "there is nothing to learn; set one above 0, as")]
    for name, ok, requirement in rules:
        if not ok:
            raise DeblurError(f"--{name} {requirement}, got {getattr(cfg, name)!r}")
    return cfg

def note(message):
    print(f"Note: {message}")

def resolve_image_path(path):
    """A relative path missing from the current folder is looked up next to Deblur.py."""
    path, beside_script = Path(path).expanduser(), Path(__file__).resolve().parent / path
    return beside_script if not path.is_absolute() and not path.exists() and beside_script.exists() else path

def read_rgb_image(path, setting="image_path"):
    """An image file as 8-bit RGB, EXIF orientation applied, each change said; what Pillow cannot read is refused."""
    if not path.is_file():
        raise DeblurError(f"{path} is a folder, not an image file (pass --{setting} FILE)" if path.is_dir()
                          else f"image not found: {path} (set {setting} or pass --{setting} FILE)")
    try:
        with Image.open(path) as image:
            deep = image.mode == "RGB" and any(";16" in str(tile.args) for tile in image.tile)
            image.load()
            changes = [change for condition, change in (
                (getattr(image, "n_frames", 1) > 1, "used its first frame only"), (deep, "reduced it to 8 bits"),
                (image.getexif().get(0x0112, 1) != 1, "applied its EXIF orientation"),
                (image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info, "composited it on white"),
                (image.mode not in ("RGB", "RGBA"), f"converted it from {image.mode} to RGB")) if condition]
            image = ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise DeblurError(f"{path} is not an image Pillow can read (use a JPEG, PNG, BMP, TIFF or WebP file)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # damaged, unreadable, too large
        raise DeblurError(f"cannot read {path}: {e}") from None
    if changes:
        note(f"{path.name}: {'; '.join(changes)}")
    if image.mode.startswith("I"):  # 16- or 32-bit grey: rescale it, where Pillow's own convert would clip
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((pixels * 255 / (65535 if image.mode.startswith("I;16") or pixels.max() > 255
                                                 else 255)).round().clip(0, 255).astype(np.uint8))
    return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA")).convert("RGB")

def pick_device(name):
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    name = next(kind for kind, ok in available.items() if ok) if name == "auto" else name
    if not available.get(name.split(":")[0]):
        raise DeblurError(f"--device {name!r}: no such device on this machine; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)

def amp_dtype_of(cfg, device):
    return getattr(torch, cfg.amp_dtype) if cfg.amp_dtype != "auto" else {
        "cuda": torch.float16, "cpu": torch.bfloat16}.get(device.type, torch.float32)

def compile_or_not(function, net, inputs, amp):
    """torch.compile(function), compiled now on one forward and backward; where that fails, function itself."""
    compiled = torch.compile(function)
    try:
        with torch.autocast(next(net.parameters()).device.type, dtype=amp, enabled=amp != torch.float32):
            sum(compiled(net, *inputs)).backward()
    except RuntimeError as e:  # no C++ compiler, no Triton, an unsupported platform
        note(f"torch.compile failed ({str(e).strip().splitlines()[0][:200]}); training without it")
        return function
    finally:
        net.zero_grad(set_to_none=True)
    return compiled

def stop_after_this_step(stop):
    """A signal handler: the first Ctrl-C, SIGTERM or SIGHUP asks training to stop and save; a second quits."""
    def request(signum, frame):
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this step and saving (again: quit at once)", file=sys.stderr)
    return request

@contextmanager
def locked_output_dir(out, inputs, needed):
    """Creates `out`, checks it can hold the results without overwriting an input, and holds an exclusive lock
    on it while the body runs: a second run in the same folder is refused, naming this one's PID."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".deblur.lock", "a+", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise DeblurError(f"cannot create files in output_dir {out} ({e.strerror}); use another --output_dir") from None
    with lock:
        if (free := shutil.disk_usage(out).free) < needed:
            raise DeblurError(f"output_dir {out} has only {free // 2**20} MB free; this run needs about "
                              f"{needed // 2**20 + 1} MB (free some space or pass another --output_dir)")
        for setting, path in inputs.items():
            if path.resolve() in {(out / name).resolve() for name in OUTPUTS}:
                raise DeblurError(f"--{setting} {path} has the name of an output in output_dir {out} and would be "
                                  f"overwritten; rename or move it, or pass another --output_dir")
        try:
            if os.name == "nt":
                import msvcrt
                lock.seek(2**30)  # a byte far past the PID, which another run must still be able to read
                msvcrt.locking(lock.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            raise DeblurError(f"another Deblur run (PID {lock.read().strip() or '?'}) is using output_dir {out}; "
                              f"wait for it to end, or pass another --output_dir") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield

@contextmanager
def atomic_path(path):
    """Yields a temporary path, unique to this process, that replaces `path` only once fully written."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0]
        raise DeblurError(f"could not write {path}: {reason}; nothing was replaced", 1) from None
    finally:
        temporary.unlink(missing_ok=True)

def save_checkpoint(path, net, optimizer, scaler, cfg, progress):
    """Atomic; a fresh run's first checkpoint moves an earlier run's aside (checkpoint.N.pt), never over it."""
    state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
             "settings": vars(cfg), "epoch": progress.epoch, "elapsed": progress.elapsed, "history": progress.history}
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
        if path.exists() and not progress.ours:
            kept = next(p for n in count(1) if not (p := path.with_name(f"checkpoint.{n}.pt")).exists())
            os.replace(path, kept)
            note(f"a fresh run: the earlier {path.name} was kept as {kept.name} (--resume {kept} continues it)")
    progress.ours = True

def load_checkpoint(cfg, net):
    """Reads --resume's checkpoint as data only (a file that would run code is refused) and loads its weights."""
    path = Path(cfg.resume) if cfg.resume not in ("", "auto") else Path(cfg.output_dir) / CHECKPOINT
    if not path.is_file():
        raise DeblurError(f"no checkpoint at {path}; train one (a run without --resume), or pass --resume PATH")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        checkpoint = {key: loaded[key] for key in CHECKPOINT_KEYS}
    except Exception:  # noqa: BLE001 (whatever torch.load or a missing key raises, the file is not ours)
        raise DeblurError(f"{path} is not a Deblur checkpoint, or is damaged; nothing in it was run") from None
    if any(torch.is_tensor(t) and not t.isfinite().all() for t in checkpoint["model"].values()):
        raise DeblurError(f"{path} holds NaN weights (its run diverged); use an earlier checkpoint or start afresh")
    try:
        net.load_state_dict(checkpoint["model"])
    except RuntimeError:
        raise DeblurError(f"cannot use {path}: it holds a different network architecture") from None
    return path, checkpoint

def restore_training(cfg, path, checkpoint, optimizer, scaler, progress):
    """Continues a run (optimizer, scaler, epoch, history), provided it solves the same problem."""
    saved = checkpoint["settings"]
    for name, old_default in PROBLEM.items():
        if (was := saved.get(name, old_default)) != getattr(cfg, name):
            raise DeblurError(f"cannot resume {path}: it was trained with {name} = {was!r}, not "
                              f"{getattr(cfg, name)!r}; use --{name} {was} or start afresh")
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint["scaler"]:  # empty when saved by a disabled scaler (bfloat16 or float32 runs)
        scaler.load_state_dict(checkpoint["scaler"])
    for name, value in vars(cfg).items():
        if name not in ("resume", "output_dir") and saved.get(name, value) != value:
            note(f"resuming with {name} = {value!r} (the checkpoint used {saved[name]!r})")
    for group in optimizer.param_groups:
        group.update(lr=cfg.lr, weight_decay=cfg.weight_decay)
    progress.epoch, progress.elapsed, progress.history = checkpoint["epoch"], checkpoint["elapsed"], checkpoint[
        "history"]
    progress.ours = path.resolve() == (Path(cfg.output_dir) / CHECKPOINT).resolve()
    print(f"Resumed from {path} at epoch {progress.epoch}")
    if progress.epoch >= cfg.num_epochs:
        note(f"the checkpoint has already trained {progress.epoch} epochs; raise --num_epochs to train further")

def image_quality(image, reference):
    """(PSNR in dB, SSIM) of an image in [0, 1] against the reference."""
    from torchmetrics.functional.image import structural_similarity_index_measure  # slow to import: only if needed
    image, reference = image.float(), reference.float()
    ssim = structural_similarity_index_measure(image, reference, data_range=1.0).item()
    return psnr_from_mse(F.mse_loss(image, reference).item()), ssim

def psnr_from_mse(mse):
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf

def snapshot(net):
    return {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}

def hms(seconds):
    return str(timedelta(seconds=round(seconds)))

def to_hwc(image):  # (1, 3, H, W) tensor -> (H, W, 3) float array in [0, 1], for matplotlib, Pillow, scikit-image
    return image[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()

def save_image(image, path, format):
    with atomic_path(path) as temporary:
        Image.fromarray((to_hwc(image) * 255).round().astype(np.uint8)).save(temporary, format=format, quality=95)

def save_figure(figure, path):
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")

def write_history(path, history):
    with atomic_path(path) as temporary:
        rows = [("epoch", "total", "mse", "perceptual", "psnr", "seconds"), *history]
        temporary.write_text("".join(",".join(map(str, row)) + "\n" for row in rows), encoding="utf-8")

if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # progress shows at once, even through a pipe
    sys.exit(main())
