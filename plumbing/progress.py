"""What a run says and keeps as it goes: the plan, a log line and a history row every log_every
epochs, the checkpoint on time, the end. No figure is drawn here.
"""

import math
from datetime import timedelta
from itertools import count
from pathlib import Path
from time import perf_counter
from typing import NamedTuple

import torch
from torch.nn import functional as F

from plumbing.checkpoint_fields import ADVERSARIAL_COLUMNS, HISTORY_COLUMNS
from plumbing.checkpoints import save_checkpoint
from plumbing.command_line import quick_look
from plumbing.device import cpu_has_fast_bfloat16
from plumbing.errors import DeblurError, note, warn
from plumbing.files import CHECKPOINT, save_text
from plumbing.images import thumbnail
from plumbing.processes import Team, anyone, averaged, check_replicas_agree, gathered, itself


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
    """The run's epoch, time and history, and the bookkeeping the training loop does every log_every
    epochs: read the losses (the only time the host waits for the device), check them, log, write
    history.csv and the checkpoint, and stop when asked. `generator` draws a folder's crops: its
    state goes into the checkpoint, so that a resumed run is the uninterrupted one. `trained_on`:
    the photos it learns from ([photo_folder.Photo]), whose digests the checkpoint keeps. Under
    torchrun (`team`), the processes agree on every decision, and the first alone writes.
    `critic`: the adversarial term's discriminator, its Adam and scaler, checkpointed too."""

    def __init__(self, cfg, stop, generator=None, trained_on=(), team=None, critic=None):
        self.cfg, self.stop, self.generator = cfg, stop, generator
        self.trained_on, self.team, self.critic = trained_on, team or Team(), critic
        self.generators = []  # every process's crops' generator state, as at the last checkpoint
        self.out = Path(cfg.output_dir)
        self.epoch = 0
        self.elapsed = 0.0
        self.history = []
        self.owns_checkpoint = (
            False  # whether output_dir/checkpoint.pt is this run's (else it is kept aside)
        )
        self.checkpoint_owed = False  # a checkpoint write failed: try again at the next log
        self.diverged_at = None
        self.timer_epoch = 0
        self.timer = perf_counter()
        self.watched = None  # (network input, sharp, border) of the image progress.png shows
        self.frames = []  # [epoch, PSNR, small 8-bit reconstruction] at each of frame_epochs
        self.frame_at = frame_epochs(cfg.num_epochs)  # worked out once, not every step

    def watch(self, inputs, sharp, border):
        self.watched = (inputs, sharp, border)

    def state_dict(self):
        """What a checkpoint keeps of the run, as PyTorch's own objects give theirs."""
        return {
            "epoch": self.epoch,
            "elapsed": self.elapsed,
            "history": self.history,
            "photos": {photo.path.name: photo.digest for photo in self.trained_on},
            "crops_generator": self.generator.get_state() if self.generator else None,
            "crops_generators": self.generators,  # under torchrun: every process's
            "frames": self.frames,
        }

    def load_state_dict(self, state):
        """The run as a checkpoint kept it (state_dict's keys)."""
        if self.generator and torch.is_tensor(state["crops_generator"]):
            self.generator.set_state(state["crops_generator"])
        trained_by = len(state["crops_generators"]) or 1  # none: saved before they were kept
        if trained_by != self.team.size:
            note(
                f"the checkpoint was trained by {trained_by} processes, now {self.team.size}: "
                f"the crops differ from an uninterrupted run's"
            )
        elif self.team.size > 1:
            self.generator.set_state(state["crops_generators"][self.team.rank])
        self.epoch = state["epoch"]
        self.elapsed = state["elapsed"]
        self.history = state["history"]
        self.frames = state["frames"]

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
        frame = self.watched is not None and (final or epoch in self.frame_at)
        if logs or saves or frame:
            return Duties(logs, saves, final, stopping, frame)
        return None

    def record(self, epoch, due, net, optimizer, scaler, losses):
        """Returns 'running', 'done', 'stopped' or 'diverged' (a loss or a weight not finite:
        nothing is logged or saved)."""
        net = itself(net)  # under torchrun, the network inside DistributedDataParallel
        values = averaged(self.team, [loss.item() for loss in losses])  # of every process's crops
        weights = net.state_dict().values()
        finite = torch.stack([weight.isfinite().all() for weight in weights]).all()
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
        if self.team.size > 1:  # collectives: every process makes them, at the same epochs
            self.keep_every_generator(due, net)
        if not self.team.main:  # the first process alone logs and writes
            return ending
        if due.frame:
            self.take_frame(epoch, net)
        if due.logs:
            self.log(values, rate)
            self.try_to_write(due, write_history, self.out / "history.csv", self.history)
        if due.saves or self.checkpoint_owed:
            checkpoint = (self.out / CHECKPOINT, net, optimizer, scaler, self)
            self.checkpoint_owed = not self.try_to_write(due, save_checkpoint, *checkpoint)
        return ending

    def keep_every_generator(self, due, net):
        """Under torchrun, every process's crops' generator state, for the first process's
        checkpoint (at a log epoch too: a failed write is tried again there); and before a
        checkpoint, that every process's weights are still the same."""
        if due.saves:
            check_replicas_agree(self.team, net)
            if self.critic:
                check_replicas_agree(self.team, itself(self.critic.net))
        if due.logs or due.saves:
            self.generators = gathered(self.team, self.generator.get_state())

    def take_frame(self, epoch, net):
        """The network's reconstruction of the watched image now, small, and its PSNR."""
        inputs, sharp, border = self.watched
        net.eval()  # as it will be used
        with (
            torch.no_grad()
        ):  # its class's forward: a compiled one would compile again, for its size
            restored = type(net).forward(net, inputs).float().clamp(0, 1)
        net.train()
        mse = F.mse_loss(without_border(restored, border), without_border(sharp, border)).item()
        self.frames.append([epoch, psnr_from_mse(mse), thumbnail(restored)])

    def try_to_write(self, due, write, *args):
        """A write that fails mid-run (a briefly full disk, say) is a warning: training goes on
        and the next log or checkpoint epoch tries again. Only the final one is an error."""
        try:
            write(*args)
            return True
        except DeblurError as e:
            if due.final:
                raise
            warn(f"{e}; training goes on, and tries again at the next log or checkpoint")
            return False

    def log(self, values, rate):
        total, mse, perceptual, *adversarial = values  # adversarial: (the term, the critic's)
        psnr = psnr_from_mse(mse)
        remaining = (self.cfg.num_epochs - self.epoch) / rate
        self.history.append([self.epoch, total, mse, perceptual, psnr, self.elapsed, *adversarial])
        judged = ""
        if adversarial:
            judged = f"Adversarial: {adversarial[0]:.6f}, Discriminator: {adversarial[1]:.6f}, "
        print(
            f"Epoch {self.epoch}, Total Loss: {total:.6f}, MSE: {mse:.6f}, "
            f"Perceptual: {perceptual:.6f}, {judged}PSNR: {psnr:.2f} dB, {rate:.1f} epochs/s, "
            f"elapsed {hms(self.elapsed)}, ETA {hms(remaining)}"
        )
        if len(self.history) == 1 and remaining > 3600:
            print(
                "A long run: Ctrl-C stops it cleanly, --resume continues. "
                f"A quick look: python Deblur.py {quick_look(self.cfg)}"
            )


