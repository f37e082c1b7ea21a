"""Checkpoints: writing one without losing the last (Keeper), reading one as data only, checking
every field (their format: checkpoint_fields.py), and continuing a run from it. What the network
is, is Deblur.py's.
"""

import os
import warnings
from pathlib import Path

import torch

from plumbing.checkpoint_fields import (
    NEVER_TRAINED,
    SHIPPED_FIELDS,
    checkpoint_state,
    trained_settings,
    well_formed,
)
from plumbing.command_line import BLUR_SETTINGS
from plumbing.errors import DeblurError, note
from plumbing.files import CHECKPOINT, atomic_path, first_free_name, name_checked
from plumbing.processes import check_replicas_agree, gathered, itself
from plumbing.progress import try_to_write
from plumbing.settings import problem_of

SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "model" / "any_blur.pt"


class Keeper:
    """The run's checkpoint, output_dir/checkpoint.pt: written on time without losing the last
    (atomic; a fresh run's first moves an earlier run's aside, as checkpoint.N.pt), a failed write
    mid-run tried again at the next log. Under torchrun every process gathers what it needs, the
    first alone writes. `discriminator`: the adversarial term's, checkpointed too."""

    def __init__(self, cfg, team, discriminator=None):
        self.cfg, self.team, self.discriminator = cfg, team, discriminator
        self.path = Path(cfg.output_dir) / CHECKPOINT
        self.owns = False  # whether the file is this run's (else it is kept aside)
        self.owed = False  # a write failed: try again at the next log
        self.generators = []  # every process's crops' generator state, as at the last checkpoint

    def gather(self, due, net, generator):
        """Every process, at the same epochs: before a checkpoint, that their weights still agree;
        and every process's crops' generator state (at a log epoch too: a failed write is tried
        again there)."""
        if due.saves:
            check_replicas_agree(self.team, net)
            if self.discriminator:
                check_replicas_agree(self.team, itself(self.discriminator.net))
        if due.logs or due.saves:
            state = generator.get_state() if generator else torch.Generator().get_state()
            self.generators = gathered(self.team, state)

    def keep(self, due, net, optimizer, scaler, progress):
        if due.saves or self.owed:
            self.owed = not try_to_write(due, self.write, net, optimizer, scaler, progress)

    def write(self, net, optimizer, scaler, progress):
        state = (self.cfg, net, optimizer, scaler, progress, self.generators, self.discriminator)
        with atomic_path(self.path) as temporary:
            torch.save(checkpoint_state(*state), temporary)
            if self.path.exists() and not self.owns:
                kept = first_free_name(self.path)
                os.replace(self.path, kept)
                note(
                    f"a fresh run: the earlier {self.path.name} was kept as {kept.name} "
                    f"(to continue it: the command that made it, with --resume {kept})"
                )
        self.owns = True


def checkpoint_path(cfg):
    """--resume's path; for --apply without --resume and without output_dir/checkpoint.pt, the
    model that ships with Deblur."""
    if cfg.resume not in ("", "auto"):
        return name_checked(Path(cfg.resume), "resume")
    own = name_checked(Path(cfg.output_dir) / CHECKPOINT, "output_dir")
    if cfg.apply and not cfg.resume and not own.exists():
        note(
            f"no {own}: using the model that ships with Deblur, {SHIPPED_MODEL.name}, trained "
            f"for any blur (--resume PATH uses another)"
        )
        return SHIPPED_MODEL
    return own


