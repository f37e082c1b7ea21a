"""The lesson table: trained checkpoints, Wiener and Richardson-Lucy on photos none of them saw,
each photo blurred many ways, with noise.

    python benchmarks/any_blur.py runs/fixed/checkpoint.pt runs/any/checkpoint.pt
    python benchmarks/any_blur.py --photos validation runs/any/checkpoint.pt   # to choose recipes

The blurs: the Gaussian of radius 5 the original trains on, smaller Gaussians, camera shakes of
the random family drawn by a generator of their own (HELD_OUT: no training run draws them), and
no blur at all. Each photo gets Gaussian noise of --noise 8-bit steps, then 8 bits. Every method is
given the true kernel and noise level, except a blind checkpoint (no kernel) and one trained on a
fixed blur, which undoes that blur whatever the photo's, as --apply does; PSNR leaves out
the kernel's half-width (15 pixels), as Deblur's summary does. Wiener's balance follows the rule
in deconvolution.py; "Wiener oracle" is Wiener at the best balance for each image, found with the
sharp one. Each network is measured as a training's summary measures it (its one pass) and as
--apply runs it ("..., plug and play": Deblur.py's prior_rounds, for an any-blur network only).
Prints one row per blur and photo, then the mean gain of each method over the blurred input.
"""

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import skimage
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import Deblur  # noqa: E402
from blurs import NO_BLUR, blur, blur_kernel, camera_shake, photographed  # noqa: E402
from plumbing.checkpoint_fields import trained_settings  # noqa: E402
from plumbing.images import image_to_tensor  # noqa: E402
from results import deconvolutions, image_quality  # noqa: E402

HELD_OUT = 2**32 + 77  # the camera shakes reported; recipes are chosen with VALIDATION's
VALIDATION = 2**32 + 78
SKIMAGE = Path(skimage.__file__).parent / "data"
PHOTOS = {
    "test": {"sample": ROOT / "data/sample.jpg", "cat": ROOT / "data/holdout.jpg"},
    # Photos neither trained on nor reported: scikit-image's, not shipped in data/
    "validation": {"ihc": SKIMAGE / "ihc.png", "motorcycle": SKIMAGE / "motorcycle_left.png"},
}
WIDTH = 31  # every kernel on a 31 x 31 canvas: the same border for every row


def blurs_to_test(photos, shakes):
    """{name: kernel}: the trained Gaussian, smaller ones, `shakes` camera shakes, and none."""
    seed = HELD_OUT if photos == "test" else VALIDATION
    generator = torch.Generator().manual_seed(seed)
    kernels = {f"gaussian {radius}": blur_kernel("gaussian", radius) for radius in (5, 3, 2, 1)}
    for number in range(1, shakes + 1):  # the family's camera shakes, reaching 3 to 15 pixels
        reach = 3 + 12 * float(torch.rand((), generator=generator))
        kernels[f"shake {number}"] = camera_shake(reach, 15, generator)
    kernels["no blur"] = NO_BLUR
    return {name: np.pad(k, (WIDTH - k.shape[0]) // 2) for name, k in kernels.items()}


def load_network(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    trained = trained_settings(checkpoint, path, Deblur.SETTINGS)
    net = Deblur.make_network(trained.model, trained.restore_from, 0, "cpu").eval()
    net.load_state_dict(checkpoint["model"])
    return net, trained


def trained_kernel(trained):
    """The one blur a fixed-blur checkpoint undoes, as --apply uses it, whatever the photo's."""
    return blur_kernel(trained.blur_kind, trained.blur_radius, trained.blur_angle)


def scores(photos, checkpoints, noise, shakes):
    """{(photo, blur): {method: PSNR gain over the blurred input}}."""
    networks = {Path(path).parent.name: load_network(path) for path in checkpoints}
    found = {}
    for photo, path in PHOTOS[photos].items():
        sharp = image_to_tensor(Image.open(path).convert("RGB"), "cpu")
        for name, kernel in blurs_to_test(photos, shakes).items():
            generator = torch.Generator().manual_seed(len(found))
            blurred = photographed(blur(sharp, kernel), noise, generator)
            border = WIDTH // 2
            deconvolved = deconvolutions(blurred, kernel, noise, sharp, border)
            images = {method: make() for method, make in deconvolved.items()}
            with torch.no_grad():
                for label, (net, trained) in networks.items():
                    undone = kernel if trained.blur_kind == "random" else trained_kernel(trained)
                    images[label] = net(Deblur.network_input(blurred, undone, noise, trained))
                    rounds = Deblur.prior_rounds  # as --apply: none but for an any-blur network
                    images[f"{label}, plug and play"] = Deblur.plug_and_play(
                        net, blurred, undone, noise, trained, rounds
                    )
            before = image_quality(blurred, sharp, border)[0]
            gains = {
                m: image_quality(image, sharp, border)[0] - before for m, image in images.items()
            }
            found[photo, name] = {"blurred": before, **gains}
            print(
                f"{photo:10} {name:12} blurred {before:6.2f} dB  "
                + "  ".join(f"{method} {gain:+6.2f}" for method, gain in gains.items()),
                flush=True,
            )
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="checkpoints, each named by its folder")
    parser.add_argument("--photos", choices=PHOTOS, default="test")
    parser.add_argument("--noise", type=float, default=2.55, help="in 8-bit steps (2.55: 1%%)")
    parser.add_argument("--shakes", type=int, default=8, help="camera shakes of the family")
    args = parser.parse_args()
    torch.manual_seed(0)
    found = scores(args.photos, args.checkpoints, args.noise, args.shakes)
    methods = list(next(iter(found.values())))[1:]
    print("\nmean gain over the blurred input, dB:")
    for group, keep in (
        ("camera shakes", lambda blur_name: blur_name.startswith("shake")),
        ("Gaussians", lambda blur_name: blur_name.startswith("gaussian")),
        ("no blur", lambda blur_name: blur_name == "no blur"),
    ):
        rows = [gains for (photo, name), gains in found.items() if keep(name)]
        means = {m: statistics.mean(row[m] for row in rows) for m in methods}
        print(f"{group:14}" + "  ".join(f"{m} {mean:+.2f}" for m, mean in means.items()))
    for method in methods[3:]:
        beaten = sum(row[method] > row["Wiener oracle"] for row in found.values())
        worse = sum(row[method] < 0 for row in found.values())
        print(f"{method}: above the oracle in {beaten} of {len(found)}, below its input in {worse}")


if __name__ == "__main__":
    main()
