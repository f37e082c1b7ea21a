"""Deblur's plumbing, kept out of Deblur.py so that the method reads on its own.

The command line built from Deblur.py's settings block, image reading and input checks, checkpoints,
safe writes, the output-dir lock, signals, and the error type with its reporting. Nothing here is
needed to understand how the network learns to deblur.
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
from itertools import count
from pathlib import Path
from time import perf_counter

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

CHECKPOINT = "checkpoint.pt"
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
POSITIVE = ("num_epochs", "lr", "max_grad_norm", "log_every", "checkpoint_every")
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
    return cfg


def check_settings(cfg):
    """Refuses, by name, a value no run could use."""
    for name, value in vars(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            refuse(name, value, "must be a finite number")
    if not 16 <= cfg.image_size <= 4096:
        refuse("image_size", cfg.image_size, "must be between 16 and 4096 pixels")
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
    if not available.get(name.split(":")[0]):
        raise DeblurError(
            f"--device {name!r}: no such device on this machine; use auto, cpu, cuda, cuda:N or mps"
        )
    return torch.device(name)


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
            write_history(self.out / "history.csv", self.history)
        if self.saves:
            save_checkpoint(self.out / CHECKPOINT, net, optimizer, scaler, self)
        if self.stopping:
            return "stopped"
        return "done" if epoch == self.cfg.num_epochs else "running"

    def log(self, values, rate):
        total, mse, perceptual = values
        psnr = 10 * math.log10(1 / mse) if mse > 0 else math.inf
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
        write_history(self.out / "history.csv", self.history)
        columns = dict(zip(HISTORY_COLUMNS, np.array(self.history).reshape(-1, 6).T, strict=True))
        figure, (loss_ax, psnr_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name in ("total", "mse", "perceptual"):
            if (columns[name] > 0).any():  # an unused term (all 0) has no place on a log scale
                loss_ax.plot(columns["epoch"], columns[name], ".-", label=name)
        psnr_ax.plot(columns["epoch"], columns["psnr"], ".-", label="reconstruction")
        for name, style in (("Blurred", "--"), ("Richardson–Lucy", ":")):
            if math.isfinite(results[name].psnr):
                psnr_ax.axhline(results[name].psnr, color="grey", linestyle=style, label=name)
        loss_ax.set(yscale="log", xlabel="epoch", ylabel="loss", title="Loss")
        psnr_ax.set(xlabel="epoch", ylabel="PSNR (dB)", title="PSNR against the original")
        loss_ax.legend()
        psnr_ax.legend()
        save_figure(figure, self.out / "training_curves.png")


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
    for number in count(1):
        candidate = path.with_name(f"{path.stem}.{number}{path.suffix}")
        if not candidate.exists():
            return candidate


def checkpoint_path(cfg):
    if cfg.resume in ("", "auto"):
        return Path(cfg.output_dir) / CHECKPOINT
    return Path(cfg.resume)


def load_checkpoint(cfg, net):
    """Reads --resume's checkpoint as data only (a file that would run code is refused) and loads
    its weights into `net`."""
    path = checkpoint_path(cfg)
    if not path.is_file():
        raise DeblurError(
            f"no checkpoint at {path}; train one (a run without --resume), or pass --resume PATH"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        checkpoint = {key: loaded[key] for key in CHECKPOINT_KEYS}
    except Exception:  # noqa: BLE001 (whatever torch.load or a missing key raises: not ours)
        raise DeblurError(
            f"{path} is not a Deblur checkpoint, or is damaged; nothing in it was run"
        ) from None
    if any(torch.is_tensor(t) and not t.isfinite().all() for t in checkpoint["model"].values()):
        raise DeblurError(
            f"{path} holds NaN weights (its run diverged); use an earlier checkpoint or start "
            f"afresh"
        )
    try:
        net.load_state_dict(checkpoint["model"])
    except RuntimeError:
        raise DeblurError(f"cannot use {path}: it holds a different network architecture") from None
    return path, checkpoint


def restore_training(cfg, path, checkpoint, optimizer, scaler, progress):
    """Continues a run (optimizer, scaler, epoch, history), provided it solves the same problem."""
    saved = checkpoint["settings"]
    for name, old_default in PROBLEM.items():
        was = saved.get(name, old_default)
        if was != getattr(cfg, name):
            raise DeblurError(
                f"cannot resume {path}: it was trained with {name} = {was!r}, not "
                f"{getattr(cfg, name)!r}; use --{name} {was} or start afresh"
            )
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint["scaler"]:  # empty when saved by a disabled scaler (bfloat16 or float32 runs)
        scaler.load_state_dict(checkpoint["scaler"])
    for name, value in vars(cfg).items():
        if name not in ("resume", "output_dir") and saved.get(name, value) != value:
            note(f"resuming with {name} = {value!r} (the checkpoint used {saved[name]!r})")
    for group in optimizer.param_groups:
        group.update(lr=cfg.lr, weight_decay=cfg.weight_decay)
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


def input_paths(cfg):
    """{setting: path} of the images to read; image_path is made absolute, for the checkpoint."""
    inputs = {"image_path": resolve_image_path(cfg.image_path)}
    if cfg.holdout_path:
        inputs["holdout_path"] = resolve_image_path(cfg.holdout_path)
    cfg.image_path = str(inputs["image_path"].resolve())
    return inputs


def space_needed(image_size):
    """Bytes a run writes at most: two checkpoints (during a save), and the outputs."""
    return 2 * CHECKPOINT_BYTES + 16 * image_size**2 + 2**24


def print_plan(cfg, device, amp, perceptual, progress, baseline):
    psnr, ssim = baseline
    print(f"Using device: {device}")
    print(
        f"Image: {cfg.image_path} at {cfg.image_size}x{cfg.image_size}, {cfg.blur_kind} blur of "
        f"radius {cfg.blur_radius}; blurred PSNR {psnr:.2f} dB, SSIM {ssim:.4f}"
    )
    print(
        f"Training epochs {progress.epoch + 1} to {cfg.num_epochs}, AMP {str(amp)[6:]}, loss "
        f"{cfg.mse_weight}*MSE + {cfg.perceptual_weight if perceptual else 0}*VGG19 perceptual, "
        f"lr {cfg.lr}"
    )
    if amp == torch.float16 and device.type == "cpu":
        note("float16 on a CPU is emulated and far slower than bfloat16 (--amp_dtype auto)")


def report_outcome(cfg, outcome, progress, stop):
    """Says how training ended and where the results are; returns the exit code."""
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
    if outcome != "stopped":
        return 0
    print(
        f"Training stopped early at epoch {progress.epoch} of {cfg.num_epochs}. "
        f"To continue: {resume_command(cfg)}"
    )
    return 128 + stop.signum


def print_summary(rows):
    """A line per method: PSNR, SSIM and gain over the blurred input, for each image."""
    for name in rows[0].results:
        described = [describe(row.results[name], row.results["Blurred"]) for row in rows]
        print(f"{name + ':':17}" + " | held out: ".join(described))


def describe(result, blurred):
    text = f"PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f}"
    if not math.isfinite(blurred.psnr):
        return text + " (no blur to undo)"
    if result is blurred:
        return text
    gain = result.psnr - blurred.psnr
    return text + f" (gain {gain:+.2f} dB, {result.ssim - blurred.ssim:+.4f} SSIM)"


def resume_command(cfg):
    return "python Deblur.py --resume" + (
        f" --output_dir {cfg.output_dir}" if cfg.output_dir != "." else ""
    )


# ---- Safe writes and the output-dir lock


@contextmanager
def locked_output_dir(out, inputs, needed):
    """Creates `out`, checks it can hold the results without overwriting an input, and holds an
    exclusive lock on it while the body runs: a second run in the same folder is refused, naming
    this one's PID."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".deblur.lock", "a+", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise DeblurError(
            f"cannot create files in output_dir {out} ({e.strerror}); use another --output_dir"
        ) from None
    with lock:
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
        yield


