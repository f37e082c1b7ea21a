"""Deblur's plumbing, kept out of Deblur.py so that the method reads on its own.

The command line built from Deblur.py's settings block, image reading and input checks, checkpoints,
safe writes, the output-dir lock, signals, and the error type with its reporting. Nothing here is
needed to understand how the network learns to deblur.
"""

import argparse
import errno
import hashlib
import io
import math
import os
import re
import shlex
import shutil
import signal
import sys
from contextlib import contextmanager, suppress
from datetime import timedelta
from functools import cached_property
from itertools import count
from pathlib import Path
from time import perf_counter
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

CHECKPOINT = "checkpoint.pt"
FOLDER_PIXELS = 300_000_000  # at 3 bytes a pixel, a folder's images may take 900 MB in memory
LABELS = {"image_path": "", "sample": "Unseen: ", "holdout_path": "Held out: "}
CHECKPOINT_BYTES = 3 * 4 * 1_331_459  # float32 weights and Adam's two moments
CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "settings", "epoch", "elapsed", "history")
HISTORY_COLUMNS = ("epoch", "total", "mse", "perceptual", "psnr", "seconds")
OUTPUTS = ("comparison.png", "reconstructed_image.jpg", "history.csv", "training_curves.png")
# The settings a resumed run must share with its checkpoint, and their values before they existed.
PROBLEM = {
    "image_path": None,
    "image_size": None,
    "blur_radius": None,
    "blur_kind": "gaussian",
    "blur_angle": 0.0,
}
QUICK_LOOK = "--image_size 80 --num_epochs 1000 --lr 0.001"
CHOICES = {
    "blur_kind": ("gaussian", "motion", "defocus", "box"),
    "compile": ("auto", "on", "off"),
    "amp_dtype": ("auto", "float16", "bfloat16", "float32"),
}
POSITIVE = (
    "num_epochs",
    "lr",
    "max_grad_norm",
    "log_every",
    "checkpoint_every",
    "crop_size",
    "batch_size",
)
NOT_NEGATIVE = ("blur_radius", "weight_decay", "mse_weight", "perceptual_weight")
STOP_SIGNALS = [
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
]


class DeblurError(Exception):
    """A failure reported as one line: exit code 2 for bad input or settings, 1 at run time."""

    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code


# ---- The command line


