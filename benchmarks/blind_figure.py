"""Resources/blind.jpg: blind --apply on two photos. Above, a validation photo of blind.py blurred
by one of its held-out camera shakes (so that the truth is known): the blurred input, the shipped
model with the kernel estimated from the photo, with the true kernel, and the sharp photo, each
with its PSNR and its kernel in the corner. Below, a real hand-shaken photo whose kernel nobody
measured, scikit-image's clock_motion.png: as taken, blind as --apply runs (its blur reaches
across the 31-px square: left alone), and blind with --kernel_size 45.

    python benchmarks/blind_figure.py
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blind import (  # noqa: E402
    ROOT,
    SHIPPED_MODEL,
    SKIMAGE,
    WIDTH,
    cases,
    load_network,
    psnr_aligned,
    restored,
)

from blurs import NO_BLUR  # noqa: E402
from deconvolution import estimated_noise  # noqa: E402
from kernel_estimation import estimate_kernel  # noqa: E402
from plumbing.images import image_to_tensor, to_hwc  # noqa: E402
from results import captioned  # noqa: E402

SHOWN = ("ihc", 11)  # the validation photo and shake shown (no known copyright restrictions)
INSET = 3  # a kernel's pixels are drawn this many times larger in the corner
CLOCK_WIDTHS = {  # the squares its blur is sought in, and what comes of each
    WIDTH: (
        "blind, as it runs: its blur reaches across",
        f"the {WIDTH}-px square; said, left alone",
    ),
    45: ("blind, --kernel_size 45: a blur is found", "and the face sharper, but the wall rings"),
}


def with_kernel(image, kernel):
    """The image as an (H, W, 3) 8-bit tensor, its kernel drawn in the lower right corner."""
    pixels = torch.from_numpy((to_hwc(image.float()) * 255).round().astype(np.uint8))
    if kernel is not None:
        drawn = torch.from_numpy((kernel / kernel.max() * 255).round().astype(np.uint8))
        drawn = drawn.repeat_interleave(INSET, 0).repeat_interleave(INSET, 1)
        side = drawn.shape[0]
        pixels[-side:, -side:] = drawn[..., None]
    return pixels


def main():
    torch.set_num_threads(2)
    net, trained = load_network(SHIPPED_MODEL)
    shown = next(case for case in cases() if case[:2] == SHOWN)
    noise, sharp, truth, blurred = shown[2:]
    told = estimated_noise(blurred)
    kernel, _ = estimate_kernel(blurred, WIDTH, told, say=lambda line: None)
    blind = restored(net, trained, blurred, kernel, told)
    known = restored(net, trained, blurred, truth, noise)
    top = [
        captioned(with_kernel(blurred, None), "blurred (held-out shake)", psnr(blurred, sharp)),
        captioned(with_kernel(blind, kernel), "blind: kernel estimated", psnr(blind, sharp)),
        captioned(with_kernel(known, truth), "the true kernel given", psnr(known, sharp)),
        captioned(with_kernel(sharp, None), "sharp", ""),
    ]
    clock = image_to_tensor(Image.open(SKIMAGE / "clock_motion.png").convert("RGB"), "cpu")
    told = estimated_noise(clock)
    bottom = [
        captioned(with_kernel(clock, None), "a real hand-shaken photo", "(no kernel measured)")
    ]
    for width, caption in CLOCK_WIDTHS.items():
        kernel, doubt = estimate_kernel(clock, width, told, say=lambda line: None)
        shown = restored(net, trained, clock, NO_BLUR if doubt else kernel, told)
        bottom.append(captioned(with_kernel(shown, kernel), *caption))
    width = sum(tile.width for tile in top)
    sheet = Image.new("RGB", (width, top[0].height + bottom[0].height), "white")
    left = 0
    for tile in top:
        sheet.paste(tile, (left, 0))
        left += tile.width
    left = 0
    for tile in bottom:
        sheet.paste(tile, (left, top[0].height))
        left += tile.width
    sheet.save(ROOT / "Resources" / "blind.jpg", quality=90)


def psnr(image, sharp):
    return f"PSNR {psnr_aligned(image, sharp):.2f} dB"


if __name__ == "__main__":
    main()
