"""The command line, built from Deblur.py's settings block (plumbing/settings.py): options, their
checks, and the command that continues a stopped run. It reads no images and writes no files.
"""

import argparse
import os
import shlex
import sys

from plumbing.errors import DeblurError, note, refuse
from plumbing.images import resolve_image_path
from plumbing.settings import defaults

# Old option names that still work, for settings renamed since.
ALIASES = {"torch_compile": ("--compile",)}
BLUR_SETTINGS = ("blur_kind", "blur_radius", "blur_angle")
# The original project's blur and noise. Edited in the settings block, a photo's blur and noise
# are named as on the command line: --apply then undoes them, estimating neither
PHOTOS_BLUR = (*BLUR_SETTINGS, "noise_level")
ORIGINAL = {"blur_kind": "gaussian", "blur_radius": 5.0, "blur_angle": 0.0, "noise_level": 0.0}
# networks.PatchDiscriminator's smallest input: after its third convolution a smaller one has a
# single pixel left, which its instance norm cannot normalise
SMALLEST_JUDGED = 12
# What the settings decide, worked out with them once: not settings, never saved as settings
DERIVED = ("folder",)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_settings(settings, argv=None):
    """Every setting the settings block declares ({name: settings.Setting}) becomes an option of
    the same name, type, default and choices, with its comment as its help. Returns (settings,
    the names the command line gave, and the blur and noise settings edited away from the
    original's in the block): --apply tells a blur the user named from one left at its default."""
    parser = Parser(
        prog="Deblur.py",
        description="Remove blur from an image with a small CNN trained on it, or on a folder.",
        argument_default=argparse.SUPPRESS,  # an option not given stays out: `given` below
    )
    for name, setting in settings.items():
        help = f"{setting.help} (default: {setting.default})".replace("%", "%%")
        option = {"type": type(setting.default), "help": help, "choices": setting.choices}
        if name == "resume":  # a bare --resume means output_dir/checkpoint.pt
            option.update(nargs="?", const="auto")
        parser.add_argument(f"--{name}", *ALIASES.get(name, ()), dest=name, **option)
    given = vars(parser.parse_args(argv))  # the settings the command line names
    cfg = argparse.Namespace(**{**defaults(settings), **given})
    edited = {name for name in PHOTOS_BLUR if settings[name].default != ORIGINAL[name]}
    given = set(given) | edited
    check_settings(cfg, given, settings)
    cfg.output_dir = os.path.expanduser(cfg.output_dir)  # a shell leaves '~/x' in quotes as is
    if cfg.resume != "auto":
        cfg.resume = os.path.expanduser(cfg.resume)
    # Decided here, once, and read everywhere else (DERIVED): a folder trains on crops of its
    # photos; the training image's path is made absolute, as its checkpoint keeps it
    cfg.folder = False
    if not cfg.apply:
        found = resolve_image_path(cfg.image_path, "image_path")
        cfg.image_path = str(found.resolve())
        cfg.folder = found.is_dir()
    if cfg.folder and cfg.adversarial_weight and cfg.crop_size < SMALLEST_JUDGED:
        refuse(
            "crop_size",
            cfg.crop_size,
            f"must be at least {SMALLEST_JUDGED} pixels with "
            f"--adversarial_weight (the discriminator scores patches of a crop that size)",
        )
    return cfg, given


