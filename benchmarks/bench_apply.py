"""Times `--apply` on a 12-megapixel photo and measures its peak memory, for one version of
Deblur: this one, or another checkout's Deblur.py, so that two versions run side by side.

    python benchmarks/bench_apply.py                            # this checkout
    python benchmarks/bench_apply.py --deblur ../old/Deblur.py  # another version, same photo
    python benchmarks/bench_apply.py --shipped                  # model/'s, a kernel: its rounds

Each version trains its own U-Net after Wiener checkpoint (one epoch on 32 px: the weights do
not change the time), or with --shipped uses the model in model/ told a measured kernel (a camera
shake 21 px wide, so that its prior_rounds of plug and play run), then deblurs a 4000x3000 PNG,
data/train/astronaut.jpg enlarged and softened, in a fresh process; the median wall time of
--repeats runs, the largest peak resident memory of one, and the peak of a process that only
imports that Deblur (torch's share of it).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blurs import camera_shake  # noqa: E402

TRAIN = "--model unet --restore_from wiener --image_size 32 --num_epochs 1 --perceptual_weight 0"


def twelve_megapixels(path):
    """The photo: the astronaut at 4000x3000, softened as a real photo's blur would."""
    photo = Image.open(ROOT / "data" / "train" / "astronaut.jpg").convert("RGB")
    photo = photo.resize((4000, 3000), Image.Resampling.BICUBIC)
    photo.filter(ImageFilter.GaussianBlur(2)).save(path, compress_level=1)


def timed(command, cwd):
    """Runs `command` in a fresh process; its wall time in seconds and its own peak resident
    memory in MB (os.wait4's, for that process alone)."""
    began = time.perf_counter()
    child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - began
    if status != 0:
        sys.exit(f"{' '.join(command)} failed")
    return wall, usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deblur", default=str(ROOT / "Deblur.py"), help="the Deblur.py to run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shipped", action="store_true", help="model/'s network, with a kernel")
    args = parser.parse_args()
    deblur = Path(args.deblur).resolve()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        twelve_megapixels(work / "photo.png")
        python = [sys.executable]
        _, imported = timed([*python, "-c", "import Deblur"], deblur.parent)
        apply = [*python, str(deblur), "--apply", str(work / "photo.png")]
        if args.shipped:
            shake = camera_shake(10, 10, torch.Generator().manual_seed(0))
            np.save(work / "shake.npy", shake)
            apply += ["--kernel", str(work / "shake.npy"), "--noise_level", "2"]
        else:
            image = str(deblur.parent / "data" / "sample.jpg")
            training = [*python, str(deblur), "--image_path", image, *TRAIN.split()]
            subprocess.run([*training, "--output_dir", str(work / "run")], check=True, stdout=-3)
            apply += ["--resume", str(work / "run" / "checkpoint.pt")]
        walls, peaks = [], []
        for repeat in range(args.repeats):
            wall, peak = timed([*apply, "--output_dir", str(work / f"out{repeat}")], work)
            walls.append(wall)
            peaks.append(peak)
    print(f"{deblur}: --apply on 4000x3000 pixels, median of {args.repeats}")
    print(
        f"wall time {statistics.median(walls):.2f} s (runs: {', '.join(f'{w:.2f}' for w in walls)})"
    )
    print(f"peak memory {max(peaks):.0f} MB; importing Deblur alone {imported:.0f} MB")


if __name__ == "__main__":
    main()
