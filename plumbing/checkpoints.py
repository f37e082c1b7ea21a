"""Checkpoints: writing one without losing the last, reading one as data only, checking every field,
and continuing a run from it. What the network is, is Deblur.py's.
"""

import math
import os
from pathlib import Path
from types import SimpleNamespace

import torch

from plumbing.errors import DeblurError, note
from plumbing.files import CHECKPOINT, atomic_path, first_free_name, looked_up

CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "settings", "epoch", "elapsed", "history")
GENERATOR = torch.Generator().get_state().shape  # the state of a folder's crops' generator
HISTORY_COLUMNS = ("epoch", "total", "mse", "perceptual", "psnr", "seconds")
# The settings a resumed run must share with its checkpoint: the problem it learned to solve
PROBLEM = ("image_path", "image_size", "blur_radius", "blur_kind", "blur_angle")
PROBLEM += ("model", "restore_from")
# What a checkpoint written before a setting existed was trained with
BEFORE_IT_EXISTED = {
    "blur_kind": "gaussian",
    "blur_angle": 0.0,
    "model": "deblurnet",
    "restore_from": "blurred",
}


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
        "frames": progress.frames,
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


def checkpoint_path(cfg):
    if cfg.resume in ("", "auto"):
        return looked_up(Path(cfg.output_dir) / CHECKPOINT, "output_dir")
    return looked_up(Path(cfg.resume), "resume")


def read_checkpoint(cfg):
    """--resume's checkpoint, read as data only (a file that would run code is refused) and
    checked field by field, before anything is written; returns (path, checkpoint)."""
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
    checkpoint["image_digest"] = loaded.get("image_digest", "")
    checkpoint["crops_generator"] = loaded.get("crops_generator")
    checkpoint["frames"] = loaded.get("frames", [])  # none in checkpoints older than them
    if not well_formed(checkpoint):
        raise not_ours
    if not all(tensor.isfinite().all() for tensor in checkpoint["model"].values()):
        raise DeblurError(
            f"{path} holds NaN weights (its run diverged); use an earlier checkpoint or start "
            f"afresh"
        )
    return path, checkpoint


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
        and (generator is None or (torch.is_tensor(generator) and generator.shape == GENERATOR))
        and type(checkpoint["epoch"]) is int
        and checkpoint["epoch"] >= 0
        and isinstance(checkpoint["elapsed"], number)
        and math.isfinite(checkpoint["elapsed"])
        and isinstance(history, list)
        and all(isinstance(row, list) and len(row) == len(HISTORY_COLUMNS) for row in history)
        and all(isinstance(value, number) for row in history for value in row)
        and isinstance(checkpoint["frames"], list)
        and all(well_formed_frame(frame) for frame in checkpoint["frames"])
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
    """Continues a run (weights, optimizer, scaler, epoch, history), provided it solves the same
    problem on the same image."""
    saved = checkpoint["settings"]
    trained = trained_settings(checkpoint)
    for name in PROBLEM:
        was = getattr(trained, name)
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
        group.update(lr=cfg.lr, weight_decay=cfg.weight_decay)
    if progress.generator and torch.is_tensor(checkpoint["crops_generator"]):
        progress.generator.set_state(checkpoint["crops_generator"])
    progress.epoch = checkpoint["epoch"]
    progress.elapsed = checkpoint["elapsed"]
    progress.history = checkpoint["history"]
    progress.frames = checkpoint["frames"]
    progress.ours = path.resolve() == (Path(cfg.output_dir) / CHECKPOINT).resolve()
    print(f"Resumed from {path} at epoch {progress.epoch}")
    if progress.epoch >= cfg.num_epochs:
        note(
            f"the checkpoint has already trained {progress.epoch} epochs; raise --num_epochs to "
            f"train further"
        )


def trained_settings(checkpoint):
    """The problem a checkpoint was trained on: its PROBLEM settings, by name."""
    saved = checkpoint["settings"]
    values = {}
    for name in PROBLEM:
        values[name] = saved.get(name, BEFORE_IT_EXISTED.get(name))
    return SimpleNamespace(**values)
