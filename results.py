"""Deblur's results: how good a restoration is (PSNR, SSIM), the printed summary, the comparison
figure and the training curves. Change a plot here; the numbers come from Deblur.py's evaluate.
"""

import math
from typing import NamedTuple

import torch
from skimage.metrics import structural_similarity
from torch.nn import functional as F

from plumbing.checkpoints import HISTORY_COLUMNS
from plumbing.files import save_figure, save_image
from plumbing.images import tensor_to_image, to_hwc
from plumbing.progress import psnr_from_mse, write_history

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
    """One image of the comparison: its label, the sharp original, and {method: Result}."""

    label: str
    sharp: torch.Tensor
    results: dict


def image_quality(image, reference, border=0):
    """(PSNR in dB, SSIM) of an image in [0, 1] against the reference, leaving out `border` pixels
    on each side, as deblurring papers do: there the blur mixed in pixels from past the edge."""
    border = max(0, min(border, (min(image.shape[-2:]) - 11) // 2))  # SSIM's window needs 11x11
    inside = (..., slice(border, image.shape[-2] - border), slice(border, image.shape[-1] - border))
    image = image[inside].float().cpu()
    reference = reference[inside].float().cpu()
    pair = (image[0].numpy(), reference[0].numpy())
    similarity = structural_similarity(*pair, channel_axis=0, data_range=1.0, **GAUSSIAN_SSIM)
    return psnr_from_mse(F.mse_loss(image, reference).item()), similarity


def print_summary(rows, border):
    """A line per method: PSNR, SSIM and gain over the blurred input, for each image."""
    if rows[0].label:
        print("Neither image below was trained on: the network learned from the folder.")
    print(f"PSNR and SSIM leave out a {border}-pixel border, the blur kernel's half-width (less on")
    print("an image too small to keep SSIM's 11x11 window), as deblurring papers do:")
    for name in rows[0].results:
        described = []
        for row in rows:
            result = describe(row.results[name], row.results["Blurred"])
            described.append(row.label.lower() + result)
        print(f"{name + ':':17}" + " | ".join(described))


def describe(result, blurred):
    text = f"PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f}"
    if not math.isfinite(blurred.psnr):
        return text + " (no blur to undo)"
    if result is blurred:
        return text
    gain = result.psnr - blurred.psnr
    return text + f" (gain {gain:+.2f} dB, {result.ssim - blurred.ssim:+.4f} SSIM)"


def save_comparison(rows, kernel, path, beside="Richardson–Lucy"):
    """comparison.png: a row per image, the original's panels (original, blurred, reconstructed)
    with the `beside` baseline before the last, and the kernel drawn on the blurred one."""
    import matplotlib.pyplot as plt  # a third of a second to import: only when drawing

    figure, axes = plt.subplots(len(rows), 4, figsize=(20, 5.6 * len(rows)), squeeze=False)
    # Fixed margins: a tight bounding box would draw the whole figure twice
    top = 1 - 0.5 / (5.6 * len(rows))  # half an inch for the first row's two-line titles
    figure.subplots_adjust(left=0.005, right=0.995, bottom=0.01, top=top, wspace=0.03, hspace=0.2)
    for row_axes, row in zip(axes, rows, strict=True):
        panels = {
            "Original Image": None,
            "Blurred Image": row.results["Blurred"],
            beside: row.results[beside],
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
        inset.imshow(kernel, cmap="magma")
        inset.set_title(f"kernel {kernel.shape[0]}x{kernel.shape[1]}", fontsize=8)
    save_figure(figure, path)


def save_training_curves(history, path, baselines):
    """training_curves.png: the loss terms (log scale) and the PSNR against the epoch, with
    `baselines` ({name: PSNR}, on the same scale as the training PSNR) as lines."""
    import matplotlib.pyplot as plt

    columns = torch.tensor(history, dtype=torch.float64).reshape(-1, len(HISTORY_COLUMNS)).T
    series = dict(zip(HISTORY_COLUMNS, columns, strict=True))
    figure, (loss_ax, psnr_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    figure.subplots_adjust(left=0.09, right=0.98, bottom=0.12, top=0.92, wspace=0.22)
    for name in ("total", "mse", "perceptual"):
        if (series[name] > 0).any():  # an unused term (all 0) has no place on a log scale
            loss_ax.plot(series["epoch"], series[name], ".-", label=name)
    psnr_ax.plot(series["epoch"], series["psnr"], ".-", label="reconstruction")
    for (name, psnr), style in zip(baselines.items(), ("--", ":"), strict=False):
        if math.isfinite(psnr):
            psnr_ax.axhline(psnr, color="grey", linestyle=style, label=name)
    title = "PSNR against the original" if baselines else "PSNR of the training crops"
    loss_ax.set(yscale="log", xlabel="epoch", ylabel="loss", title="Loss")
    psnr_ax.set(xlabel="epoch", ylabel="PSNR (dB)", title=title)
    loss_ax.legend()
    psnr_ax.legend()
    save_figure(figure, path)


def save_results(out, rows, kernel, history, folder, beside="Richardson–Lucy"):
    """comparison.png and reconstructed_image.jpg; history.csv and training_curves.png, with the
    blurred input's and the baseline's PSNR as lines where they are on the training scale."""
    import matplotlib.pyplot as plt
    from matplotlib.backends import BackendFilter, backend_registry

    save_comparison(rows, kernel, out / "comparison.png", beside)
    restored = tensor_to_image(rows[0].results["Network"].image)
    save_image(restored, out / "reconstructed_image.jpg", "JPEG")
    write_history(out / "history.csv", history)
    baselines = {}
    if not folder:  # a folder trains on crops: their PSNR is not the test images'
        for name in ("Blurred", beside):
            baselines[name] = rows[0].results[name].psnr
    save_training_curves(history, out / "training_curves.png", baselines)
    if plt.get_backend() in backend_registry.list_builtin(BackendFilter.INTERACTIVE):
        plt.show()  # a window where there is a display; nothing waits where there is none
    plt.close("all")
