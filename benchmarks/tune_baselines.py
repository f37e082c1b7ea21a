"""How Deblur's classical baselines were tuned: Wiener's balance rule and Richardson-Lucy's
iterations, under the lesson table's protocol (whole photos, the kernel's half-width left out,
noise, 8 bits) on photos Deblur neither trains nor reports on (any_blur.py's validation photos),
with kernels of the random family drawn by a generator of their own.

    python benchmarks/tune_baselines.py                # about 16 minutes on two CPU cores
    python benchmarks/tune_baselines.py --only wiener  # or rl: one of the two

Prints, for Wiener, the best balance of every photo, kernel and noise level on a grid from 1e-6 to
10 (every quarter decade), the rule fitted to them (deconvolution.wiener_balance), and what the
rule loses against each image's best; for Richardson-Lucy, the mean PSNR at each iteration count
per noise level, whose best counts deconvolution.rl_iterations follows.
"""

import argparse
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from any_blur import PHOTOS, WIDTH  # noqa: E402

import deconvolution  # noqa: E402
from blurs import QUANTISATION, blur, photographed, random_kernels  # noqa: E402
from deconvolution import (  # noqa: E402
    richardson_lucy,
    sparse_deconvolution,
    sparse_fidelity,
    wiener,
)
from plumbing.images import image_to_tensor  # noqa: E402
from results import image_quality  # noqa: E402

TUNING = 2**32 + 79  # the kernels tuned on: neither trained on nor reported
EXPONENTS = [quarter / 4 for quarter in range(-24, 5)]
NOISE_LEVELS = (0.0, 1.0, 2.55, 5.0, 8.0)
ITERATIONS = (3, 5, 10, 20, 30, 50, 100)
SPARSENESSES = (2 / 3, 1.0)  # the sparse prior's exponents tried: Krishnan & Fergus's, and TV's
FIDELITIES = (0.03, 0.06, 0.12, 0.25, 0.5)  # its fidelity times the noise's variance, tried


def blurred_photos(kernels, noise_levels):
    """(photo, kernel number, noise, blurred, sharp) for every validation photo and blur."""
    for photo, path in PHOTOS["validation"].items():
        sharp = image_to_tensor(Image.open(path).convert("RGB"), "cpu")
        for number, kernel in enumerate(kernels):
            for noise in noise_levels:
                generator = torch.Generator().manual_seed(number)
                yield (
                    photo,
                    number,
                    noise,
                    photographed(blur(sharp, kernel), noise, generator),
                    sharp,
                )


def wiener_scores(kernels):
    """[(noise, kernel energy, {exponent: PSNR})] over the validation photos."""
    found = []
    for photo, number, noise, blurred, sharp in blurred_photos(kernels, NOISE_LEVELS):
        kernel = kernels[number]
        if torch.equal(blurred, sharp):  # no blur and no noise: nothing to restore
            continue
        curve = {}
        for exponent in EXPONENTS:
            curve[exponent] = image_quality(
                wiener(blurred, kernel, 10**exponent), sharp, WIDTH // 2
            )[0]
        found.append((noise, np.square(kernel).sum(), curve))
        best = max(curve, key=curve.get)
        print(
            f"{photo:10} kernel {number:2} noise {noise:4}: best balance 1e{best:+.2f}", flush=True
        )
    return found


def fitted_rule(found):
    """log10 balance = a + b log10(noise**2 + 1/12) + c log10(energy), by least squares."""
    rows, targets = [], []
    for noise, energy, curve in found:
        rows.append([1, math.log10(noise**2 + QUANTISATION**2), math.log10(energy)])
        targets.append(max(curve, key=curve.get))
    return np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)[0]


def loss_of_rule(found, coefficients):
    """{noise: PSNR below each image's best, on average}, interpolating each curve."""
    a, b, c = coefficients
    losses = {noise: [] for noise in NOISE_LEVELS}
    for noise, energy, curve in found:
        exponent = a + b * math.log10(noise**2 + QUANTISATION**2) + c * math.log10(energy)
        reached = np.interp(exponent, list(curve), list(curve.values()))
        losses[noise].append(max(curve.values()) - reached)
    return {noise: statistics.mean(values) for noise, values in losses.items()}


def richardson_lucy_scores(kernels):
    """{noise: {iterations: mean PSNR}} over the validation photos."""
    found = {noise: {count: [] for count in ITERATIONS} for noise in (0.0, 2.55, 8.0)}
    for _, number, noise, blurred, sharp in blurred_photos(kernels, found):
        for count in ITERATIONS:
            restored = richardson_lucy(blurred, kernels[number], count)
            found[noise][count].append(image_quality(restored, sharp, WIDTH // 2)[0])
    return {
        noise: {c: statistics.mean(v) for c, v in counts.items()} for noise, counts in found.items()
    }


def sparse_scores(kernels):
    """{(exponent, fidelity x variance): {noise: mean PSNR}} over the validation photos."""
    found = {}
    for _, number, noise, blurred, sharp in blurred_photos(kernels, (0.0, 2.55, 8.0)):
        for exponent in SPARSENESSES:
            deconvolution.SPARSENESS = exponent
            for scale in FIDELITIES:
                fidelity = sparse_fidelity(noise, scale)
                restored = sparse_deconvolution(blurred, kernels[number], fidelity)
                psnr = image_quality(restored, sharp, WIDTH // 2)[0]
                found.setdefault((exponent, scale), {}).setdefault(noise, []).append(psnr)
    return {
        key: {n: statistics.mean(v) for n, v in by_noise.items()} for key, by_noise in found.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("wiener", "rl", "sparse"), help="one baseline only")
    only = parser.parse_args().only
    kernels = random_kernels(24, WIDTH // 2, torch.Generator().manual_seed(TUNING))
    if only in (None, "sparse"):
        print("The sparse prior, mean PSNR by exponent and fidelity x the noise's variance:")
        for (exponent, scale), by_noise in sparse_scores(kernels[:8]).items():
            described = "  ".join(f"noise {n}: {psnr:.2f}" for n, psnr in by_noise.items())
            print(f"  exponent {exponent:.2f}, {scale:5}: {described}", flush=True)
    if only == "sparse":
        return
    if only != "rl":
        found = wiener_scores(kernels)
        a, b, c = fitted_rule(found)
        print(f"\nWiener's balance = 10**{a:.3f} x (noise**2 + 1/12)**{b:.3f} x energy**{c:.3f}")
        for noise, loss in loss_of_rule(found, (a, b, c)).items():
            print(
                f"  noise {noise:4}: the rule is {loss:.3f} dB below each image's best, on average"
            )
    if only == "wiener":
        return
    print("\nRichardson-Lucy, mean PSNR by iterations:")
    for noise, counts in richardson_lucy_scores(kernels[:8]).items():
        described = "  ".join(f"{count}: {psnr:.2f}" for count, psnr in counts.items())
        print(f"  noise {noise:4}: {described}; best {max(counts, key=counts.get)}")


if __name__ == "__main__":
    main()
