"""The command line, built from Deblur.py's settings block: options, their checks, and the command
that continues a stopped run. It reads no images and writes no files.
"""

import argparse
import math
import os
import re
import shlex
import sys
from pathlib import Path

from plumbing.errors import DeblurError, refuse

# Old option names that still work, for settings renamed since.
ALIASES = {"torch_compile": ("--compile",)}
POSITIVE = (
    "num_epochs",
    "lr",
    "max_grad_norm",
    "log_every",
    "checkpoint_every",
    "crop_size",
    "batch_size",
)
# Past these no run could finish, or fit in memory
AT_MOST = {
    "num_epochs": 10**9,
    "log_every": 10**9,
    "checkpoint_every": 10**9,
    "crop_size": 4096,
    "batch_size": 4096,
}
NOT_NEGATIVE = ("blur_radius", "weight_decay", "mse_weight", "perceptual_weight")


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


def parse_settings(settings, choices, script, argv=None):
    """Every `name = value  # comment` line of the script's settings block becomes an option of the
    same name, type and default, with the comment as its help; `choices` lists the values a
    setting may take where only a few make sense."""
    parser = Parser(
        prog="Deblur.py",
        description="Remove blur from an image with a small CNN trained on it, or on a folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = Path(script).read_text(encoding="utf-8")
    comments = dict(re.findall(r"^(\w+) = .*?  # (.*)$", source, re.MULTILINE))
    for name, default in settings.items():
        option = {"default": default, "type": type(default), "help": comments.get(name, "")}
        if name == "resume":  # a bare --resume means output_dir/checkpoint.pt
            option.update(nargs="?", const="auto")
        names = (f"--{name}", *ALIASES.get(name, ()))
        parser.add_argument(*names, dest=name, choices=choices.get(name), **option)
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
    for name, most in AT_MOST.items():
        if getattr(cfg, name) > most:
            refuse(name, getattr(cfg, name), f"must be at most {most:,}")
    for name in NOT_NEGATIVE:
        if getattr(cfg, name) < 0:
            refuse(name, getattr(cfg, name), "must be zero or positive")
    if cfg.mse_weight + cfg.perceptual_weight == 0:
        raise DeblurError(
            "--mse_weight and --perceptual_weight are both 0, so there is nothing to learn; "
            "set one above 0"
        )


def resume_command(cfg, defaults):
    """The command that continues this run, pasted as printed: every setting that differs from
    the settings block, so that the problem matches, quoted for the shell."""
    script = sys.argv[0] if sys.argv[0].endswith("Deblur.py") else "Deblur.py"
    words = ["python", script, "--resume"]
    for name, value in vars(cfg).items():
        if name not in ("resume", "apply") and value != defaults[name]:
            words += [f"--{name}", str(value)]
    return shlex.join(words)


def check_something_to_learn(cfg, perceptual):
    """Without the MSE, and with no VGG19 to compare with, the loss would be 0 throughout."""
    if cfg.mse_weight == 0 and not perceptual:
        raise DeblurError(
            f"--mse_weight is 0 and the VGG19 weights are unavailable, so --perceptual_weight "
            f"{cfg.perceptual_weight} has nothing to compare: the loss would be 0 for the whole "
            f"run and nothing would be learned; set --mse_weight above 0"
        )
