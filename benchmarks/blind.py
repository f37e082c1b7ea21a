"""The lesson of blind deblurring: how much of what the true kernel gains the estimated one keeps,
on photos neither trained on nor shipped in data/ (scikit-image's), each blurred by camera shakes
of 3 to 15 pixels' reach (7 to 31 px wide) drawn by a generator no training run uses, with noise
of 1 to 3 8-bit steps, 8 bits, edges replicated.

    python benchmarks/blind.py                                   # the shipped model
    python benchmarks/blind.py --checkpoint runs/any/checkpoint.pt --blind runs/blind/checkpoint.pt
    python benchmarks/blind.py --jpeg 85                         # each blurred photo a JPEG
    python benchmarks/blind.py --linear_light                    # blurred as a sensor blurs

For each photo and shake: PSNR of the blurred input, and the gain over it of the any-blur network
with the true kernel, with the estimated one (kernel_estimation.py, as --apply does it, its doubt
included: no blur undone where the photo's edges are too faint), and of Wiener with the estimated
kernel; with --blind, a blind network's; with --jpeg, on the blurred photo saved as a JPEG, its
noise read as --apply reads a JPEG's (the true kernel's network is told the noise drawn before it).
PSNR is aligned up to 3 pixels' shift, in quarters of a pixel, and leaves out an 18-pixel border, as
Levin et al.'s evaluation of blind deblurring does (an estimated kernel may sit a fraction of a
pixel off); the kernel error is |estimated - true| / |true| at their best shift; the seconds are the
estimate's. The means at the end are over every photo and shake.
"""

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import skimage
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from any_blur import load_network  # noqa: E402

import Deblur  # noqa: E402
from blurs import (  # noqa: E402
    NO_BLUR,
    blur,
    blurred_in_linear_light,
    camera_shake,
    photographed,
)
from deconvolution import estimated_noise, wiener_by_rule, wrapped_smoothly  # noqa: E402
from kernel_estimation import (  # noqa: E402
    centred_on_centroid,
    cleaned,
    estimate_kernel,
    gradients,
    grey_region,
    kernel_fitting,
    trusted_edges,
    without_haze,
)
from plumbing.checkpoints import SHIPPED_MODEL  # noqa: E402
from plumbing.images import as_saved_jpeg, image_to_tensor  # noqa: E402

SHAKES = 2**32 + 78  # the validation generator of any_blur.py: no training run draws from it
SKIMAGE = Path(skimage.__file__).parent / "data"
PHOTOS = ("ihc", "motorcycle_left", "coins", "page", "moon", "cell")  # none in data/
REACHES = (3, 5, 7, 9, 11, 13, 15)  # pixels from the kernel's centre: 7 to 31 px wide
WIDTH = 31  # the kernels' square, and the width estimated
LONGEST = 400  # photos are scaled to at most this many pixels a side


def restored(net, trained, blurred, kernel, noise, rounds=Deblur.prior_rounds):
    """The network's restoration as --apply makes it: with its rounds of plug and play."""
    with torch.no_grad():
        restoration = Deblur.plug_and_play(net, blurred, kernel, noise, trained, rounds)
    return restoration.float().clamp(0, 1)


def psnr_aligned(image, sharp, border=18, most=3):
    """PSNR against the sharp image at the best shift of up to `most` pixels, in quarters of a
    pixel (bilinear), as Levin et al.'s comp_upto_shift measures blind deblurring: a blind estimate
    knows its image up to a shift. The whole pixels first, then the quarters around the best."""
    height, width = sharp.shape[-2:]
    inner = sharp[..., border : height - border, border : width - border]

    def error(shift):
        return float((moved(image, *shift, border) - inner).square().mean())

    pixels = [
        (rows, columns) for rows in range(-most, most + 1) for columns in range(-most, most + 1)
    ]
    rows, columns = min(pixels, key=error)
    quarters = [
        (rows + down / 4, columns + across / 4) for down in range(-3, 4) for across in range(-3, 4)
    ]
    return -10 * math.log10(max(min(map(error, quarters)), 1e-12))


def moved(image, rows, columns, border):
    """The image without `border` pixels on each side, sampled `rows` and `columns` pixels on
    (fractions of a pixel bilinearly, as interp2)."""
    top, left = math.floor(rows), math.floor(columns)
    down, across = rows - top, columns - left
    height, width = image.shape[-2:]

    def part(row, column):
        row, column = border + top + row, border + left + column
        return image[..., row : height - 2 * border + row, column : width - 2 * border + column]

    above = (1 - across) * part(0, 0) + across * part(0, 1)
    below = (1 - across) * part(1, 0) + across * part(1, 1)
    return (1 - down) * above + down * below


def kernel_fitted_to_sharp(sharp, blurred):
    """The kernel estimate_kernel's kernel step finds with the sharp photo itself as its latent
    image (every edge inside the trusted border): what the estimate would reach if its latent
    images were perfect. It tells what the search loses from what the photo's noise allows."""
    padded = [
        wrapped_smoothly(grey_region(image)[None, None], WIDTH)[0, 0] for image in (sharp, blurred)
    ]
    edges = gradients(padded[0]) * trusted_edges(padded[1], WIDTH)
    return without_haze(
        centred_on_centroid(cleaned(kernel_fitting(edges, gradients(padded[1]), WIDTH)))
    )


def kernel_error(estimated, truth):
    """|estimated - true| / |true| at their best shift (both on a WIDTH square)."""
    estimated, truth = torch.as_tensor(estimated), torch.as_tensor(truth)
    shifts = [(rows, columns) for rows in range(-3, 4) for columns in range(-3, 4)]
    return min(float((estimated.roll(shift, (0, 1)) - truth).norm()) for shift in shifts) / float(
        truth.norm()
    )


