"""Deblur's results: how good a restoration is (PSNR, SSIM), Wiener at its best balance (an oracle),
the printed summary, the comparison figure, the training curves and progress.png. Change a plot
here; the numbers come from Deblur.py's evaluate, the deconvolutions from deconvolution.py.
"""

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from skimage.metrics import structural_similarity
from torch.nn import functional as F

from deconvolution import (
    richardson_lucy,
    rl_iterations,
    sparse_deconvolution,
    sparse_fidelity,
    wiener_at,
    wiener_by_rule,
    wiener_spectra,
)
from plumbing.files import save_figure, save_image
from plumbing.images import tensor_to_image, thumbnail, to_hwc
from plumbing.progress import RUN_COLUMNS

CAPTION = 36  # pixels above each frame of progress.png for its epoch and PSNR
FONT = ImageFont.load_default(size=13)
# Each image's row label, by the setting it came from.
LABELS = {"image_path": "", "sample": "Unseen: ", "holdout_path": "Held out: "}
# Wang et al.'s SSIM: a Gaussian window of sigma 1.5, the mean over the channels
GAUSSIAN_SSIM = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


class Result(NamedTuple):
    """One method's restoration of an image, and its PSNR and SSIM against the sharp one."""

    image: torch.Tensor
    psnr: float
    ssim: float


class Row(NamedTuple):
    """One image of the comparison: its label, the sharp original, {method: Result}, the kernel it
    was blurred with, and the border its metrics leave out."""

    label: str
    sharp: torch.Tensor
    results: dict
    kernel: np.ndarray
    border: int