def read_checkpoint(cfg, settings):
    """--resume's checkpoint, read as data only (a file that would run code is refused) and
    checked field by field, its settings as the command line's are (`settings`: as the settings
    block declares them), before anything is written; returns (path, checkpoint, the problem it
    was trained on)."""
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
        f"{path} is not a Deblur checkpoint, or is damaged, or was written before 2026-12-04 "
        f"(whose format this Deblur does not read: train afresh); nothing in it was run"
    )
    try:
        with warnings.catch_warnings():  # torch's on a plain pickle, before our one line
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 (whatever torch.load raises: not ours)
        raise not_ours from None
    shipped = isinstance(checkpoint, dict) and set(checkpoint) == set(SHIPPED_FIELDS)
    if shipped:
        checkpoint = {**NEVER_TRAINED, **checkpoint}
    if not isinstance(checkpoint, dict) or not well_formed(checkpoint):
        raise not_ours
    if shipped and not cfg.apply:
        raise DeblurError(
            f"{path} holds a network's weights only, as a shipped model does: --apply can use "
            f"it, but training cannot continue from it; start afresh"
        )
    if not all(tensor.isfinite().all() for tensor in checkpoint["model"].values()):
        raise DeblurError(
            f"{path} holds NaN weights (its run diverged); use an earlier checkpoint or start "
            f"afresh"
        )
    return path, checkpoint, trained_settings(checkpoint, path, settings)


def checkpoint_to_resume(cfg, settings):
    """--resume's checkpoint (read_checkpoint), as (path, checkpoint), if it trained on the
    problem this run's settings name; if not, refused here, by name, before anything is written."""
    path, checkpoint, trained = read_checkpoint(cfg, settings)
    for name in problem_of(settings):
        was = getattr(trained, name)
        if was != getattr(cfg, name):
            raise DeblurError(
                f"cannot resume {path}: it was trained with {name} = {was!r}, not "
                f"{getattr(cfg, name)!r}; use --{name} {was} or start afresh"
            )
    check_adversarial_term(cfg, path, checkpoint)
    return path, checkpoint


def check_adversarial_term(cfg, path, checkpoint):
    """A run with the adversarial term resumes with it (without, its discriminator would be lost)
    and from a checkpoint that holds its discriminator. A run without it may add it: a fresh
    discriminator then starts (restore_training says so)."""
    was = checkpoint["settings"].get("adversarial_weight", 0.0)
    if was and not cfg.adversarial_weight:
        raise DeblurError(
            f"cannot resume {path} without its adversarial term: it was trained with "
            f"adversarial_weight = {was!r}, and its discriminator would be lost; use "
            f"--adversarial_weight {was}, or start afresh"
        )
    if was and checkpoint["discriminator"] is None:
        raise DeblurError(
            f"{path} was trained with adversarial_weight = {was!r} but holds no discriminator; "
            f"it is damaged: use another checkpoint, or start afresh"
        )


def check_same_images(cfg, path, checkpoint, photos):
    """A checkpoint resumes on the image it was trained on, as its SHA-256 says; a folder may have
    gained, lost or changed photos since: said, and training goes on with the folder as it is."""
    was = checkpoint["photos"]
    now = {photo.path.name: photo.digest for photo in photos}
    if not cfg.folder and set(was.values()) != set(now.values()):
        raise DeblurError(
            f"cannot resume {path}: {cfg.image_path} has changed since it was trained on; use "
            f"the original image, or start afresh"
        )
    gained = sorted(now.keys() - was.keys())
    unused = sorted(was.keys() - now.keys())
    skipped = [name for name in unused if (Path(cfg.image_path) / name).exists()]  # said above
    gone = [name for name in unused if name not in skipped]
    changed = sorted(name for name in now.keys() & was.keys() if now[name] != was[name])
    changes = [
        f"{len(names)} {how} ({', '.join(names[:3])}{', ...' * (len(names) > 3)})"
        for how, names in (
            ("new", gained),
            ("gone", gone),
            ("skipped", skipped),
            ("changed", changed),
        )
        if names
    ]
    if changes:
        note(
            f"{cfg.image_path} has photos {'; '.join(changes)} since {path.name} was saved; "
            f"training goes on with the folder as it is now"
        )


def load_weights(net, path, checkpoint):
    try:
        net.load_state_dict(checkpoint["model"])
    except RuntimeError:
        raise DeblurError(f"cannot use {path}: it holds a different network architecture") from None


