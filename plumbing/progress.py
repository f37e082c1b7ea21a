"""What a run says as it goes: the plan, a log line and a history row every log_every epochs, and
when to take a frame, write the checkpoint (checkpoints.Keeper) or end. No figure is drawn here.
"""

import math
from datetime import timedelta
from itertools import count
from pathlib import Path
from time import perf_counter
from typing import NamedTuple

import torch

from plumbing.command_line import quick_look
from plumbing.device import cpu_has_fast_bfloat16
from plumbing.errors import DeblurError, note, warn
from plumbing.files import save_text
from plumbing.processes import Team, anyone, averaged, itself

# history.csv's columns of the run itself; the loss terms follow, by their names
RUN_COLUMNS = ("epoch", "psnr", "seconds")
# How the log line names a loss term, where not by its name in title case (the original's words)
TERMS_SAID = {"total": "Total Loss", "mse": "MSE"}


class Duties(NamedTuple):
    """What an epoch that is not like the others has to do."""

    logs: bool
    saves: bool
    final: bool  # the last epoch, or the one a stop request ends
    stopping: bool
    frame: bool  # a frame of progress.png: the network's reconstruction of the watched image


def frame_epochs(num_epochs):
    """1, 2, 5, 10, 20, 50, ... up to num_epochs, and num_epochs: about a dozen frames, spaced
    logarithmically, since a network changes fastest at first."""
    epochs = {num_epochs}
    for power in count():
        for first in (1, 2, 5):
            if first * 10**power > num_epochs:
                return epochs
            epochs.add(first * 10**power)


class Progress:
    """The run's epoch, time and history, and what the training loop does every log_every epochs:
    read the loss terms (the only time the host waits for the device), check them, log, write
    history.csv, have `frames` take progress.png's frame (results.Frames) and `keeper` write the
    checkpoint (checkpoints.Keeper), and stop when asked. `generator` draws a folder's crops:
    its state goes into the checkpoint, so that a resumed run is the uninterrupted one.
    `trained_on`: the photos it learns from ([photo_folder.Photo]), whose digests the checkpoint
    keeps. Under torchrun (`team`), the processes agree on every decision; the first writes.
    `psnr_of_mse`: the metric the log line reads (results.py's)."""

    def __init__(
        self, cfg, stop, psnr_of_mse, keeper=None, generator=None, trained_on=(), team=None
    ):
        self.cfg, self.stop, self.psnr_of_mse = cfg, stop, psnr_of_mse
        self.keeper, self.generator, self.trained_on = keeper, generator, trained_on
        self.team = team or Team()
        self.out = Path(cfg.output_dir)
        self.epoch = 0
        self.elapsed = 0.0
        self.history = []  # history.csv's rows: {column: number}
        self.diverged_at = None
        self.timer_epoch = 0
        self.timer = perf_counter()
        self.frames = None  # progress.png's frames (results.Frames), where the run shows one
        self.frame_at = frame_epochs(cfg.num_epochs)  # worked out once, not every step

    def load_state_dict(self, checkpoint):
        """The run as a checkpoint kept it (checkpoint_fields.checkpoint_state)."""
        if self.generator and torch.is_tensor(checkpoint["crops_generator"]):
            self.generator.set_state(checkpoint["crops_generator"])
        trained_by = len(checkpoint["crops_generators"])
        if trained_by != self.team.size:
            note(
                f"the checkpoint was trained by {trained_by} processes, now {self.team.size}: "
                f"the crops differ from an uninterrupted run's"
            )
        elif self.team.size > 1:
            self.generator.set_state(checkpoint["crops_generators"][self.team.rank])
        self.epoch = checkpoint["epoch"]
        self.elapsed = checkpoint["elapsed"]
        self.history = checkpoint["history"]
        if self.frames:
            self.frames.taken = checkpoint["frames"]

    def start(self):
        self.timer_epoch = self.epoch
        self.timer = perf_counter()

    def due(self, epoch):
        """What this epoch must do besides its step (log, checkpoint, a frame, end), or None."""
        stopping = self.stop.signum is not None  # read once: a later signal waits a step
        if self.team.size > 1:  # torchrun's processes stop together, agreed on at a log epoch
            stopping = epoch % self.cfg.log_every == 0 and anyone(self.team, stopping)
        final = epoch == self.cfg.num_epochs or stopping
        logs = epoch % self.cfg.log_every == 0 or final
        saves = epoch % self.cfg.checkpoint_every == 0 or final
        frame = self.frames is not None and (final or epoch in self.frame_at)
        if logs or saves or frame:
            return Duties(logs, saves, final, stopping, frame)
        return None

    def record(self, epoch, due, net, optimizer, scaler, terms):
        """`terms`: the step's loss terms by name, on the device. Returns 'running', 'done',
        'stopped' or 'diverged' (a loss or a weight not finite: nothing is logged or saved)."""
        net = itself(net)  # under torchrun, the network inside DistributedDataParallel
        weights = net.state_dict().values()
        finite = torch.stack([weight.isfinite().all() for weight in weights]).all().float()
        # One read of them all (the host waits once): the terms, then whether the weights are finite
        *read, finite = torch.stack(
            [*(t.detach().float() for t in terms.values()), finite]
        ).tolist()
        values = averaged(self.team, read)  # over every process's crops
        if not all(map(math.isfinite, values)) or not finite:
            self.diverged_at = epoch
            return "diverged"
        now = perf_counter()
        rate = (epoch - self.timer_epoch) / (now - self.timer)
        self.epoch = epoch
        self.elapsed += now - self.timer
        self.timer_epoch = epoch
        self.timer = now
        ending = (
            "stopped" if due.stopping else "done" if epoch == self.cfg.num_epochs else "running"
        )
        if self.keeper:  # under torchrun every process gathers for it, at the same epochs
            self.keeper.gather(due, net, self.generator)
        if not self.team.main:  # the first process alone logs and writes
            return ending
        if due.frame:
            self.frames.take(epoch, net)
        if due.logs:
            self.log(dict(zip(terms, values, strict=True)), rate)
            try_to_write(due, write_history, self.out / "history.csv", self.history)
        if self.keeper:
            self.keeper.keep(due, net, optimizer, scaler, self)
        return ending

    def log(self, terms, rate):
        """The log line and history.csv's row of the loss terms ({name: value}): the original's
        `Epoch N, Total Loss: ..., MSE: ..., Perceptual: ...`, then any other term by its name."""
        psnr = self.psnr_of_mse(terms["mse"])
        remaining = (self.cfg.num_epochs - self.epoch) / rate
        # The loss terms last: a term a resumed run adds is a column after them all
        run = dict(zip(RUN_COLUMNS, (self.epoch, psnr, self.elapsed), strict=True))
        self.history.append({**run, **terms})
        said = ", ".join(
            f"{TERMS_SAID.get(name, name.title())}: {value:.6f}" for name, value in terms.items()
        )
        print(
            f"Epoch {self.epoch}, {said}, PSNR: {psnr:.2f} dB, {rate:.1f} epochs/s, "
            f"elapsed {hms(self.elapsed)}, ETA {hms(remaining)}"
        )
        if len(self.history) == 1 and remaining > 3600:
            print(
                "A long run: Ctrl-C stops it cleanly, --resume continues. "
                f"A quick look: python Deblur.py {quick_look(self.cfg)}"
            )