def write_history(path, history):
    """history.csv; with the adversarial term's two columns when any row has them (a run resumed
    with the term added leaves them empty on the rows from before it)."""
    columns = HISTORY_COLUMNS
    if any(len(row) > len(HISTORY_COLUMNS) for row in history):
        columns += ADVERSARIAL_COLUMNS
    lines = [",".join(columns)]
    for row in history:
        lines.append(",".join([*map(str, row), *[""] * (len(columns) - len(row))]))
    save_text("\n".join(lines) + "\n", path)


def psnr_from_mse(mse):
    """PSNR in dB of images in [0, 1] whose mean squared error is `mse`."""
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def without_border(image, border):
    """The image as the metrics see it: without `border` pixels on each side, or fewer on an image
    too small to keep SSIM's 11x11 window."""
    border = max(0, min(border, (min(image.shape[-2:]) - 11) // 2))
    return image[..., border : image.shape[-2] - border, border : image.shape[-1] - border]


def hms(seconds):
    return str(timedelta(seconds=round(seconds)))


def print_plan(cfg, facts, perceptual, progress, baseline, warm_up):
    """The run's plan: what it trains on, how, and the blurred image's quality to beat."""
    psnr, ssim = baseline
    processor, amp, team = facts.processor, facts.amp, facts.team
    blur = f"{cfg.blur_kind} blur of radius {cfg.blur_radius}"
    if cfg.blur_kind == "random":
        blur = (
            f"random blur (camera shake, motion, Gaussian, disk or box) reaching up to "
            f"{cfg.blur_radius} px, a fresh kernel for every image"
        )
    if cfg.noise_level:
        blur += f", noise of {'up to ' if cfg.blur_kind == 'random' else ''}{cfg.noise_level}/255"
    print(f"Using device: {processor}")
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
    network = {"deblurnet": "DeblurNet", "unet": "U-Net", "resnet": "ResNet"}[cfg.model]
    if cfg.restore_from == "wiener":
        network += " on Wiener's deconvolution"
    loss = f"{cfg.mse_weight}*{cfg.pixel_loss.upper()} + "
    loss += f"{cfg.perceptual_weight if perceptual else 0}*VGG19 perceptual"
    if cfg.adversarial_weight:
        loss += f" + {cfg.adversarial_weight}*adversarial (least squares, a PatchGAN's scores)"
    print(
        f"Training the {network}, epochs {progress.epoch + 1} to {cfg.num_epochs}, AMP "
        f"{str(amp)[6:]}, loss {loss}, lr {cfg.lr}"
    )
    if amp == torch.float16 and processor.type == "cpu":
        note("float16 on a CPU is emulated and far slower than --amp_dtype auto")
    if amp == torch.bfloat16 and processor.type == "cpu" and not cpu_has_fast_bfloat16():
        note("this CPU has no bfloat16 in hardware: emulated, it is 2-21x slower than float32")
