"""Checkpoints: writing one without losing the last, reading one as data only, checking every field,
and continuing a run from it. What the network is, is Deblur.py's.
"""

import math
import os
from pathlib import Path
from types import SimpleNamespace

import torch

from plumbing.command_line import BLUR_SETTINGS, DERIVED
from plumbing.errors import DeblurError, note
from plumbing.files import CHECKPOINT, atomic_path, file_digest, first_free_name, name_checked

CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "settings", "epoch", "elapsed", "history")
GENERATOR_STATE_SHAPE = (
    torch.Generator().get_state().shape
)  # the state of a folder's crops' generator
HISTORY_COLUMNS = ("epoch", "total", "mse", "perceptual", "psnr", "seconds")
# The settings a resumed run must share with its checkpoint: the problem it learned to solve
PROBLEM = ("image_path", "image_size", "blur_radius", "blur_kind", "blur_angle", "noise_level")
PROBLEM += ("model", "restore_from")
# What a checkpoint written before a setting existed was trained with (its network and first
# step are told by its weights: trained_settings)
BEFORE_IT_EXISTED = {"blur_kind": "gaussian", "blur_angle": 0.0, "noise_level": 0.0}
# The numbers a run can have trained with, as the command line checks them
RANGES = {"image_size": (16, 4096), "blur_radius": (0, 682), "noise_level": (0, 64)}
RANGES["blur_angle"] = (-math.inf, math.inf)


def save_checkpoint(path, net, optimizer, scaler, progress):
    """Atomic; a fresh run's first checkpoint moves an earlier run's aside (checkpoint.N.pt)."""
    settings = {name: value for name, value in vars(progress.cfg).items() if name not in DERIVED}
    state = {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "settings": settings,
        **progress.state_dict(),
    }
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
        if path.exists() and not progress.owns_checkpoint:
            kept = first_free_name(path)
            os.replace(path, kept)
            note(
                f"a fresh run: the earlier {path.name} was kept as {kept.name} "
                f"(--resume {kept} continues it)"
            )
    progress.owns_checkpoint = True


def checkpoint_path(cfg):
    if cfg.resume in ("", "auto"):
        return name_checked(Path(cfg.output_dir) / CHECKPOINT, "output_dir")
    return name_checked(Path(cfg.resume), "resume")


def read_checkpoint(cfg, choices):
    """--resume's checkpoint, read as data only (a file that would run code is refused) and
    checked field by field, its settings as the command line's are (`choices`: the values a
    setting may take), before anything is written; returns (path, checkpoint, the problem it was
    trained on). For training, a checkpoint of another problem is refused here, by name."""
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
    checkpoint["image_digest"] = loaded.get("image_digest", "")  # before photos were listed
    checkpoint["photos"] = loaded.get("photos")  # {name: SHA-256}
    checkpoint["crops_generator"] = loaded.get("crops_generator")
    checkpoint["crops_generators"] = loaded.get("crops_generators", [])  # torchrun's processes'
    checkpoint["frames"] = loaded.get("frames", [])  # none in checkpoints older than them
    if not well_formed(checkpoint):
        raise not_ours
    if not all(tensor.isfinite().all() for tensor in checkpoint["model"].values()):
        raise DeblurError(
            f"{path} holds NaN weights (its run diverged); use an earlier checkpoint or start "
            f"afresh"
        )
    trained = trained_settings(checkpoint, path, choices)
    for name in PROBLEM if not cfg.apply else ():
        was = getattr(trained, name)
        if was != getattr(cfg, name):
            raise DeblurError(
                f"cannot resume {path}: it was trained with {name} = {was!r}, not "
                f"{getattr(cfg, name)!r}; use --{name} {was} or start afresh"
            )
    return path, checkpoint, trained


