"""How Deblur's classical baselines were tuned: Richardson-Lucy's iterations, Wiener's balance.

    python benchmarks/tune_baselines.py            # the sample at 128 and 512 px, blur radius 5

Prints the PSNR of each setting against the sharp image, per blur kind; Deblur.py uses the best
per kind (rounded to a setting that is good at both sizes). Richardson-Lucy's iteration count is
its regulariser: on kernels whose spectrum has zeros (box, defocus, motion) it first sharpens, then
amplifies noise.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import Deblur  # noqa: E402
import results  # noqa: E402
from plumbing.images import image_to_tensor  # noqa: E402

ITERATIONS = (10, 20, 30, 50, 100, 200)
BALANCES = (0.003, 0.01, 0.03, 0.1, 0.3)


def scores(kind, size):
    """{setting: PSNR} of Wiener at each balance and Richardson-Lucy at each iteration count."""
    pair = Deblur.load_image_pair(ROOT / "data" / "sample.jpg", size, kind, 5.0, 0.0)
    blurred, sharp = (image_to_tensor(image, "cpu") for image in pair)
    kernel = Deblur.blur_kernel(kind, 5.0, 0.0)
    found = {"blurred": results.image_quality(blurred, sharp)[0]}
    for balance in BALANCES:
        restored = Deblur.wiener(blurred, kernel, balance)
        found[f"Wiener {balance}"] = results.image_quality(restored, sharp)[0]
    tuned = results.RL_ITERATIONS[kind]
    for iterations in ITERATIONS:
        results.RL_ITERATIONS[kind] = iterations
        restored = results.richardson_lucy(blurred, kernel, kind)
        found[f"RL {iterations}"] = results.image_quality(restored, sharp)[0]
    results.RL_ITERATIONS[kind] = tuned
    return found


def main():
    for size in (128, 512):
        for kind in Deblur.BLUR_KINDS:
            found = scores(kind, size)
            described = "  ".join(f"{name} {psnr:.2f}" for name, psnr in found.items())
            print(f"{size} px {kind:8s} {described}", flush=True)


if __name__ == "__main__":
    main()
