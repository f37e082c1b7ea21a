"""What a checkpoint's fields may hold: each field's type, as a run writes it, and the problem its
settings say it solves, each setting checked as the command line checks it. A hand-made or damaged
file fails here, in one line, not hours into a run.
"""

import math
from types import SimpleNamespace

import torch

from plumbing.errors import DeblurError

CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "settings", "epoch", "elapsed", "history")
# A model as Deblur ships one (model/): the network's weights and the problem it was trained on
WEIGHTS_KEYS = ("model", "settings")
# ... and for reading it as a checkpoint, a training that never began
WEIGHTS_ONLY = {"optimizer": {"state": {}, "param_groups": []}, "scaler": {}, "epoch": 0}
WEIGHTS_ONLY |= {"elapsed": 0.0, "history": []}
GENERATOR_STATE_SHAPE = (
    torch.Generator().get_state().shape
)  # the state of a folder's crops' generator
HISTORY_COLUMNS = ("epoch", "total", "mse", "perceptual", "psnr", "seconds")
ADVERSARIAL_COLUMNS = ("adversarial", "discriminator")  # a history row's, at adversarial_weight > 0
# The settings a resumed run must share with its checkpoint: the problem it learned to solve
PROBLEM = ("image_path", "image_size", "blur_radius", "blur_kind", "blur_angle", "noise_level")
PROBLEM += ("model", "restore_from")
ROW_LENGTHS = (len(HISTORY_COLUMNS), len(HISTORY_COLUMNS) + len(ADVERSARIAL_COLUMNS))
# What a checkpoint written before a setting existed was trained with (its network and first
# step are told by its weights: trained_settings)
BEFORE_IT_EXISTED = {"blur_kind": "gaussian", "blur_angle": 0.0, "noise_level": 0.0}
# The numbers a run can have trained with, as the command line checks them
RANGES = {"image_size": (16, 4096), "blur_radius": (0, 682), "noise_level": (0, 64)}
RANGES["blur_angle"] = (-math.inf, math.inf)
# Each network's first layer, by which a checkpoint that does not say its network is known
FIRST_LAYERS = {"unet": "down1.0.weight", "resnet": "first.weight", "deblurnet": "main.0.weight"}


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
        and all(isinstance(row, list) and len(row) in ROW_LENGTHS for row in history)
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
    weights = checkpoint["model"]
    model = next((name for name, key in FIRST_LAYERS.items() if key in weights), "deblurnet")
    first = weights.get(FIRST_LAYERS[model])
    told = {
        "model": model,
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