def try_to_write(due, write, *args):
    """A write that fails mid-run (a briefly full disk, say) is a warning: training goes on and
    the next log or checkpoint epoch tries again. Only the final one is an error. Returns whether
    it was written."""
    try:
        write(*args)
        return True
    except DeblurError as e:
        if due.final:
            raise
        warn(f"{e}; training goes on, and tries again at the next log or checkpoint")
        return False


def write_history(path, history):
    """history.csv: a column for each name in any row (a loss term added by a resumed run, the
    adversarial one, leaves its column empty on the rows from before it)."""
    columns = list(dict.fromkeys(name for row in history for name in row))
    lines = [",".join(columns)]
    for row in history:
        lines.append(",".join(str(row.get(name, "")) for name in columns))
    save_text("\n".join(lines) + "\n", path)


def hms(seconds):
    return str(timedelta(seconds=round(seconds)))


def print_plan(cfg, facts, net, perceptual, progress, baseline, warm_up):
    """The run's plan: what it trains on, how, and the blurred image's quality to beat."""
    psnr, ssim = baseline
    device, amp, team = facts.device, facts.amp, facts.team
    blur = f"{cfg.blur_kind} blur of radius {cfg.blur_radius}"
    if cfg.blur_kind == "random":
        blur = (
            f"random blur (camera shake, motion, Gaussian, disk or box) reaching up to "
            f"{cfg.blur_radius} px, a fresh kernel for every image"
        )
    if cfg.noise_level:
        blur += f", noise of {'up to ' if cfg.blur_kind == 'random' else ''}{cfg.noise_level}/255"
    print(f"Using device: {device}")
    if cfg.folder:
        print(
            f"Images: random {cfg.crop_size}x{cfg.crop_size} crops of {cfg.image_path}, "
            f"{cfg.batch_size} a step, turned and mirrored at random, at their own size "
            f"(image_size does not apply); {blur}; lr warmed up over {warm_up} steps, then a "
            f"cosine decay. The unseen sample, blurred: PSNR {psnr:.2f} dB, SSIM {ssim:.4f}"
        )
    else:
        print(
            f"Image: {cfg.image_path} at {cfg.image_size}x{cfg.image_size}, {blur}; blurred PSNR "
            f"{psnr:.2f} dB, SSIM {ssim:.4f}"
        )
    if team.size > 1:
        print(
            f"torchrun: {team.size} processes, each with its own crops; their gradients are "
            f"averaged, so a step learns from {team.size * cfg.batch_size} crops"
        )
    network = net.title
    if cfg.restore_from == "wiener":
        network += " on Wiener's deconvolution"
    loss = f"{cfg.mse_weight}*{cfg.pixel_loss.upper()} + "
    loss += f"{cfg.perceptual_weight if perceptual else 0}*VGG19 perceptual"
    if cfg.adversarial_weight:
        loss += f" + {cfg.adversarial_weight}*adversarial (least squares, a PatchGAN's scores)"
    epochs = "epochs (an epoch: one step on one batch)" if cfg.folder else "epochs"
    print(
        f"Training the {network}, {epochs} {progress.epoch + 1} to {cfg.num_epochs}, AMP "
        f"{str(amp)[6:]}, loss {loss}, lr {cfg.lr}"
    )
    if amp == torch.float16 and device.type == "cpu":
        note("float16 on a CPU is emulated and far slower than --amp_dtype auto")
    if amp == torch.bfloat16 and device.type == "cpu" and not cpu_has_fast_bfloat16():
        note("this CPU has no bfloat16 in hardware: emulated, it is 2-21x slower than float32")