def photo(name):
    image = Image.open(SKIMAGE / f"{name}.png").convert("RGB")
    scale = min(LONGEST / max(image.size), 1)
    size = (round(image.width * scale), round(image.height * scale))
    return image_to_tensor(image.resize(size, Image.LANCZOS), "cpu")


def cases(most_noise=3.0, jpeg=None, linear_light=False):
    """(photo's name, reach, noise, sharp, true kernel, blurred) of every photo and shake, the
    noise drawn from 1 to `most_noise` 8-bit steps (the same shakes whatever it is); with `jpeg`,
    the blurred photo saved as a JPEG of that quality, as a camera or a web page keeps it; with
    `linear_light`, blurred as a sensor blurs (blurs.blurred_in_linear_light)."""
    blurred_as = blurred_in_linear_light if linear_light else blur
    generator = torch.Generator().manual_seed(SHAKES)
    for name in PHOTOS:
        sharp = photo(name)
        for reach in REACHES:
            truth = camera_shake(reach, WIDTH // 2, generator)
            noise = 1 + (most_noise - 1) * float(torch.rand((), generator=generator))
            blurred = photographed(blurred_as(sharp, truth), noise, generator)
            yield (
                name,
                reach,
                noise,
                sharp,
                truth,
                as_saved_jpeg(blurred, jpeg) if jpeg is not None else blurred,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(SHIPPED_MODEL), help="an any-blur network")
    parser.add_argument("--blind", help="a blind checkpoint (--restore_from blurred), to compare")
    parser.add_argument(
        "--jpeg", type=int, help="save each blurred photo as a JPEG of this quality"
    )
    parser.add_argument("--linear_light", action="store_true", help="blur as a sensor does")
    args = parser.parse_args()
    torch.set_num_threads(2)
    net, trained = load_network(args.checkpoint)
    blind = load_network(args.blind) if args.blind else None
    rows = []
    print(
        "photo            reach  noise  blurred  true k  estimated  Wiener est  blind  k error  s"
        "  fitted to sharp"
    )
    for name, reach, noise, sharp, truth, blurred in cases(
        jpeg=args.jpeg, linear_light=args.linear_light
    ):
        began = time.perf_counter()
        told = estimated_noise(blurred, jpeg=args.jpeg is not None)  # as --apply reads it
        kernel, doubt = estimate_kernel(blurred, WIDTH, told, say=lambda line: None)
        seconds = time.perf_counter() - began
        kernel = NO_BLUR if doubt else kernel
        base = psnr_aligned(blurred, sharp)
        ceiling = kernel_fitted_to_sharp(sharp, blurred)
        row = Row(
            name,
            reach,
            noise,
            base,
            psnr_aligned(restored(net, trained, blurred, truth, noise), sharp) - base,
            psnr_aligned(restored(net, trained, blurred, kernel, told), sharp) - base,
            psnr_aligned(wiener_by_rule(blurred, kernel, told), sharp) - base,
            psnr_aligned(restored(*blind, blurred, None, 0), sharp) - base if blind else 0,
            1.0 if doubt else kernel_error(kernel, truth),
            seconds,
            psnr_aligned(restored(net, trained, blurred, ceiling, told), sharp) - base,
        )
        rows.append(row)
        print(said(row) + ("  (no blur undone: the estimate doubted)" if doubt else ""), flush=True)
    for name in PHOTOS:
        mine = [row for row in rows if row.photo == name]
        true_gain = statistics.mean(row.true_kernel for row in mine)
        kept = statistics.mean(row.estimated for row in mine) / true_gain
        ceiling = statistics.mean(row.fitted_to_sharp for row in mine) / true_gain
        print(
            f"{name}: the estimated kernel keeps {kept:.0%} of the true kernel's gain "
            f"(the kernel fitted to the sharp photo {ceiling:.0%})"
        )
    means = {field: statistics.mean(getattr(row, field) for row in rows) for field in MEASURED}
    print(said(Row("mean", None, None, **means)))
    below = sum(row.estimated < 0 for row in rows)
    print(
        f"The estimated kernel keeps {means['estimated'] / means['true_kernel']:.0%} of the true "
        f"kernel's gain; {below} of {len(rows)} results end below their blurred input "
        f"(worst {min(row.estimated for row in rows):+.2f} dB)"
    )


class Row(NamedTuple):
    """One photo and shake: the blurred input's PSNR, each method's gain over it (dB), the kernel
    error, the estimate's seconds."""

    photo: str
    reach: int | None
    noise: float | None
    blurred: float
    true_kernel: float
    estimated: float
    wiener_estimated: float
    blind: float
    kernel_error: float
    seconds: float
    fitted_to_sharp: float


MEASURED = Row._fields[3:]  # what the mean row averages


def said(row):
    """The row as the table prints it (a mean row has no reach nor noise)."""
    reach = "" if row.reach is None else row.reach
    noise = "" if row.noise is None else f"{row.noise:.2f}"
    return (
        f"{row.photo:16s} {reach:5} {noise:>6s} {row.blurred:8.2f} {row.true_kernel:+7.2f} "
        f"{row.estimated:+10.2f} {row.wiener_estimated:+11.2f} {row.blind:+6.2f} "
        f"{row.kernel_error:8.2f} {row.seconds:4.1f} {row.fitted_to_sharp:+16.2f}"
    )


if __name__ == "__main__":
    main()
