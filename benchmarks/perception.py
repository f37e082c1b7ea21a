"""The perception-distortion lesson (Blau & Michaeli, CVPR 2018): the folder quick look's task
(a Gaussian of radius 5, Wiener first), trained five ways, measured on the two photos none saw.

    python benchmarks/perception.py              # trains the runs into runs/perception/, measures
    python benchmarks/perception.py --measure    # measures the checkpoints already there

The runs: the folder quick look (the U-Net, L1); the same with the adversarial term at 0.001
(SRGAN's weight) and at 0.01 (DeblurGAN's, against its content loss); and the ResNet for as
long as the U-Net's 600 steps take, its steps counted from the two step times measured side by
side first, and for the U-Net's 600 steps. For each photo: PSNR and SSIM (the kernel's
half-width left out), and sharpness: the mean gradient magnitude of the result over the sharp
photo's, which needs no reference network (1: as sharp as the photo; the blurred one is far
below; over 1: edges or noise added). Writes Resources/perception.jpg: the same crop of each
photo from every method.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import any_blur  # noqa: E402
import bench_train  # noqa: E402

import Deblur  # noqa: E402
from plumbing.command_line import FOLDER_QUICK_LOOK  # noqa: E402
from plumbing.images import to_hwc  # noqa: E402
from plumbing.photo_folder import read_image_folder  # noqa: E402
from results import without_border  # noqa: E402

RUNS = ROOT / "runs" / "perception"
QUICK_LOOK_STEPS = 600
# {run's folder: (its name in the table, what it adds to the folder quick look)}; the ResNet's
# steps are set by measurement
RECIPES = {
    "unet": ("U-Net, L1 (the folder quick look)", []),
    "unet-adversarial-0.001": ("U-Net, L1 + 0.001 adversarial", ["--adversarial_weight", "0.001"]),
    "unet-adversarial-0.01": ("U-Net, L1 + 0.01 adversarial", ["--adversarial_weight", "0.01"]),
    "resnet": ("ResNet, L1, as long as 600 U-Net steps", ["--model", "resnet"]),
    "resnet-600": ("ResNet, L1, 600 steps", ["--model", "resnet"]),
}
PHOTOS = {"sample": ROOT / "data/sample.jpg", "cat": ROOT / "data/holdout.jpg"}
CROPS = {"sample": (150, 190), "cat": (90, 150)}  # (top, left) of a detailed 128-pixel square
CROP = 128


def step_seconds(model):
    """The median seconds of one training step of the folder quick look with `model`."""
    argv = ["--image_path", "data/train", *FOLDER_QUICK_LOOK.split(), "--model", model]
    cfg, facts = bench_train.settings(argv)
    photos = read_image_folder(ROOT / cfg.image_path, cfg.crop_size, facts.around_crop)
    generator = torch.Generator().manual_seed(0)
    batches = Deblur.folder_batches([p.pixels for p in photos], cfg, facts, generator, None)
    step = bench_train.deblur_step(cfg, facts, batches, None)
    return bench_train.timed({model: step}, 3, 15, facts.device)[model]


def train(run, extra):
    """Deblur's own run of the recipe, into RUNS/run; its wall time in seconds."""
    out = RUNS / run
    argv = ["--image_path", "data/train", *FOLDER_QUICK_LOOK.split(), *extra]
    argv += ["--output_dir", str(out), "--holdout_path", str(PHOTOS["cat"])]
    began = time.perf_counter()
    assert Deblur.main(argv, vgg_weights=None) == 0, run
    return time.perf_counter() - began


def sharpness(image, sharp, border):
    """The image's mean gradient magnitude over the sharp photo's (border left out)."""

    def mean_gradient(picture):
        picture = without_border(picture, border).float().mean(dim=1)  # grey
        rows, columns = picture.diff(dim=-2)[..., :, :-1], picture.diff(dim=-1)[..., :-1, :]
        return (rows**2 + columns**2).sqrt().mean().item()

    return mean_gradient(image) / mean_gradient(sharp)


def measured(runs):
    """{photo: {method: (PSNR, SSIM, sharpness, image)}}, the baselines' from the first run's."""
    found = {photo: {} for photo in PHOTOS}
    for number, (run, (method, _)) in enumerate(runs.items()):
        net, trained = any_blur.load_network(RUNS / run / "checkpoint.pt")
        draws = torch.Generator().manual_seed(Deblur.TEST_DRAWS)
        for photo, photo_path in PHOTOS.items():
            pair = Deblur.load_image_pair(photo_path, None, trained, draws)
            row = Deblur.evaluate(net, "sample", pair, trained)
            names = (
                {"Blurred": "blurred input", "Wiener oracle": "Wiener oracle"} if not number else {}
            )
            names["Network"] = method
            for name, shown in names.items():
                result = row.results[name]
                score = sharpness(result.image, pair.sharp, pair.border)
                found[photo][shown] = (result.psnr, result.ssim, score, result.image)
            found[photo].setdefault("sharp photo", (np.inf, 1.0, 1.0, pair.sharp))
    return found


def print_table(found, seconds):
    print("| method | sample: PSNR, SSIM, sharpness | cat: PSNR, SSIM, sharpness | time |")
    print("|---|---:|---:|---:|")
    for method in found["sample"]:
        if method == "sharp photo":
            continue
        cells = []
        for photo in PHOTOS:
            psnr, ssim, score, _ = found[photo][method]
            cells.append(f"{psnr:.2f} dB, {ssim:.4f}, {score:.2f}")
        spent = seconds.get(method)
        print(f"| {method} | {' | '.join(cells)} | {f'{spent:.0f} s' if spent else ''} |")


def save_crops(found, path):
    """Each photo's crop from every method, side by side, labelled; one row a photo."""
    methods = ["sharp photo", *[m for m in found["sample"] if m != "sharp photo"]]
    label = 44  # three lines
    sheet = Image.new("RGB", (CROP * len(methods), (CROP + label) * len(PHOTOS)), "white")
    draw = ImageDraw.Draw(sheet)
    for line, (photo, (top, left)) in enumerate(CROPS.items()):
        for column, method in enumerate(methods):
            image = found[photo][method][3][..., top : top + CROP, left : left + CROP]
            pixels = (to_hwc(image.clamp(0, 1)) * 255).round().astype(np.uint8)
            corner = (column * CROP, line * (CROP + label) + label)
            sheet.paste(Image.fromarray(pixels), corner)
            words = method.replace(" (the folder quick look)", "").replace(
                "as long as 600 U-Net steps", "U-Net's time"
            )
            words = words.replace(" adversarial", " adv.").split(", ")
            for number, text in enumerate(words):
                draw.text((corner[0] + 2, corner[1] - label + 2 + 13 * number), text, fill="black")
    sheet.save(path, quality=92)
    print(f"Wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="measure the runs already there")
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    seconds = {}
    if not args.measure:
        unet, resnet = step_seconds("unet"), step_seconds("resnet")
        steps = round(QUICK_LOOK_STEPS * unet / resnet)
        print(f"a step: U-Net {unet * 1000:.0f} ms, ResNet {resnet * 1000:.0f} ms: {steps} steps")
        RECIPES["resnet"][1].extend(["--num_epochs", str(steps)])
        seconds = {method: train(run, extra) for run, (method, extra) in RECIPES.items()}
    found = measured(RECIPES)
    print_table(found, seconds)
    save_crops(found, ROOT / "Resources" / "perception.jpg")


if __name__ == "__main__":
    main()
