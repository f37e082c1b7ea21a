"""Writes the model that ships with Deblur: a training run's checkpoint cut down to the network's
weights and the settings of the problem it was trained on (no optimizer state, no history), which
--apply reads as it reads a checkpoint. How the shipped one was trained: model/README.md.

    python model/export.py runs/shipped/checkpoint.pt model/any_blur.pt
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import Deblur  # noqa: E402
from plumbing.settings import problem_of  # noqa: E402


def main(source, target):
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    settings = {name: checkpoint["settings"][name] for name in problem_of(Deblur.SETTINGS)}
    trained_on = Path(settings["image_path"])
    if trained_on.is_relative_to(ROOT):  # not the path of the machine it was trained on
        settings["image_path"] = str(trained_on.relative_to(ROOT))
    torch.save({"model": checkpoint["model"], "settings": settings}, target)
    print(f"{target}: {Path(target).stat().st_size / 2**20:.2f} MB, epoch {checkpoint['epoch']}")


if __name__ == "__main__":
    main(*sys.argv[1:])