def psnr_from_mse(mse):
    """PSNR in dB of images in [0, 1] whose mean squared error is `mse`."""
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def without_border(image, border):
    """The image as the metrics see it: without `border` pixels on each side, or fewer on an image
    too small to keep SSIM's 11x11 window."""
    border = max(0, min(border, (min(image.shape[-2:]) - 11) // 2))
    return image[..., border : image.shape[-2] - border, border : image.shape[-1] - border]


def psnr(image, reference, border=0):
    """PSNR in dB of an image in [0, 1] against the reference, `border` pixels left out."""
    image, reference = without_border(image, border), without_border(reference, border)
    return psnr_from_mse(F.mse_loss(image.float(), reference.float()).item())


def image_quality(image, reference, border=0):
    """(PSNR in dB, SSIM) of an image in [0, 1] against the reference, leaving out `border` pixels
    on each side, as deblurring papers do: there the blur mixed in pixels from past the edge."""
    image = without_border(image, border).float().cpu()
    reference = without_border(reference, border).float().cpu()
    pair = (image[0].numpy(), reference[0].numpy())
    similarity = structural_similarity(*pair, channel_axis=0, data_range=1.0, **GAUSSIAN_SSIM)
    return psnr(image, reference), similarity


class Frames:
    """progress.png's frames: the network's reconstruction of one image (its network input, sharp
    original and border) at the epochs Progress says, small, with its PSNR."""

    def __init__(self, inputs, sharp, border):
        self.inputs, self.sharp, self.border = inputs, sharp, border
        self.taken = []  # [epoch, PSNR, 8-bit (H, W, 3) thumbnail], as a checkpoint keeps them

    def take(self, epoch, net):
        net.eval()  # as it will be used
        with torch.no_grad():  # its class's forward: a compiled one would compile again
            restored = type(net).forward(net, self.inputs).float().clamp(0, 1)
        net.train()
        quality = psnr(restored, self.sharp, self.border)
        self.taken.append([epoch, quality, thumbnail(restored)])


def best_wiener(blurred, kernel, sharp, border):
    """Wiener at the balance that restores this very image best, chosen by comparing with the sharp
    image: an oracle, which no real photo allows, and so the strongest Wiener there is. Searched
    every quarter decade from 1e-6 to 10, then every sixteenth around the best."""
    tried = {}
    spectra = wiener_spectra(blurred, kernel)  # the same for every balance: made once

    def psnr_at(exponent):
        if exponent not in tried:
            restored = wiener_at(spectra, 10**exponent)
            tried[exponent] = (psnr(restored, sharp, border), restored)
        return tried[exponent][0]

    best = max((quarter / 4 for quarter in range(-24, 5)), key=psnr_at)
    best = max((best + sixteenth / 16 for sixteenth in range(-3, 4)), key=psnr_at)
    return tried[best][1]


def compared(setting, pair, restored):
    """The comparison's Row for a test image (a blurs.Pair) and the network's restoration of it:
    beside it, the blurred input and the deconvolutions with its known kernel (Wiener by its rule
    and at this image's best balance, an oracle; Richardson-Lucy; the sparse gradient prior),
    each with its PSNR and SSIM (Pair.border left out)."""
    blurred, sharp, kernel, noise = pair
    deconvolved = deconvolutions(blurred, kernel, noise, sharp, pair.border)
    images = {"Blurred": blurred, **{name: make() for name, make in deconvolved.items()}}
    images["Network"] = restored
    return row_of(setting, images, sharp, pair.border, kernel)


def deconvolutions(blurred, kernel, noise, sharp, border):
    """{name: a function that makes it}: the classical deconvolutions of `blurred` with its known
    kernel and noise that a network is set beside, here and in the benchmarks (the oracle is
    told the sharp image and the border the metrics leave out)."""
    return {
        "Wiener": lambda: wiener_by_rule(blurred, kernel, noise),
        "Wiener oracle": lambda: best_wiener(blurred, kernel, sharp, border),
        "Richardson–Lucy": lambda: richardson_lucy(blurred, kernel, rl_iterations(noise)),
        "Sparse prior": lambda: sparse_deconvolution(blurred, kernel, sparse_fidelity(noise)),
    }


def row_of(setting, images, sharp, border, kernel):
    """The comparison's Row of a test image: {name: Result} of each of `images` against the sharp
    one, `border` pixels left out, labelled for the setting the image came from."""
    results = {}
    for name, image in images.items():
        psnr, ssim = image_quality(image, sharp, border)
        results[name] = Result(image.cpu(), psnr, ssim)
    return Row(LABELS[setting], sharp.cpu(), results, kernel, border)


def print_summary(rows, folder):
    """A line per method: PSNR, SSIM and gain over the blurred input, for each image; then the
    network's gain over the strongest classical result (CLASSICAL's best for that image)."""
    if folder:
        print("Neither image below was trained on: the network learned from the folder.")
    print(f"PSNR and SSIM leave out a {rows[0].border}-pixel border, the blur kernel's half-width")
    print("(less on an image too small to keep SSIM's 11x11 window), as deblurring papers do.")
    print("Wiener oracle: Wiener at the balance best for each image, chosen with the sharp one.")
    for name in rows[0].results:
        described = []
        for row in rows:
            result = describe(row.results[name], row.results["Blurred"])
            described.append(row.label.lower() + result)
        print(f"{name + ':':17}" + " | ".join(described))
    gains = [against_strongest(row.results) for row in rows]
    print("The network against the strongest classical result: " + " | ".join(gains))


CLASSICAL = ("Wiener oracle", "Sparse prior")  # the strongest classical results there are


def against_strongest(results):
    """The network's PSNR over the best of the CLASSICAL results, named; where the blurred input
    is the sharp image, there is nothing to compare (the oracle is then as exact as float
    arithmetic)."""
    if not math.isfinite(results["Blurred"].psnr):
        return "no blur to undo"
    strongest = max(CLASSICAL, key=lambda name: results[name].psnr)
    return f"{results['Network'].psnr - results[strongest].psnr:+.2f} dB ({strongest.lower()})"


def describe(result, blurred):
    text = f"PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f}"
    if not math.isfinite(blurred.psnr):
        return text + " (no blur to undo)"
    if result is blurred:
        return text
    gain = result.psnr - blurred.psnr
    return text + f" (gain {gain:+.2f} dB, {result.ssim - blurred.ssim:+.4f} SSIM)"


def save_comparison(rows, path):
    """comparison.png: a row per image, the original's panels (original, blurred, reconstructed)
    with the Wiener oracle before the last, and the image's kernel drawn on the blurred one."""
    import matplotlib.pyplot as plt  # a third of a second to import: only when drawing

    figure, axes = plt.subplots(len(rows), 4, figsize=(20, 5.6 * len(rows)), squeeze=False)
    # Fixed margins: a tight bounding box would draw the whole figure twice
    top = 1 - 0.5 / (5.6 * len(rows))  # half an inch for the first row's two-line titles
    figure.subplots_adjust(left=0.005, right=0.995, bottom=0.01, top=top, wspace=0.03, hspace=0.2)
    for row_axes, row in zip(axes, rows, strict=True):
        panels = {
            "Original Image": None,
            "Blurred Image": row.results["Blurred"],
            "Wiener at its best (oracle)": row.results["Wiener oracle"],
            "Reconstructed Image": row.results["Network"],
        }
        for ax, (title, result) in zip(row_axes, panels.items(), strict=True):
            ax.axis("off")
            if result is None:
                ax.imshow(to_hwc(row.sharp))
                ax.set_title(row.label + title)
                continue
            ax.imshow(to_hwc(result.image))
            ax.set_title(f"{row.label}{title}\nPSNR {result.psnr:.2f} dB, SSIM {result.ssim:.3f}")
        inset = row_axes[1].inset_axes([0.72, 0.02, 0.26, 0.26], xticks=[], yticks=[])
        inset.imshow(row.kernel, cmap="magma")
        inset.set_title(f"kernel {row.kernel.shape[0]}x{row.kernel.shape[1]}", fontsize=8)
    save_figure(figure, path)


def save_training_curves(history, path, baselines):
    """training_curves.png: the loss terms (log scale) and the PSNR against the epoch, with
    `baselines` ({name: PSNR}, on the same scale as the training PSNR) as lines."""
    import matplotlib.pyplot as plt

    names = dict.fromkeys(name for row in history for name in row)  # a resumed run's new ones too
    series = {name: np.array([row.get(name, np.nan) for row in history]) for name in names}
    epochs = np.array([row["epoch"] for row in history])
    figure, (loss_ax, psnr_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    figure.subplots_adjust(left=0.09, right=0.98, bottom=0.12, top=0.92, wspace=0.22)
    for name in [name for name in series if name not in RUN_COLUMNS]:
        if (series[name] > 0).any():  # an unused term (all 0) has no place on a log scale
            loss_ax.plot(epochs, series[name], ".-", label=name)
    psnr_ax.plot(epochs, series.get("psnr", []), ".-", label="reconstruction")
    for (name, psnr), style in zip(baselines.items(), ("--", ":"), strict=False):
        if math.isfinite(psnr):
            psnr_ax.axhline(psnr, color="grey", linestyle=style, label=name)
    title = "PSNR against the original" if baselines else "PSNR of the training crops"
    loss_ax.set(yscale="log", xlabel="epoch", ylabel="loss", title="Loss")
    psnr_ax.set(xlabel="epoch", ylabel="PSNR (dB)", title=title)
    if loss_ax.lines:  # none when every term was 0 (an image that needed no restoring)
        loss_ax.legend()
    psnr_ax.legend()
    save_figure(figure, path)


def save_results(cfg, rows, progress):
    """In output_dir: comparison.png, reconstructed_image.jpg, progress.png and progress.gif, and
    training_curves.png, with the blurred input's and the baseline's PSNR as lines where the
    training images are the first test image (a single image, blurred one way)."""
    import matplotlib.pyplot as plt
    from matplotlib.backends import BackendFilter, backend_registry

    out = Path(cfg.output_dir)
    trained_on_the_test = not cfg.folder and cfg.blur_kind != "random"
    save_comparison(rows, out / "comparison.png")
    restored = tensor_to_image(rows[0].results["Network"].image)
    save_image(restored, out / "reconstructed_image.jpg", "JPEG")
    save_progress(progress.frames.taken, rows[0], out)
    baselines = {}
    if trained_on_the_test:  # crops, or fresh blurs: their PSNR is not the test image's
        for name in ("Blurred", "Wiener oracle"):
            baselines[name] = rows[0].results[name].psnr
    save_training_curves(progress.history, out / "training_curves.png", baselines)
    if plt.get_backend() in backend_registry.list_builtin(BackendFilter.INTERACTIVE):
        plt.show()  # a window where there is a display; nothing waits where there is none
    plt.close("all")


def save_progress(frames, row, out):
    """progress.png: the blurred input, the network's reconstruction at each frame's epoch with its
    PSNR, and the sharp original, eight to a row; progress.gif: the same, one after the other."""
    blurred = row.results["Blurred"]
    tiles = [captioned(thumbnail(blurred.image), "blurred input", f"PSNR {blurred.psnr:.2f} dB")]
    for epoch, psnr, image in frames:
        tiles.append(captioned(image, f"epoch {epoch}", f"PSNR {psnr:.2f} dB"))
    tiles.append(captioned(thumbnail(row.sharp), "sharp original", ""))
    columns = min(len(tiles), 8)
    width, height = tiles[0].size
    sheet = Image.new("RGB", (columns * width, math.ceil(len(tiles) / columns) * height), "white")
    for index, tile in enumerate(tiles):
        sheet.paste(tile, (index % columns * width, index // columns * height))
    save_image(sheet, out / "progress.png", "PNG")
    durations = [800] * (len(tiles) - 1) + [2500]  # a pause on the sharp original
    more = {"save_all": True, "append_images": tiles[1:], "duration": durations, "loop": 0}
    save_image(tiles[0], out / "progress.gif", "GIF", **more)


def captioned(image, first_line, second_line):
    """An 8-bit (H, W, 3) image under two lines of caption, as one Pillow image; a small one is
    enlarged (pixels repeated) to leave its caption room."""
    picture = Image.fromarray(image.numpy())
    enlarge = math.ceil(120 / picture.width)
    picture = picture.resize((picture.width * enlarge, picture.height * enlarge), Image.NEAREST)
    tile = Image.new("RGB", (picture.width, picture.height + CAPTION), "white")
    tile.paste(picture, (0, CAPTION))
    draw = ImageDraw.Draw(tile)
    draw.text((4, 2), first_line, fill="black", font=FONT)
    draw.text((4, 18), second_line, fill="black", font=FONT)
    return tile