def check_same_images(cfg, path, checkpoint, photos):
    """A checkpoint resumes on the image it was trained on, as its SHA-256 says; a folder may have
    gained, lost or changed photos since: said, and training goes on with the folder as it is."""
    was = checkpoint["photos"]
    now = {photo.path.name: photo.digest for photo in photos}
    if was is None:  # written before checkpoints listed their photos: one digest of them all
        same = checkpoint["image_digest"] in ("", file_digest(photo.path for photo in photos))
        was = now if same else {}
    if not cfg.folder and set(was.values()) != set(now.values()):
        raise DeblurError(
            f"cannot resume {path}: {cfg.image_path} has changed since it was trained on; use "
            f"the original image, or start afresh"
        )
    gained = sorted(now.keys() - was.keys())
    lost = sorted(was.keys() - now.keys())
    changed = sorted(name for name in now.keys() & was.keys() if now[name] != was[name])
    changes = [
        f"{len(names)} {how} ({', '.join(names[:3])}{', ...' * (len(names) > 3)})"
        for how, names in (("new", gained), ("gone", lost), ("changed", changed))
        if names
    ]
    if changes:
        note(
            f"{cfg.image_path} has photos {'; '.join(changes)} since {path.name} was saved; "
            f"training goes on with the folder as it is now"
        )


def well_formed(checkpoint):
    """Every field of the type a run wrote: a hand-made file fails here, not hours later."""
    history = checkpoint["history"]
    generator = checkpoint["crops_generator"]
    number = (int, float)
    return (
        all(
            isinstance(checkpoint[key], dict)
            for key in ("model", "optimizer", "scaler", "settings")
        )
        and all(torch.is_tensor(tensor) for tensor in checkpoint["model"].values())
        and isinstance(checkpoint["optimizer"].get("state"), dict)
        and isinstance(checkpoint["optimizer"].get("param_groups"), list)
        and (generator is None or generator_state(generator))
        and isinstance(checkpoint["crops_generators"], list)
        and all(generator_state(state) for state in checkpoint["crops_generators"])
        and type(checkpoint["epoch"]) is int
        and checkpoint["epoch"] >= 0
        and isinstance(checkpoint["elapsed"], number)
        and math.isfinite(checkpoint["elapsed"])
        and isinstance(history, list)
        and all(isinstance(row, list) and len(row) == len(HISTORY_COLUMNS) for row in history)
        and all(isinstance(value, number) for row in history for value in row)
        and (checkpoint["photos"] is None or well_formed_photos(checkpoint["photos"]))
        and isinstance(checkpoint["frames"], list)
        and all(well_formed_frame(frame) for frame in checkpoint["frames"])
    )


def generator_state(state):
    return torch.is_tensor(state) and state.shape == GENERATOR_STATE_SHAPE


def well_formed_photos(photos):
    """{name: SHA-256}, as Progress.state_dict lists them."""
    return isinstance(photos, dict) and all(
        isinstance(name, str) and isinstance(digest, str) for name, digest in photos.items()
    )


def well_formed_frame(frame):
    """[epoch, PSNR, an 8-bit (H, W, 3) image], as Progress.take_frame makes them."""
    if not (isinstance(frame, list) and len(frame) == 3):
        return False
    epoch, psnr, image = frame
    return (
        type(epoch) is int
        and isinstance(psnr, (int, float))
        and torch.is_tensor(image)
        and image.dtype == torch.uint8
        and image.dim() == 3
        and image.shape[-1] == 3
    )


def load_weights(net, path, checkpoint):
    try:
        net.load_state_dict(checkpoint["model"])
    except RuntimeError:
        raise DeblurError(f"cannot use {path}: it holds a different network architecture") from None