def check_settings(cfg, given, settings):
    """Refuses, by name, a value its settings line does not allow, and settings that contradict
    each other."""
    for name, setting in settings.items():
        fault = setting.fault(getattr(cfg, name))
        if fault:
            refuse(name, getattr(cfg, name), fault)
    if cfg.blur_kind == "random" and cfg.blur_radius < 1:
        refuse("blur_radius", cfg.blur_radius, "must be at least 1 with --blur_kind random")
    if "blur_angle" in given and cfg.blur_angle and cfg.blur_kind != "motion":
        note(f"--blur_angle turns a motion blur only: the {cfg.blur_kind} blur has no angle")
    if cfg.kernel and not cfg.apply:
        raise DeblurError(
            f"--kernel {cfg.kernel} names the blur of a photo to --apply; to train, set "
            f"--blur_kind (random trains for any blur)"
        )
    if cfg.kernel and given & set(BLUR_SETTINGS):
        named = ", ".join(f"--{name}" for name in BLUR_SETTINGS if name in given)
        raise DeblurError(f"--kernel and {named} both name the photo's blur; give one of them")
    if cfg.mse_weight + cfg.perceptual_weight == 0:
        raise DeblurError(
            "--mse_weight and --perceptual_weight are both 0, so there is nothing to learn; "
            "set one above 0"
        )


def resume_command(cfg, settings):
    """The command that continues this run, pasted as printed: every setting that differs from
    the settings block, so that the problem matches, quoted for the shell."""
    script = sys.argv[0] if sys.argv[0].endswith("Deblur.py") else "Deblur.py"
    words = [*launcher(), script, "--resume"]
    for name, default in defaults(settings).items():
        if name not in ("resume", "apply", "kernel") and getattr(cfg, name) != default:
            words += [f"--{name}", str(getattr(cfg, name))]
    return shlex.join(words)


QUICK_LOOK = "--image_size 80 --num_epochs 1000 --lr 0.001"
# A folder's (docs/quick-look.md): the U-Net after Wiener, for one blur; for any blur, with noise;
# and blind, for mild blur of any kind
FOLDER_QUICK_LOOK = (
    "--model unet --restore_from wiener --pixel_loss l1 --crop_size 96 --batch_size 8 --lr 0.001 "
    "--num_epochs 600 --perceptual_weight 0"
)
ANY_BLUR = "--blur_kind random --noise_level 8 --model unet --pixel_loss l1 --crop_size 96 "
ANY_BLUR += "--batch_size 8 --lr 0.001 --num_epochs 1000 --perceptual_weight 0"
ANY_BLUR_QUICK_LOOK = f"{ANY_BLUR} --blur_radius 15 --restore_from wiener"
BLIND_QUICK_LOOK = f"{ANY_BLUR} --blur_radius 4 --restore_from blurred"


def quick_look(cfg):
    """The settings of a run of minutes that shows what this one would, for the long-run hint."""
    if not cfg.folder:
        return QUICK_LOOK
    chosen = FOLDER_QUICK_LOOK
    if cfg.blur_kind == "random":
        chosen = BLIND_QUICK_LOOK if cfg.restore_from == "blurred" else ANY_BLUR_QUICK_LOOK
    return f"--image_path {shlex.quote(cfg.image_path)} {chosen}"


def launcher():
    """How this run was started: python, or torchrun with as many processes (its rendezvous on the
    first machine, at the port the README's command names)."""
    if "LOCAL_WORLD_SIZE" not in os.environ:
        return ["python"]
    per_machine = int(os.environ["LOCAL_WORLD_SIZE"])
    machines = int(os.environ["WORLD_SIZE"]) // per_machine
    if machines == 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={per_machine}"]
    rendezvous = ["--rdzv_backend=c10d", f"--rdzv_endpoint={os.environ['MASTER_ADDR']}:29400"]
    return ["torchrun", f"--nnodes={machines}", f"--nproc_per_node={per_machine}", *rendezvous]


def check_something_to_learn(cfg, perceptual):
    """Without the MSE, and with no VGG19 to compare with, the loss would be 0 throughout."""
    if cfg.mse_weight == 0 and not perceptual:
        raise DeblurError(
            f"--mse_weight is 0 and the VGG19 weights are unavailable, so --perceptual_weight "
            f"{cfg.perceptual_weight} has nothing to compare: the loss would be 0 for the whole "
            f"run and nothing would be learned; set --mse_weight above 0"
        )
