"""The lesson of issue 37 on the validation set, by the size of the blur: given the true kernel,
the classical deconvolutions and a network, on blind.py's photos (scikit-image's, none in data/)
and camera shakes (a generator no training run draws from) reaching 3 to 15 pixels from their
centre (7 to 31 px wide), noise of 1 to 8 8-bit steps (issue 37's range; --most_noise 3: the
blind lesson's), 8 bits, edges replicated.

    python benchmarks/by_size.py                                  # the shipped model
    python benchmarks/by_size.py --checkpoint runs/any/checkpoint.pt

Every method is told the true kernel and noise level. "Network" is its single pass (as a
training's summary measures it); "Plug and play" adds --apply's prior_rounds (Deblur.py's). PSNR
leaves out the kernels' half-width (15 pixels), as Deblur's summary does, without any shift (the
kernel is exact). Prints a row per photo and shake, then the mean gain over the blurred input of
each method for each reach, and the seconds each method took per photo.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blind import PHOTOS, REACHES, SHIPPED_MODEL, WIDTH, cases, load_network, restored  # noqa: E402

from results import deconvolutions, image_quality  # noqa: E402

METHODS = (
    "Wiener",
    "Wiener oracle",
    "Richardson–Lucy",
    "Sparse prior",
    "Network",
    "Plug and play",
)


def restorations(net, trained, blurred, sharp, kernel, noise):
    """{method: (restored image, seconds)} with the true kernel and noise level."""
    made = deconvolutions(blurred, kernel, noise, sharp, WIDTH // 2)
    made["Network"] = lambda: restored(net, trained, blurred, kernel, noise, rounds=0)
    made["Plug and play"] = lambda: restored(net, trained, blurred, kernel, noise)
    found = {}
    for method, make in made.items():
        began = time.perf_counter()
        image = make()
        found[method] = (image, time.perf_counter() - began)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(SHIPPED_MODEL), help="an any-blur network")
    parser.add_argument("--most_noise", type=float, default=8.0, help="in 8-bit steps")
    args = parser.parse_args()
    torch.set_num_threads(2)
    net, trained = load_network(args.checkpoint)
    rows = []
    print(f"{'photo':16s} reach  blurred  " + "  ".join(f"{m:>15s}" for m in METHODS))
    for name, reach, noise, sharp, kernel, blurred in cases(args.most_noise):
        before = image_quality(blurred, sharp, WIDTH // 2)[0]
        found = restorations(net, trained, blurred, sharp, kernel, noise)
        gains = {
            m: image_quality(image, sharp, WIDTH // 2)[0] - before
            for m, (image, _) in found.items()
        }
        rows.append((name, reach, gains, {m: seconds for m, (_, seconds) in found.items()}))
        print(
            f"{name:16s} {reach:5d} {before:8.2f}  "
            + "  ".join(f"{gains[m]:+15.2f}" for m in METHODS),
            flush=True,
        )
    print(f"\nmean gain over the blurred input, dB, on {len(PHOTOS)} photos:")
    for reach in (*REACHES, "all"):
        mine = [row for row in rows if reach in ("all", row[1])]
        means = {m: statistics.mean(row[2][m] for row in mine) for m in METHODS}
        label = f"reach {reach:>2}" if reach != "all" else "all      "
        print(f"  {label}  " + "  ".join(f"{m} {means[m]:+.2f}" for m in METHODS))
    seconds = {m: statistics.mean(row[3][m] for row in rows) for m in METHODS}
    print("seconds per photo: " + "  ".join(f"{m} {seconds[m]:.2f}" for m in METHODS))


if __name__ == "__main__":
    main()