def restore_training(cfg, path, checkpoint, net, optimizer, scaler, progress):
    """Continues a run (weights, optimizer, scaler, epoch, history) from a checkpoint that
    read_checkpoint and check_same_images have found to solve the same problem."""
    saved = checkpoint["settings"]
    load_weights(net, path, checkpoint)
    # Which of Adam's kernels run is this device's, not the saving one's: a checkpoint from a Mac
    # (no fused Adam) resumed on CUDA in float16 would hand a GradScaler's state to unfused Adam
    kernels = {name: optimizer.param_groups[0][name] for name in ("fused", "foreach")}
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError, RuntimeError):  # a hand-made optimizer state of another shape
        raise DeblurError(f"{path} is not a Deblur checkpoint, or is damaged") from None
    if checkpoint["scaler"]:  # empty when saved by a disabled scaler (bfloat16 or float32 runs)
        scaler.load_state_dict(checkpoint["scaler"])
    for name, value in vars(cfg).items():
        if name not in ("resume", "output_dir") and saved.get(name, value) != value:
            note(f"resuming with {name} = {value!r} (the checkpoint used {saved[name]!r})")
    for group in optimizer.param_groups:
        group.update(lr=cfg.lr, weight_decay=cfg.weight_decay, **kernels)
    progress.load_state_dict(checkpoint)
    progress.owns_checkpoint = path.resolve() == (Path(cfg.output_dir) / CHECKPOINT).resolve()
    print(f"Resumed from {path} at epoch {progress.epoch}")
    if progress.epoch >= cfg.num_epochs:
        note(
            f"the checkpoint has already trained {progress.epoch} epochs; raise --num_epochs to "
            f"train further"
        )


def trained_settings(checkpoint, path, choices):
    """The problem a checkpoint was trained on: its PROBLEM settings, by name, each checked as the
    command line checks them (a hand-edited file fails here, in one line). A checkpoint that does
    not say its network or first step is recognised by its weights."""
    saved = checkpoint["settings"]
    if saved.get("restore_from") == "wiener" and "noise_level" not in saved:
        raise DeblurError(
            f"{path} was trained after an earlier Wiener step, which Deblur no longer computes "
            f"(its balance now follows the noise and the kernel); train it afresh"
        )
    first = checkpoint["model"].get("down1.0.weight", checkpoint["model"].get("main.0.weight"))
    told = {
        "model": "unet" if "down1.0.weight" in checkpoint["model"] else "deblurnet",
        "restore_from": "wiener" if first is not None and first.shape[1] == 5 else "blurred",
    }
    values = {}
    for name in PROBLEM:
        values[name] = saved.get(name, BEFORE_IT_EXISTED.get(name, told.get(name)))
        if not allowed(name, values[name], choices):
            raise DeblurError(
                f"{path} says it was trained with {name} = {values[name]!r}, which no run can "
                f"be; it is damaged or hand-edited: use another checkpoint, or train afresh"
            )
    return SimpleNamespace(**values)


def allowed(name, value, choices):
    """Whether a checkpoint's setting is one a run could have had."""
    if name in choices:
        return isinstance(value, str) and value in choices[name]
    if name == "image_path":
        return isinstance(value, str)
    low, high = RANGES[name]
    number = isinstance(value, float) or (type(value) is int and name == "image_size")
    return number and math.isfinite(value) and low <= value <= high


def blur_to_undo(cfg, given, trained, path):
    """What --apply undoes with a checkpoint: the blur a fixed-blur one was trained on, as
    (kind, radius, angle), a blur it was not trained on refused; for one trained on any blur, the
    photo's, as the user names it: "measured" (--kernel) or (kind, radius, angle); for a blind
    one, None. `given`: the settings the command line names."""
    named = given & set(BLUR_SETTINGS)
    if trained.blur_kind != "random":
        own = f"{trained.blur_kind} blur of radius {trained.blur_radius}"
        if cfg.kernel or any(getattr(cfg, name) != getattr(trained, name) for name in named):
            raise DeblurError(
                f"{path} undoes only {own}, the blur it was trained on; for another, train one "
                f"for any blur: python Deblur.py --image_path data/train --blur_kind random "
                f"--restore_from wiener (see the README)"
            )
        note(f"{path.name} undoes {own}, the blur it was trained on")
        return trained.blur_kind, trained.blur_radius, trained.blur_angle
    if trained.restore_from == "blurred":
        if cfg.kernel or named:
            raise DeblurError(f"{path} is blind: it finds the blur itself; drop --kernel, --blur_*")
        return None
    if cfg.kernel:
        return "measured"
    if named and cfg.blur_kind != "random":
        return cfg.blur_kind, cfg.blur_radius, cfg.blur_angle
    raise DeblurError(
        f"{path} undoes any blur, but must be told the photo's: pass --kernel PSF.png (its "
        f"measured kernel), or --blur_kind motion --blur_radius 6 --blur_angle 20 (or gaussian, "
        f"defocus, box)"
    )