def take_lock(lock, out):
    try:
        if os.name == "nt":
            import msvcrt

            lock.seek(
                2**30
            )  # a byte far past the PID, which another run must still be able to read
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
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()


@contextmanager
def atomic_path(path):
    """Yields a temporary path, unique to this process, that replaces `path` only once fully
    written."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(e, "strerror", None) or first_line(e)
        raise DeblurError(f"could not write {path}: {reason}; nothing was replaced", 1) from None
    finally:
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


# ---- Signals and error reporting


def stop_after_this_step(stop):
    """A signal handler: the first Ctrl-C, SIGTERM or SIGHUP asks training to stop and save; a
    second one quits at once."""

    def request(signum, frame):
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(
            f"\n{name}: stopping after this step and saving (again: quit at once)", file=sys.stderr
        )

    return request


def run_job(train, apply, settings, script, argv):
    """Parses the settings and runs train(cfg, stop), or apply(cfg, stop) for --apply, with stop
    requests caught; returns the exit code. Every failure the user can act on ends in one line on
    stderr, without a traceback."""
    stop = argparse.Namespace(signum=None)
    cfg = argparse.Namespace(image_size=settings["image_size"])
    previous = {
        number: signal.signal(number, stop_after_this_step(stop)) for number in STOP_SIGNALS
    }
    line_buffered_stdout()
    try:
        cfg = parse_settings(settings, script, argv)
        return apply(cfg, stop) if cfg.apply else train(cfg, stop)
    except DeblurError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 128 + (stop.signum or signal.SIGINT)
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        size = cfg.image_size
        print(
            f"error: out of memory at image_size {size}; try --image_size {size // 2}",
            file=sys.stderr,
        )
        return 1
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def line_buffered_stdout():
    """Progress shows at once, even through a pipe."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)


def is_out_of_memory(error):
    # PyTorch's CPU allocator says so only in its message: a plain RuntimeError
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return "can't allocate memory" in str(error)