def restore_training(cfg, path, checkpoint, net, optimizer, scaler, progress, discriminator=None):
    """Continues a run (weights, optimizer, scaler, epoch, history, and the adversarial term's
    Discriminator) from a checkpoint that read_checkpoint and check_same_images have found to
    solve the same problem."""
    saved = checkpoint["settings"]
    load_weights(net, path, checkpoint)
    damaged = DeblurError(f"{path} is not a Deblur checkpoint, or is damaged")
    load_training_state(optimizer, scaler, checkpoint, cfg, damaged)
    for name, value in vars(cfg).items():
        if name not in ("resume", "output_dir") and saved.get(name, value) != value:
            note(f"resuming with {name} = {value!r} (the checkpoint used {saved[name]!r})")
    progress.load_state_dict(checkpoint)
    if discriminator:
        restore_discriminator(cfg, path, checkpoint["discriminator"], discriminator, progress.epoch)
    progress.keeper.owns = path.resolve() == progress.keeper.path.resolve()
    print(f"Resumed from {path} at epoch {progress.epoch}")
    if progress.epoch >= cfg.num_epochs:
        note(
            f"the checkpoint has already trained {progress.epoch} epochs; raise --num_epochs to "
            f"train further"
        )


def load_training_state(optimizer, scaler, saved, cfg, damaged):
    """Adam's and the scaler's state as `saved` kept them (`damaged` raised if they do not fit),
    with the run's lr and weight decay. Which of Adam's kernels run is this device's, not the
    saving one's: a checkpoint from a Mac (no fused Adam) resumed on CUDA in float16 would hand a
    GradScaler's state to unfused Adam."""
    kernels = {name: optimizer.param_groups[0][name] for name in ("fused", "foreach")}
    try:
        optimizer.load_state_dict(saved["optimizer"])
        if saved["scaler"]:  # empty when saved by a disabled scaler (bfloat16 or float32 runs)
            scaler.load_state_dict(saved["scaler"])
    except (TypeError, ValueError, KeyError, RuntimeError):  # a state of another shape
        raise damaged from None
    for group in optimizer.param_groups:
        group.update(lr=cfg.lr, weight_decay=cfg.weight_decay, **kernels)


def restore_discriminator(cfg, path, saved, discriminator, epoch):
    """The discriminator, its Adam and scaler as the checkpoint kept them; or, from a checkpoint
    trained without the adversarial term, a fresh discriminator, said."""
    if saved is None:
        note(
            f"{path.name} was trained without the adversarial term: a fresh discriminator starts "
            f"at epoch {epoch}"
        )
        return
    damaged = DeblurError(
        f"{path}'s discriminator is damaged or another network's; use another checkpoint, or "
        f"start afresh"
    )
    try:
        itself(discriminator.net).load_state_dict(saved["model"])
    except (AttributeError, TypeError, KeyError, RuntimeError):
        raise damaged from None
    load_training_state(discriminator.optimizer, discriminator.scaler, saved, cfg, damaged)


def blur_to_undo(cfg, given, trained, path):
    """What --apply undoes with a checkpoint: the blur a fixed-blur one was trained on, as
    (kind, radius, angle), a blur it was not trained on refused; for one trained on any blur, the
    photo's: "measured" (--kernel), (kind, radius, angle) as the user names it, or "estimated"
    from the photo when nothing names it; for a blind one, None. `given`: the settings the
    command line names."""
    named = given & set(BLUR_SETTINGS)  # kernel_size is read only when a kernel is estimated
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
        if "noise_level" in given and cfg.noise_level:
            note(f"{path.name} is blind: it is told no noise level, --noise_level is not used")
        return None
    if cfg.kernel:
        return "measured"
    if named and cfg.blur_kind != "random":
        return cfg.blur_kind, cfg.blur_radius, cfg.blur_angle
    return "estimated"
