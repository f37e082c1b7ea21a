"""A sheet of the random family's kernels, as a training run draws them: docs/kernels.png.

    python benchmarks/kernel_sheet.py            # 40 kernels reaching up to 15 px, seed 0

The kernels come from the family a run with --blur_kind random --blur_radius 15 trains on, drawn
by a generator seeded with 0 (a run draws its crops from the same generator, between the kernels).
Each is shown on its own scale, brightest where most light falls; a sharp photo's is one pixel.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blurs import random_kernels  # noqa: E402


def main():
    kernels = random_kernels(40, 15, torch.Generator().manual_seed(0))
    figure, axes = plt.subplots(5, 8, figsize=(8, 5.4))
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.05)
    for ax, kernel in zip(axes.flat, kernels, strict=True):
        ax.imshow(kernel, cmap="magma")
        ax.axis("off")
    figure.suptitle("blur_kind = random, blur_radius = 15: 40 kernels of 31x31 pixels")
    figure.savefig(ROOT / "docs" / "kernels.png", dpi=100)
    print(f"wrote {ROOT / 'docs' / 'kernels.png'}")


if __name__ == "__main__":
    main()
