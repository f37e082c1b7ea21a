"""A checkpoint's format, in one place: the fields a run writes (checkpoint_state), what each may
hold (FIELDS: a hand-made or damaged file fails here, in one line, not hours into a run), the two a
shipped model keeps, and the problem its settings say it solves, each checked as its settings line
says (plumbing/settings.py).
"""

import math
from types import SimpleNamespace

import torch

from plumbing.command_line import DERIVED
from plumbing.errors import DeblurError
from plumbing.processes import itself
from plumbing.settings import problem_of

GENERATOR_STATE_SHAPE = torch.Generator().get_state().shape  # a crops' generator's state


def checkpoint_state(cfg, net, optimizer, scaler, progress, generators, discriminator):
    """What a checkpoint keeps: the network and its training, the run's settings and progress,
    every process's crops' generator (`generators`, under torchrun) and the adversarial term's
    Discriminator (with its Adam and scaler; None without the term)."""
    return {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "settings": {name: value for name, value in vars(cfg).items() if name not in DERIVED},
        "epoch": progress.epoch,
        "elapsed": progress.elapsed,
        "history": progress.history,
        "photos": {photo.path.name: photo.digest for photo in progress.trained_on},
        "crops_generator": progress.generator.get_state() if progress.generator else None,
        "crops_generators": generators,
        "frames": progress.frames.taken if progress.frames else [],
        "discriminator": discriminator_state(discriminator) if discriminator else None,
    }


def discriminator_state(discriminator):
    return {
        "model": itself(discriminator.net).state_dict(),
        "optimizer": discriminator.optimizer.state_dict(),
        "scaler": discriminator.scaler.state_dict(),
    }


def is_number(value):
    return type(value) in (int, float) and math.isfinite(value)


def is_weights(weights):
    return isinstance(weights, dict) and all(map(torch.is_tensor, weights.values()))


def is_adam(state):
    return (
        isinstance(state, dict)
        and isinstance(state.get("state"), dict)
        and isinstance(state.get("param_groups"), list)
    )


def is_generator(state):
    return torch.is_tensor(state) and state.shape == GENERATOR_STATE_SHAPE


def is_history(rows):
    """[{column: number}], as Progress.log makes them."""
    return isinstance(rows, list) and all(
        isinstance(row, dict)
        and all(isinstance(key, str) for key in row)
        and all(type(value) in (int, float) for value in row.values())  # PSNR may be inf
        for row in rows
    )


def is_photos(photos):
    """{name: SHA-256} of the photos trained on."""
    return isinstance(photos, dict) and all(
        isinstance(name, str) and isinstance(digest, str) for name, digest in photos.items()
    )


def is_frame(frame):
    """[epoch, PSNR, an 8-bit (H, W, 3) image], as results.Frames takes them."""
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


# Each field a run writes, and the test its value passes
FIELDS = {
    "model": is_weights,  # the network's
    "optimizer": is_adam,
    "scaler": lambda state: isinstance(state, dict),  # {} from a disabled one: bfloat16, float32
    "settings": lambda settings: isinstance(settings, dict),  # every setting, by name
    "epoch": lambda epoch: type(epoch) is int and epoch >= 0,  # the last one trained
    "elapsed": is_number,  # seconds of training
    "history": is_history,  # history.csv's rows
    "photos": is_photos,
    "crops_generator": lambda state: state is None or is_generator(state),  # a folder's
    "crops_generators": lambda states: isinstance(states, list) and all(map(is_generator, states)),
    "frames": lambda frames: isinstance(frames, list) and all(map(is_frame, frames)),
    # The adversarial term's, or None; what it holds is checked as it is loaded (its own message)
    "discriminator": lambda state: state is None or isinstance(state, dict),
}
# A model as Deblur ships one (model/) keeps two: the network's weights and the problem it solves
SHIPPED_FIELDS = ("model", "settings")
# ... and is read as a checkpoint whose training never began
NEVER_TRAINED = {"optimizer": {"state": {}, "param_groups": []}, "scaler": {}, "epoch": 0}
NEVER_TRAINED |= {"elapsed": 0.0, "history": [], "photos": {}, "crops_generator": None}
NEVER_TRAINED |= {"crops_generators": [], "frames": [], "discriminator": None}


def well_formed(checkpoint):
    """Every field there, and of the type a run writes."""
    return set(checkpoint) == set(FIELDS) and all(
        check(checkpoint[name]) for name, check in FIELDS.items()
    )


def trained_settings(checkpoint, path, settings):
    """The problem a checkpoint was trained on: the settings the settings block declares to be the
    problem, by name, each checked as the command line checks it (a hand-edited file fails here,
    in one line)."""
    saved = checkpoint["settings"]
    for name in problem_of(settings):
        said = f"does not say its {name}"
        if name in saved:
            said = f"says it was trained with {name} = {saved[name]!r}, which no run can be"
        if name not in saved or settings[name].fault(saved[name]):
            raise DeblurError(
                f"{path} {said}; it is damaged or hand-edited: use another checkpoint, or train "
                f"afresh"
            )
    return SimpleNamespace(**{name: saved[name] for name in problem_of(settings)})