def settings_in(namespace):
    """The settings block's values: the script's lowercase globals that are numbers or strings."""
    settings = {}
    for name, value in namespace.items():
        if name.islower() and not name.startswith("_") and isinstance(value, (int, float, str)):
            settings[name] = value
    return settings


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_settings(settings, script, argv=None):
    """Every `name = value  # comment` line of the script's settings block becomes an option of the
    same name, type and default, with the comment as its help."""
    parser = Parser(
        prog="Deblur.py",
        description="Remove blur from an image with a small residual CNN trained on it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = Path(script).read_text(encoding="utf-8")
    comments = dict(re.findall(r"^(\w+) = .*?  # (.*)$", source, re.MULTILINE))
    for name, default in settings.items():
        option = {"default": default, "type": type(default), "help": comments.get(name, "")}
        if name == "resume":  # a bare --resume means output_dir/checkpoint.pt
            option.update(nargs="?", const="auto")
        parser.add_argument(f"--{name}", choices=CHOICES.get(name), **option)
    cfg = parser.parse_args(argv)
    check_settings(cfg)
    cfg.output_dir = os.path.expanduser(cfg.output_dir)  # a shell leaves '~/x' in quotes as is
    if cfg.resume != "auto":
        cfg.resume = os.path.expanduser(cfg.resume)
    return cfg


def check_settings(cfg):
    """Refuses, by name, a value no run could use."""
    for name, value in vars(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            refuse(name, value, "must be a finite number")
    if not 16 <= cfg.image_size <= 4096:
        refuse("image_size", cfg.image_size, "must be between 16 and 4096 pixels")
    if cfg.blur_radius > 682:  # a larger gaussian's kernel is wider than the largest image
        refuse("blur_radius", cfg.blur_radius, "must be at most 682 pixels")
    if not 0 <= cfg.seed < 2**32:
        refuse("seed", cfg.seed, "must be between 0 and 4294967295")
    for name in POSITIVE:
        if getattr(cfg, name) <= 0:
            refuse(name, getattr(cfg, name), "must be positive")
    for name in NOT_NEGATIVE:
        if getattr(cfg, name) < 0:
            refuse(name, getattr(cfg, name), "must be zero or positive")
    if cfg.mse_weight + cfg.perceptual_weight == 0:
        raise DeblurError(
            "--mse_weight and --perceptual_weight are both 0, so there is nothing to learn; "
            "set one above 0"
        )


def refuse(name, value, requirement):
    raise DeblurError(f"--{name} {requirement}, got {value!r}")


def note(message):
    print(f"Note: {message}")


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


# ---- Reading images


def resolve_image_path(path):
    """A relative path missing from the current folder is looked up next to Deblur.py."""
    given = Path(path).expanduser()
    beside_script = Path(__file__).resolve().parent / path
    if not given.is_absolute() and not given.exists() and beside_script.exists():
        return beside_script
    return given


def read_rgb_image(path, setting="image_path"):
    """An image file as 8-bit RGB, EXIF orientation applied, each change said in a note; what Pillow
    cannot read is refused in one line."""
    if path.is_dir():
        raise DeblurError(f"{path} is a folder, not an image file (pass --{setting} FILE)")
    if not path.is_file():
        raise DeblurError(f"image not found: {path} (set {setting} or pass --{setting} FILE)")
    try:
        with Image.open(path) as image:
            changes = changes_needed(image)
            image.load()
            image = ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise DeblurError(
            f"{path} is not an image Pillow can read (use a JPEG, PNG, BMP, TIFF or WebP file)"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DeblurError(f"cannot read {path}: {e}") from None  # damaged, unreadable, too large
    if changes:
        note(f"{path.name}: {'; '.join(changes)}")
    if image.mode.startswith("I"):
        image = rescaled_to_8_bits(image)
    white = Image.new("RGBA", image.size, "white")
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


def changes_needed(image):
    """What reading `image` as 8-bit RGB will change, in words, before anything is decoded."""
    changes = []
    if getattr(image, "n_frames", 1) > 1:
        changes.append("used its first frame only")
    if image.mode == "RGB" and any(";16" in str(tile.args) for tile in image.tile):
        changes.append("reduced it to 8 bits")
    if image.getexif().get(0x0112, 1) != 1:
        changes.append("applied its EXIF orientation")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        changes.append("composited it on white")
    if image.mode not in ("RGB", "RGBA"):
        changes.append(f"converted it from {image.mode} to RGB")
    return changes


def read_image_folder(folder, smallest):
    """Every image in the folder, decoded once into memory; a file that cannot be read, or is
    smaller than `smallest` pixels on a side, is skipped with a note. Refused when none is left,
    or when they would not fit in FOLDER_PIXELS."""
    files = sorted(path for path in folder.iterdir() if path.is_file())
    if not files:
        raise DeblurError(f"--image_path {folder} is an empty folder; put photographs in it")
    sizes = {}
    for path in files:
        try:
            with Image.open(path) as image:  # reads the header only
                sizes[path] = image.size
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            note(f"skipped {path.name}: {first_line(e)}")
    pixels = sum(width * height for width, height in sizes.values())
    if pixels > FOLDER_PIXELS:
        raise DeblurError(
            f"the images in {folder} hold {pixels / 1e6:g} megapixels, more than the "
            f"{FOLDER_PIXELS / 1e6:g} that training on a folder keeps in memory; use fewer or "
            f"smaller images"
        )
    images = []
    for path, (width, height) in sizes.items():
        if min(width, height) < smallest:
            note(f"skipped {path.name}: {width}x{height} is smaller than a crop and its margin")
            continue
        images.append(read_rgb_image(path))
    if not images:
        raise DeblurError(
            f"none of the {len(files)} files in {folder} is an image Pillow can read of at least "
            f"{smallest}x{smallest} pixels; put photographs in it, or lower --crop_size"
        )
    if len(images) < len(files):
        note(f"training on {len(images)} images of {folder}; the other files were skipped")
    return images


def rescaled_to_8_bits(image):
    """16- or 32-bit grey, rescaled to 0..255 where Pillow's own convert would clip."""
    pixels = np.asarray(image, dtype=np.float64)
    full_scale = 65535 if image.mode.startswith("I;16") or pixels.max() > 255 else 255
    return Image.fromarray((pixels * 255 / full_scale).round().clip(0, 255).astype(np.uint8))


def resized(image, size, path):
    """The image at size x size, as the original did; stretching and squashing are said."""
    changes = []
    if min(image.size) < size:
        changes.append("stretching it: it will look soft")
    if image.width != image.height:
        changes.append("not keeping its aspect ratio")
    if changes:
        note(
            f"{path.name} is {image.width}x{image.height}; resized it to {size}x{size}, "
            f"{', '.join(changes)}"
        )
    return image.resize((size, size))


# ---- Devices and compilation


def pick_device(name):
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        name = next(kind for kind, ok in available.items() if ok)
    no_such_device = DeblurError(
        f"--device {name!r}: no such device on this machine; use auto, cpu, cuda, cuda:N or mps"
    )
    if not available.get(name.split(":")[0]):
        raise no_such_device
    try:
        device = torch.device(name)
    except RuntimeError:  # cpu:abc, cpu:0:0, cuda:x
        raise no_such_device from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise no_such_device
    return device


def compile_or_not(function, net, inputs, amp):
    """torch.compile(function), compiled now on one forward and backward; where that fails (no C++
    compiler, no Triton, an unsupported platform), the function itself, with a note."""
    compiled = torch.compile(function)
    device = next(net.parameters()).device
    try:
        with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
            sum(compiled(net, *inputs)).backward()
    except RuntimeError as e:
        note(f"torch.compile failed ({first_line(e)}); training without it")
        return function
    finally:
        net.zero_grad(set_to_none=True)
    return compiled


def first_line(error):
    return str(error).strip().splitlines()[0][:200]


# ---- Progress: what the training loop records every log_every epochs


class Progress:
    """The run's epoch, time and history, and the bookkeeping the training loop does every log_every
    epochs: read the losses (the only time the host waits for the device), check them, log, write
    history.csv and the checkpoint, and stop when asked."""

    def __init__(self, cfg, stop):
        self.cfg, self.stop, self.out = cfg, stop, Path(cfg.output_dir)
        self.epoch, self.elapsed, self.history = 0, 0.0, []
        self.ours = False  # whether output_dir/checkpoint.pt is this run's (else it is kept aside)
        self.checkpoint_owed = False  # a checkpoint write failed: try again at the next log
        self.generator = None  # a folder's crops: its state is saved, so a resumed run is the same

    @cached_property
    def image_digest(self):
        """The training image's SHA-256, kept in the checkpoint: a changed image is not resumed."""
        return file_digest(Path(self.cfg.image_path))

    def start(self, net):
        self.last_good = snapshot(net)
        self.timer_epoch, self.timer = self.epoch, perf_counter()

    def is_due(self, epoch):
        """Whether this epoch logs, checkpoints or is the last (the end, or a stop request)."""
        self.stopping = self.stop.signum is not None  # read once: a later signal waits a step
        self.final = epoch == self.cfg.num_epochs or self.stopping
        self.logs = epoch % self.cfg.log_every == 0 or self.final
        self.saves = epoch % self.cfg.checkpoint_every == 0 or self.final
        return self.logs or self.saves

    def record(self, epoch, net, optimizer, scaler, losses):
        """Returns 'running', 'done', 'stopped' or 'diverged' (the last finite weights restored)."""
        values = [loss.item() for loss in losses]
        weights = snapshot(net)
        finite = torch.stack([w.isfinite().all() for w in weights.values()]).all()
        if not all(map(math.isfinite, values)) or not finite:
            net.load_state_dict(self.last_good)  # results come from the last weights known finite
            self.diverged_at = epoch
            return "diverged"
        self.last_good = weights
        now = perf_counter()
        rate = (epoch - self.timer_epoch) / (now - self.timer)
        self.epoch, self.elapsed = epoch, self.elapsed + now - self.timer
        self.timer_epoch, self.timer = epoch, now
        if self.logs:
            self.log(values, rate)
            self.try_to_write(write_history, self.out / "history.csv", self.history)
        if self.saves or self.checkpoint_owed:
            checkpoint = (self.out / CHECKPOINT, net, optimizer, scaler, self)
            self.checkpoint_owed = not self.try_to_write(save_checkpoint, *checkpoint)
        if self.stopping:
            return "stopped"
        return "done" if epoch == self.cfg.num_epochs else "running"

    def try_to_write(self, write, *args):
        """A write that fails mid-run (a briefly full disk, say) is a warning: training goes on
        and the next log or checkpoint epoch tries again. Only the final one is an error."""
        try:
            write(*args)
            return True
        except DeblurError as e:
            if self.final:
                raise
            warn(f"{e}; training goes on, and tries again at the next log or checkpoint")
            return False

    def log(self, values, rate):
        total, mse, perceptual = values
        psnr = psnr_from_mse(mse)
        remaining = (self.cfg.num_epochs - self.epoch) / rate
        self.history.append([self.epoch, total, mse, perceptual, psnr, self.elapsed])
        print(
            f"Epoch {self.epoch}, Total Loss: {total:.6f}, MSE: {mse:.6f}, "
            f"Perceptual: {perceptual:.6f}, PSNR: {psnr:.2f} dB, {rate:.1f} epochs/s, "
            f"elapsed {hms(self.elapsed)}, ETA {hms(remaining)}"
        )
        if len(self.history) == 1 and remaining > 3600:
            print(
                "A long run: Ctrl-C stops it cleanly, --resume continues. "
                f"A quick look: python Deblur.py {QUICK_LOOK}"
            )

    def save_history(self, results):
        """history.csv, and training_curves.png: the loss terms (log scale) and the PSNR against
        the epoch, with the blurred input's and Richardson-Lucy's PSNR as lines."""
        import matplotlib.pyplot as plt  # a third of a second to import: only when drawing

        write_history(self.out / "history.csv", self.history)
        columns = dict(zip(HISTORY_COLUMNS, np.array(self.history).reshape(-1, 6).T, strict=True))
        figure, (loss_ax, psnr_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name in ("total", "mse", "perceptual"):
            if (columns[name] > 0).any():  # an unused term (all 0) has no place on a log scale
                loss_ax.plot(columns["epoch"], columns[name], ".-", label=name)
        psnr_ax.plot(columns["epoch"], columns["psnr"], ".-", label="reconstruction")
        title = "PSNR of the training crops"  # a folder: a new batch every epoch
        if self.generator is None:  # one image: its baselines are on the same scale
            title = "PSNR against the original"
            for name, style in (("Blurred", "--"), ("Richardson–Lucy", ":")):
                if math.isfinite(results[name].psnr):
                    psnr_ax.axhline(results[name].psnr, color="grey", linestyle=style, label=name)
        loss_ax.set(yscale="log", xlabel="epoch", ylabel="loss", title="Loss")
        psnr_ax.set(xlabel="epoch", ylabel="PSNR (dB)", title=title)
        loss_ax.legend()
        psnr_ax.legend()
        save_figure(figure, self.out / "training_curves.png")


def psnr_from_mse(mse):
    """PSNR in dB of images in [0, 1] whose mean squared error is `mse`."""
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def snapshot(net):
    return {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}


def hms(seconds):
    return str(timedelta(seconds=round(seconds)))


# ---- Checkpoints


def save_checkpoint(path, net, optimizer, scaler, progress):
    """Atomic; a fresh run's first checkpoint moves an earlier run's aside (checkpoint.N.pt)."""
    state = {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "settings": vars(progress.cfg),
        "epoch": progress.epoch,
        "elapsed": progress.elapsed,
        "history": progress.history,
        "image_digest": progress.image_digest,
        "crops_generator": progress.generator.get_state() if progress.generator else None,
    }
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
        if path.exists() and not progress.ours:
            kept = first_free_name(path)
            os.replace(path, kept)
            note(
                f"a fresh run: the earlier {path.name} was kept as {kept.name} "
                f"(--resume {kept} continues it)"
            )
    progress.ours = True


def first_free_name(path):
    """path itself if free, else the first free name among path.1.suffix, path.2.suffix, ..."""
    candidate = path
    for number in count(1):
        if not candidate.exists():
            return candidate
        candidate = path.with_name(f"{path.stem}.{number}{path.suffix}")


def checkpoint_path(cfg):
    if cfg.resume in ("", "auto"):
        return Path(cfg.output_dir) / CHECKPOINT
    return Path(cfg.resume)


def read_checkpoint(cfg):
    """--resume's checkpoint, read as data only (a file that would run code is refused) and
    checked field by field, before anything is written."""
    path = checkpoint_path(cfg)
    if path.is_dir():
        raise DeblurError(
            f"--resume {path} is a folder; pass the checkpoint file in it, such as "
            f"{path / CHECKPOINT}"
        )
    if not path.is_file():
        raise DeblurError(
            f"no checkpoint at {path}; train one (a run without --resume), or pass --resume PATH"
        )
    not_ours = DeblurError(
        f"{path} is not a Deblur checkpoint, or is damaged; nothing in it was run"
    )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        checkpoint = {key: loaded[key] for key in CHECKPOINT_KEYS}
    except Exception:  # noqa: BLE001 (whatever torch.load or a missing key raises: not ours)
        raise not_ours from None
    if not well_formed(checkpoint):
        raise not_ours
    if not all(tensor.isfinite().all() for tensor in checkpoint["model"].values()):
        raise DeblurError(
            f"{path} holds NaN weights (its run diverged); use an earlier checkpoint or start "
            f"afresh"
        )
    checkpoint["image_digest"] = loaded.get("image_digest", "")
    checkpoint["crops_generator"] = loaded.get("crops_generator")
    return path, checkpoint


def well_formed(checkpoint):
    """Every field of the type a run wrote: a hand-made file fails here, not hours later."""
    history = checkpoint["history"]
    number = (int, float)
    return (
        all(
            isinstance(checkpoint[key], dict)
            for key in ("model", "optimizer", "scaler", "settings")
        )
        and all(torch.is_tensor(tensor) for tensor in checkpoint["model"].values())
        and type(checkpoint["epoch"]) is int
        and checkpoint["epoch"] >= 0
        and isinstance(checkpoint["elapsed"], number)
        and math.isfinite(checkpoint["elapsed"])
        and isinstance(history, list)
        and all(isinstance(row, list) and len(row) == len(HISTORY_COLUMNS) for row in history)
        and all(isinstance(value, number) for row in history for value in row)
    )


def load_weights(net, path, checkpoint):
    try:
        net.load_state_dict(checkpoint["model"])
    except RuntimeError:
        raise DeblurError(f"cannot use {path}: it holds a different network architecture") from None


def restore_training(cfg, path, checkpoint, net, optimizer, scaler, progress):
    """Continues a run (weights, optimizer, scaler, epoch, history), provided it solves the same
    problem on the same image."""
    saved = checkpoint["settings"]
    for name, old_default in PROBLEM.items():
        was = saved.get(name, old_default)
        if was != getattr(cfg, name):
            raise DeblurError(
                f"cannot resume {path}: it was trained with {name} = {was!r}, not "
                f"{getattr(cfg, name)!r}; use --{name} {was} or start afresh"
            )
    if checkpoint["image_digest"] not in ("", progress.image_digest):
        raise DeblurError(
            f"cannot resume {path}: {cfg.image_path} has changed since it was trained on; use "
            f"the original image, or start afresh"
        )
    load_weights(net, path, checkpoint)
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint["scaler"]:  # empty when saved by a disabled scaler (bfloat16 or float32 runs)
        scaler.load_state_dict(checkpoint["scaler"])
    for name, value in vars(cfg).items():
        if name not in ("resume", "output_dir") and saved.get(name, value) != value:
            note(f"resuming with {name} = {value!r} (the checkpoint used {saved[name]!r})")
    for group in optimizer.param_groups:
        group.update(lr=cfg.lr, weight_decay=cfg.weight_decay)
    if progress.generator and torch.is_tensor(checkpoint["crops_generator"]):
        progress.generator.set_state(checkpoint["crops_generator"])
    progress.epoch = checkpoint["epoch"]
    progress.elapsed = checkpoint["elapsed"]
    progress.history = checkpoint["history"]
    progress.ours = path.resolve() == (Path(cfg.output_dir) / CHECKPOINT).resolve()
    print(f"Resumed from {path} at epoch {progress.epoch}")
    if progress.epoch >= cfg.num_epochs:
        note(
            f"the checkpoint has already trained {progress.epoch} epochs; raise --num_epochs to "
            f"train further"
        )


def file_digest(path):
    """The SHA-256 of a file's bytes, or of a folder's files in name order."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()


def input_paths(cfg, unseen_sample=None):
    """{setting: path} of the images to test on: the training image (for a folder, the unseen
    sample instead) and the held-out one. image_path is made absolute, for the checkpoint."""
    if cfg.apply:
        return {"apply": resolve_image_path(cfg.apply)}
    inputs = {"image_path": resolve_image_path(cfg.image_path)}
    cfg.image_path = str(inputs["image_path"].resolve())
    if inputs["image_path"].is_dir():
        inputs = {"sample": resolve_image_path(unseen_sample)}
    if cfg.holdout_path:
        inputs["holdout_path"] = resolve_image_path(cfg.holdout_path)
        if inputs["holdout_path"].resolve() == Path(cfg.image_path):
            note("holdout_path is the training image itself: its row is not held out")
    return inputs


def space_needed(image_size):
    """Bytes a run writes at most: two checkpoints (during a save), and the outputs."""
    return 2 * CHECKPOINT_BYTES + 16 * image_size**2 + 2**24


def check_blur_fits(kernel, image, setting):
    """A blur wider than the image leaves nothing to learn from, and padding by it makes the
    baselines ask for gigabytes: refused, naming the limit."""
    width = kernel.shape[0]
    height, breadth = image.shape[-2:]
    if width > min(height, breadth):
        raise DeblurError(
            f"the {width}x{width}-pixel blur kernel is larger than the {breadth}x{height} image "
            f"of --{setting}; lower --blur_radius (a gaussian's kernel is about 6 x radius + 1 "
            f"pixels wide, the others 2 x radius + 1) or use a larger image (--image_size)"
        )


def print_plan(cfg, device, amp, perceptual, progress, baseline):
    """The run's plan; a run with nothing to learn (no MSE, and no VGG19 to compare with) is
    refused, since its loss would be 0 throughout."""
    if cfg.mse_weight == 0 and not perceptual:
        raise DeblurError(
            f"--mse_weight is 0 and the VGG19 weights are unavailable, so --perceptual_weight "
            f"{cfg.perceptual_weight} has nothing to compare: the loss would be 0 for the whole "
            f"run and nothing would be learned; set --mse_weight above 0"
        )
    psnr, ssim = baseline
    blur = f"{cfg.blur_kind} blur of radius {cfg.blur_radius}"
    print(f"Using device: {device}")
    if Path(cfg.image_path).is_dir():
        print(
            f"Images: random {cfg.crop_size}x{cfg.crop_size} crops of {cfg.image_path}, "
            f"{cfg.batch_size} a step, turned and mirrored at random, at their own size "
            f"(image_size does not apply); {blur}; lr warmed up over 100 steps, then a cosine "
            f"decay. The unseen sample, blurred: PSNR {psnr:.2f} dB, SSIM {ssim:.4f}"
        )
    else:
        print(
            f"Image: {cfg.image_path} at {cfg.image_size}x{cfg.image_size}, {blur}; blurred PSNR "
            f"{psnr:.2f} dB, SSIM {ssim:.4f}"
        )
    print(
        f"Training epochs {progress.epoch + 1} to {cfg.num_epochs}, AMP {str(amp)[6:]}, loss "
        f"{cfg.mse_weight}*MSE + {cfg.perceptual_weight if perceptual else 0}*VGG19 perceptual, "
        f"lr {cfg.lr}"
    )
    if amp == torch.float16 and device.type == "cpu":
        note("float16 on a CPU is emulated and far slower than bfloat16 (--amp_dtype auto)")


def report_outcome(outcome, progress, defaults):
    """Says how training ended and where the results are; returns the exit code."""
    cfg, stop = progress.cfg, progress.stop
    if outcome == "diverged":
        raise DeblurError(
            f"the loss became NaN or infinite by epoch {progress.diverged_at}, so training "
            f"stopped; results are from epoch {progress.epoch}'s weights, the last good ones, and "
            f"the last good checkpoint was kept. lr {cfg.lr} is probably too high: "
            f"try --lr {cfg.lr / 10:g}",
            1,
        )
    out = Path(cfg.output_dir).resolve()
    print(f"Results are in {out}: {', '.join(OUTPUTS)} and {CHECKPOINT}")
    if outcome == "stopped":
        print(
            f"Training stopped early at epoch {progress.epoch} of {cfg.num_epochs}. "
            f"To continue: {resume_command(cfg, defaults)}"
        )
    if stop.signum is None:
        return 0
    if outcome == "done":  # the signal came after training: the results were finished first
        print(f"{signal_name(stop.signum)} came after training had finished: all is saved")
    return 128 + stop.signum


class Result(NamedTuple):
    """One method's restoration of an image, and its PSNR and SSIM against the sharp one."""

    image: torch.Tensor
    psnr: float
    ssim: float


class Row(NamedTuple):
    """One image of the comparison: its label, the sharp original, and {method: Result}."""

    label: str
    sharp: torch.Tensor
    results: dict


def print_summary(rows, border):
    """A line per method: PSNR, SSIM and gain over the blurred input, for each image."""
    if rows[0].label:
        print("Neither image below was trained on: the network learned from the folder.")
    print(f"PSNR and SSIM leave out a {border}-pixel border, the blur kernel's half-width (less on")
    print("an image too small to keep SSIM's 11x11 window), as deblurring papers do:")
    for name in rows[0].results:
        described = []
        for row in rows:
            result = describe(row.results[name], row.results["Blurred"])
            described.append(row.label.lower() + result)
        print(f"{name + ':':17}" + " | ".join(described))


def describe(result, blurred):
    text = f"PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f}"
    if not math.isfinite(blurred.psnr):
        return text + " (no blur to undo)"
    if result is blurred:
        return text
    gain = result.psnr - blurred.psnr
    return text + f" (gain {gain:+.2f} dB, {result.ssim - blurred.ssim:+.4f} SSIM)"


def draw_row(row_axes, row, kernel, to_hwc):
    """One row of the comparison: the seed's panels (original, blurred, reconstructed), with
    Richardson-Lucy before the last, and the kernel drawn on the blurred one."""
    panels = {
        "Original Image": None,
        "Blurred Image": row.results["Blurred"],
        "Richardson–Lucy": row.results["Richardson–Lucy"],
        "Reconstructed Image": row.results["Network"],
    }
    for ax, (title, result) in zip(row_axes, panels.items(), strict=True):
        ax.axis("off")
        if result is None:
            ax.imshow(to_hwc(row.sharp))
            ax.set_title(row.label + title)
            continue
        ax.imshow(to_hwc(result.image))
        ax.set_title(f"{row.label}{title}\nPSNR {result.psnr:.2f} dB, SSIM {result.ssim:.3f}")
    inset = row_axes[1].inset_axes([0.72, 0.02, 0.26, 0.26], xticks=[], yticks=[])
    inset.imshow(kernel, cmap="magma")
    inset.set_title(f"kernel {kernel.shape[0]}x{kernel.shape[1]}", fontsize=8)


def resume_command(cfg, defaults):
    """The command that continues this run, pasted as printed: every setting that differs from
    the settings block, so that the problem matches, quoted for the shell."""
    script = sys.argv[0] if sys.argv[0].endswith("Deblur.py") else "Deblur.py"
    words = ["python", script, "--resume"]
    for name, value in vars(cfg).items():
        if name not in ("resume", "apply") and value != defaults[name]:
            words += [f"--{name}", str(value)]
    return shlex.join(words)


# ---- Safe writes and the output-dir lock


@contextmanager
def locked_output_dir(out, inputs, needed):
    """Creates `out`, checks it can hold the results without overwriting an input, and holds an
    exclusive lock on it while the body runs: a second run in the same folder is refused, naming
    this one's PID. Temporary files that killed runs left behind are removed."""
    lock_path = out / ".deblur.lock"
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Never through a symbolic link: that would truncate whatever file it points to
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DeblurError(
                f"{lock_path} is a symbolic link; remove it (Deblur writes its PID there)"
            ) from None
        raise DeblurError(
            f"cannot create files in output_dir {out} ({e.strerror}); use another --output_dir"
        ) from None
    with open(descriptor, "r+", encoding="utf-8") as lock:
        free = shutil.disk_usage(out).free
        if free < needed:
            raise DeblurError(
                f"output_dir {out} has only {free // 2**20} MB free; this run needs about "
                f"{needed // 2**20 + 1} MB (free some space or pass another --output_dir)"
            )
        outputs = {(out / name).resolve() for name in (*OUTPUTS, CHECKPOINT)}
        for setting, path in inputs.items():
            if path.resolve() in outputs:
                raise DeblurError(
                    f"--{setting} {path} has the name of an output in output_dir {out} and would "
                    f"be overwritten; rename or move it, or pass another --output_dir"
                )
        take_lock(lock, out)
        remove_stale_partials(out)
        yield


def take_lock(lock, out):
    try:
        if os.name == "nt":
            import msvcrt

            lock.seek(2**30)  # a byte far past the PID, which another run must still read
            msvcrt.locking(lock.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        raise DeblurError(
            f"another Deblur run (PID {lock.read().strip() or '?'}) is using output_dir {out}; "
            f"wait for it to end, or pass another --output_dir"
        ) from None
    lock.seek(0)
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()


def remove_stale_partials(out):
    """With the lock held no other run writes here: a .NAME.PID.partial file of a process that
    is gone is what a killed run left half-written."""
    removed = 0
    for path in out.glob(".*.partial"):
        pid = path.name.split(".")[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            removed += path.stat().st_size
            path.unlink()
    if removed:
        note(f"removed the temporary files of killed runs from {out} ({removed / 2**20:.1f} MB)")


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, under another user
        return True
    return True


@contextmanager
def atomic_path(path):
    """Yields a temporary path, unique to this process, that replaces `path` only once fully
    written. Its name is cut short enough for any file system."""
    temporary = path.with_name(f".{path.name[:200]}.{os.getpid()}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(e, "strerror", None) or first_line(e)
        raise DeblurError(f"could not write {path}: {reason}; nothing was replaced", 1) from None
    finally:
        with suppress(OSError):  # never hide the error above under one about the cleanup
            temporary.unlink(missing_ok=True)


def save_image(image, path, format):
    with atomic_path(path) as temporary:
        image.save(temporary, format=format, quality=95)


def save_figure(figure, path):
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")


def write_history(path, history):
    lines = [",".join(HISTORY_COLUMNS)]
    for row in history:
        lines.append(",".join(map(str, row)))
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---- --apply's output and progress


@contextmanager
def photo_output(cfg, photo_path, image):
    """--apply's output: yields output_dir/<name>_deblurred.png, or the first free
    <name>_deblurred.N.png (a file the user has is never replaced), with output_dir locked and
    room for a PNG of the photo's raw size; says where it went."""
    out = Path(cfg.output_dir)
    height, width = image.shape[-2:]
    with locked_output_dir(out, {}, 4 * width * height + 2**20):
        wanted = out / f"{photo_path.stem[:200]}_deblurred.png"
        target = first_free_name(wanted)
        if target != wanted:
            note(f"{wanted.name} exists already and is kept; writing {target.name}")
        yield target
    print(
        f"Deblurred {photo_path} at its own size, {width}x{height} (the network is "
        f"convolutional, so any size works; it undoes blur of the pixel size it was trained "
        f"on): {target}"
    )


def in_strips(starts, stop, photo_path, image):
    """Yields each strip's first row; says the size and, after the first strip, the time it will
    take, then how far it is every 10 seconds. A stop request ends it between strips."""
    height, width = image.shape[-2:]
    print(f"Deblurring {photo_path}: {width}x{height} pixels, in {len(starts)} strips")
    began = reported = perf_counter()
    for done, start in enumerate(starts):
        if stop.signum is not None:
            raise Stopped(f"{signal_name(stop.signum)}: stopped; nothing was written", stop.signum)
        yield start
        now = perf_counter()
        left = (now - began) / (done + 1) * (len(starts) - done - 1)
        if done == 0 and left > 10:
            print(f"The first strip took {now - began:.1f} s: about {hms(left)} to go")
        elif now - reported > 10 and done + 1 < len(starts):
            print(f"{done + 1} of {len(starts)} strips, about {hms(left)} to go")
            reported = now


# ---- Signals, standard output and error reporting


class Stopped(Exception):
    """A stop request that ends the job before it is done; exit code 128 + the signal."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


def signal_name(signum):
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def stop_after_this_step(stop):
    """A signal handler: the first Ctrl-C, SIGTERM or SIGHUP asks the job to stop at the next safe
    point (after this training step, between two strips); a second one quits at once."""

    def request(signum, frame):
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum
        print(f"\n{signal_name(signum)}: stopping safely (again: quit at once)", file=sys.stderr)

    return request


class Unfailing(io.TextIOBase):
    """stdout or stderr that never fails the run: when its reader goes away (a closed pipe, a
    full disk, a closed descriptor), the run goes on, saying so once on the other stream, and
    what it prints is dropped."""

    def __init__(self, stream, descriptor, other):
        self.stream, self.descriptor, self.other = stream, descriptor, other

    def write(self, text):
        self.guarded("write", text)
        if "\n" in text:  # progress shows at once, even through a pipe
            self.flush()
        return len(text)

    def flush(self):
        self.guarded("flush")

    def guarded(self, method, *args):
        if self.stream is None:
            return
        try:
            getattr(self.stream, method)(*args)
        except (OSError, ValueError) as e:  # ValueError: the stream was closed
            self.stream = None
            point_at_devnull(self.descriptor)
            with suppress(OSError, ValueError):
                print(f"Note: output lost ({e}); the run goes on and saves", file=self.other)


def point_at_devnull(descriptor):
    """A closed or broken descriptor 1 or 2 gets /dev/null, so that nothing else (a checkpoint
    opened later, say) takes its number and receives what was meant for the screen."""
    with suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        if null != descriptor:
            os.dup2(null, descriptor)
            os.close(null)


@contextmanager
def unfailing_output():
    previous = sys.stdout, sys.stderr
    for descriptor, stream in ((1, sys.stdout), (2, sys.stderr)):
        if stream is None:  # started with the descriptor closed (>&-)
            point_at_devnull(descriptor)
    sys.stdout = Unfailing(previous[0], 1, previous[1])
    sys.stderr = Unfailing(previous[1], 2, previous[0])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = previous


def run_job(train, apply, settings, script, argv):
    """Parses the settings and runs train(cfg, stop), or apply(cfg, stop) for --apply, with stop
    requests caught; returns the exit code. Every failure the user can act on ends in one line on
    stderr, without a traceback."""
    stop = argparse.Namespace(signum=None)
    cfg = argparse.Namespace(image_size=settings["image_size"])
    handler = stop_after_this_step(stop)
    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    with unfailing_output():
        try:
            cfg = parse_settings(settings, script, argv)
            return apply(cfg, stop) if cfg.apply else train(cfg, stop)
        except DeblurError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        except Stopped as e:
            print(e, file=sys.stderr)
            return 128 + e.signum
        except KeyboardInterrupt:
            print("Interrupted.", file=sys.stderr)
            return 128 + (stop.signum or signal.SIGINT)
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            size = cfg.image_size
            advice = f"at image_size {size}; try --image_size {size // 2}"
            if Path(getattr(cfg, "image_path", "")).is_dir():
                advice = f"with --batch_size {cfg.batch_size}; try a smaller --batch_size"
            print(f"error: out of memory {advice}", file=sys.stderr)
            return 1
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


def is_out_of_memory(error):
    # PyTorch's CPU allocator says so only in its message: a plain RuntimeError
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return "can't allocate memory" in str(error)
