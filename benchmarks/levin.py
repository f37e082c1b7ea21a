"""Blind --apply measured on real camera shake: Levin et al.'s (2009) benchmark, 4 photos of 255 x
255 pixels (grey), each taken 8 times with a shaking camera, the 8 kernels (13 to 27 px) measured
from points of light photographed beside them. A published benchmark: measured here, never tuned
on (every setting was chosen on benchmarks/blind.py's photos). Its files are not in the repository;
the layout read is that of SelfDeblur's copy (github.com/csdwren/SelfDeblur, datasets/levin):

    python benchmarks/levin.py --data levin  # gt/im1.png, gt/kernel1.png, im1_kernel1_img.png

For each blurred photo, the PSNR of: the input; the shipped model with the measured kernel; blind
(the kernel estimated as --apply estimates it, its doubts included); Wiener and total variation
(their rules, tuned on Deblur's own photos) with each kernel; all told the noise read from the
photo, as --apply. PSNR after the benchmark's comp_upto_shift: a 15-pixel border left out, the
best shift in whole pixels up to 5, then in quarters around it (comp_upto_shift tries every
quarter). The published rows: the papers' means under comp_upto_shift.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blind import WIDTH, kernel_error, load_network, psnr_aligned, restored  # noqa: E402

from blurs import NO_BLUR, blur  # noqa: E402
from deconvolution import (  # noqa: E402
    estimated_noise,
    sparse_deconvolution,
    sparse_fidelity,
    wiener_by_rule,
)
from kernel_estimation import centred_on_centroid, estimate_kernel  # noqa: E402
from plumbing.checkpoints import SHIPPED_MODEL  # noqa: E402

PHOTOS, KERNELS = range(1, 5), range(1, 9)
BORDER, MOST_SHIFT = 15, 5  # comp_upto_shift's crop and its largest shift, in pixels
PUBLISHED = {  # mean PSNR on this benchmark, as Ren et al. (2020, SelfDeblur, Table 1) list them
    "the measured kernel (a non-blind deconvolution with it)": 34.53,
    "Krishnan et al. 2011": 29.88,
    "Cho & Lee 2009": 30.57,
    "Levin et al. 2011": 30.80,
    "Xu & Jia 2010": 31.67,
    "Pan et al. 2016 (dark channel)": 32.69,
    "SelfDeblur (Ren et al. 2020)": 33.07,
}


def grey(path):
    """A grey PNG as a (1, 3, H, W) float tensor in [0, 1], as --apply reads a grey photo."""
    pixels = torch.from_numpy(np.array(Image.open(path).convert("L"))).float() / 255
    return pixels.expand(1, 3, *pixels.shape)


def measured_kernel(path, sharp, blurred):
    """The kernel PNG, summing to 1, turned the way it blurs the sharp photo into the blurred one:
    SelfDeblur's copy holds six of the eight turned half a turn (as PyTorch's conv2d, which
    correlates, applies them), kernels 4 and 8 as measured; turned wrong, a kernel cost the
    restoration 10 to 14 dB."""
    kernel = grey(path)[0, 0].double()
    kernel = kernel / kernel.sum()
    turns = (kernel, kernel.flip(0, 1))

    def fit(turn):
        return psnr_aligned(blur(sharp, turn.float()), blurred, BORDER, MOST_SHIFT)

    return max(turns, key=fit).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", required=True, help="the benchmark's folder (SelfDeblur's layout)"
    )
    parser.add_argument("--checkpoint", default=str(SHIPPED_MODEL), help="an any-blur network")
    args = parser.parse_args()
    torch.set_num_threads(2)
    net, trained = load_network(args.checkpoint)
    data = Path(args.data)
    rows = []
    for photo in PHOTOS:
        sharp = grey(data / "gt" / f"im{photo}.png")
        for number in KERNELS:
            blurred = grey(data / f"im{photo}_kernel{number}_img.png")
            truth = measured_kernel(data / "gt" / f"kernel{number}.png", sharp, blurred)
            began = time.perf_counter()
            noise = estimated_noise(blurred)
            kernel, doubt = estimate_kernel(blurred, WIDTH, noise, say=lambda line: None)
            seconds = time.perf_counter() - began
            estimated = NO_BLUR if doubt else kernel
            fidelity = sparse_fidelity(noise)
            measured, blind = (torch.from_numpy(k).float() for k in (truth, estimated))
            results = {
                "blurred": blurred,
                "measured kernel": restored(net, trained, blurred, truth, noise),
                "blind": restored(net, trained, blurred, estimated, noise),
                "Wiener, measured": wiener_by_rule(blurred, truth, noise),
                "Wiener, blind": wiener_by_rule(blurred, estimated, noise),
                "TV, measured": sparse_deconvolution(blurred, measured, fidelity),
                "TV, blind": sparse_deconvolution(blurred, blind, fidelity),
            }
            psnrs = {
                name: psnr_aligned(image, sharp, BORDER, MOST_SHIFT)
                for name, image in results.items()
            }
            if not rows:  # the columns are the results' names
                print("photo kernel   size  noise  " + "  ".join(psnrs) + "  k error  s")
            rows.append(psnrs)
            error = "doubted" if doubt else f"{kernel_error(kernel, centred(truth)):.2f}"
            print(
                f"im{photo}   kernel{number}  {truth.shape[0]:2d} px  {noise:.2f}  "
                + said(psnrs)
                + f"  {error:>7}  {seconds:.1f}",
                flush=True,
            )
    means = {name: statistics.mean(row[name] for row in rows) for name in rows[0]}
    print("mean                       " + said(means))
    gain = {name: means[name] - means["blurred"] for name in ("measured kernel", "blind")}
    kept = gain["blind"] / gain["measured kernel"]
    below = sum(row["blind"] < row["blurred"] for row in rows)
    print(
        f"Blind keeps {kept:.0%} of the measured kernel's gain; {below} of {len(rows)} below input"
    )
    print("Published, mean PSNR on this benchmark:")
    for method, value in PUBLISHED.items():
        print(f"  {value:.2f}  {method}")


def said(psnrs):
    """The PSNRs ({column: dB}), each under its column's name."""
    return "  ".join(f"{value:{len(name)}.2f}" for name, value in psnrs.items())


def centred(kernel):
    """An odd kernel in a WIDTH x WIDTH square, centred on its centroid as an estimate is: what
    kernel_error compares (it tries shifts of 3 pixels; a measured kernel's centroid may lie more
    than 3 off its middle)."""
    assert kernel.shape[0] % 2 == 1 and kernel.shape[0] <= WIDTH, kernel.shape
    square = np.pad(kernel, (WIDTH - kernel.shape[0]) // 2)
    return centred_on_centroid(torch.from_numpy(square)).numpy()


if __name__ == "__main__":
    main()
