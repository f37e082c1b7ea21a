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

ITERATIONS = (10, 20, 30, 50, 100, 200)
BALANCES = (0.003, 0.01, 0.03, 0.1, 0.3)


def main():
    original = dict(Deblur.RL_ITERATIONS), dict(Deblur.WIENER_BALANCE)
    for size in (128, 512):
        for kind in ("gaussian", "motion", "defocus", "box"):
            sharp, blurred = (
                Deblur.image_to_tensor(image, "cpu")
                for image in Deblur.load_image_pair(
                    ROOT / "data" / "sample.jpg", size, kind, 5.0, 0.0
                )
            )
            kernel = Deblur.blur_kernel(kind, 5.0, 0.0)
            scores = {}
            for iterations, balance in zip(ITERATIONS, BALANCES + (BALANCES[-1],), strict=True):
                Deblur.RL_ITERATIONS[kind], Deblur.WIENER_BALANCE[kind] = iterations, balance
                restored = Deblur.deconvolve(blurred, kind, kernel)
                scores[f"RL {iterations}"] = Deblur.image_quality(
                    restored["Richardson–Lucy"], sharp
                )[0]
                scores[f"Wiener {balance}"] = Deblur.image_quality(restored["Wiener"], sharp)[0]
            blurred_psnr = Deblur.image_quality(blurred, sharp)[0]
            print(
                f"{size} px {kind:8s} blurred {blurred_psnr:5.2f} dB | "
                + "  ".join(
                    f"{name} {psnr:.2f}"
                    for name, psnr in sorted(scores.items(), key=lambda s: s[0][0])
                ),
                flush=True,
            )
            Deblur.RL_ITERATIONS.update(original[0]), Deblur.WIENER_BALANCE.update(original[1])


if __name__ == "__main__":
    main()
