"""Deblur's results: the classical deconvolutions with the known kernel (Wiener, also the network's
first step, and Richardson-Lucy), how good a restoration is (PSNR, SSIM), the printed summary, the
comparison figure, the training curves and progress.png. Change a plot here; the numbers come
from Deblur.py's evaluate.
"""

import math
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from skimage import restoration
from skimage.metrics import structural_similarity
from torch.nn import functional as F

from plumbing.checkpoints import HISTORY_COLUMNS
from plumbing.files import save_figure, save_image
from plumbing.images import tensor_to_image, thumbnail, to_hwc
from plumbing.progress import inside, psnr_from_mse, write_history

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
    """One image of the comparison: its label, the sharp original, and {method: Result}."""

    label: str
    sharp: torch.Tensor
    results: dict


# Richardson-Lucy's iterations are its regulariser: on a kernel whose spectrum has zeros it first
# sharpens, then amplifies the noise. Tuned per kind on the sample (benchmarks/tune_baselines.py).
RL_ITERATIONS = {"gaussian": 100, "motion": 20, "defocus": 20, "box": 20}


def richardson_lucy(blurred, kernel, kind):
    """scikit-image's Richardson-Lucy deconvolution with the known kernel, after replicating the
    edges by the kernel's width (it assumes zeros past them). The three channels in one call, with
    the kernel one channel deep: scipy convolves along no axis of length 1, so this is the
    per-channel result exactly, in a third of the calls. In float32: as exact here, and twice to
    twenty times as fast as float64."""
    pad = kernel.shape[0]
    padding = ((pad, pad), (pad, pad), (0, 0))
    image = np.pad(to_hwc(blurred), padding, mode="edge")
    psf = kernel.astype(np.float32)[..., None]
    deconvolved = restoration.richardson_lucy(image, psf, RL_ITERATIONS[kind])[pad:-pad, pad:-pad]
    return torch.from_numpy(deconvolved).permute(2, 0, 1)[None].clamp(0, 1)


# The Wiener filter's regulariser per blur kind, tuned on the sample (benchmarks/tune_baselines.py)
WIENER_BALANCE = {"gaussian": 0.03, "motion": 0.1, "defocus": 0.1, "box": 0.3}
LAPLACIAN = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]])  # what scikit-image's Wiener damps


def wiener(blurred, kernel, balance, pad=True):
    """Non-blind Wiener deconvolution of (N, 3, H, W) images with the known kernel, by FFT on their
    device, as scikit-image's restoration.wiener: the kernel's inverse, damped by `balance` where
    the Laplacian is large (noise). The FFT treats the image as if it repeated past its edges: they
    are replicated by wiener_reach first (pad=False: crops that bring that margin themselves), so
    that no pixel sees the opposite edge, and cut off."""
    pad = wiener_reach(kernel) if pad else 0
    padded = F.pad(blurred.float(), [pad] * 4, mode="replicate")
    size = padded.shape[-2:]
    transfer = transfer_function(kernel, size, blurred.device)
    damping = balance * transfer_function(LAPLACIAN, size, blurred.device).abs() ** 2
    inverse = transfer.conj() / (transfer.abs() ** 2 + damping)
    restored = torch.fft.irfft2(torch.fft.rfft2(padded) * inverse, s=size)
    restored = restored[..., pad : size[0] - pad, pad : size[1] - pad].clamp(0, 1)
    return restored.contiguous(memory_format=torch.channels_last)


TRANSFER_FUNCTIONS = {}  # {(kernel, its shape and dtype, size, device): its transfer function}


def transfer_function(kernel, size, processor):
    """The kernel's 2-D Fourier transform at `size`, its centre moved to pixel (0, 0). Made once
    for each kernel, size and device: a folder's every step asks for the same three, and making
    one copies the kernel from the host."""
    key = (kernel.tobytes(), kernel.shape, kernel.dtype.str, tuple(size), torch.device(processor))
    if key not in TRANSFER_FUNCTIONS:
        if len(TRANSFER_FUNCTIONS) >= 32:  # a long-lived process (the tests): start afresh
            TRANSFER_FUNCTIONS.clear()
        placed = torch.zeros(size, device=processor)
        placed[: kernel.shape[0], : kernel.shape[1]] = torch.as_tensor(kernel, device=processor)
        centre = (-(kernel.shape[0] // 2), -(kernel.shape[1] // 2))
        TRANSFER_FUNCTIONS[key] = torch.fft.rfft2(placed.roll(centre, dims=(0, 1)))
    return TRANSFER_FUNCTIONS[key]


def wiener_reach(kernel):
    """How far Wiener's result at a pixel depends on the blurred image: three times the kernel's
    width (on the sample at sigma 5, a strip with this margin is within 0.14/255 of the whole
    image's result, within 1.8/255 with twice the width)."""
    return 3 * kernel.shape[0]


def image_quality(image, reference, border=0):
    """(PSNR in dB, SSIM) of an image in [0, 1] against the reference, leaving out `border` pixels
    on each side, as deblurring papers do: there the blur mixed in pixels from past the edge."""
    image = inside(image, border).float().cpu()
    reference = inside(reference, border).float().cpu()
    pair = (image[0].numpy(), reference[0].numpy())
    similarity = structural_similarity(*pair, channel_axis=0, data_range=1.0, **GAUSSIAN_SSIM)
    return psnr_from_mse(F.mse_loss(image, reference).item()), similarity


def row_of(setting, images, sharp, border):
    """The comparison's Row of a test image: {name: Result} of each of `images` against the sharp
    one, `border` pixels left out, labelled for the setting the image came from."""
    results = {}
    for name, image in images.items():
        psnr, ssim = image_quality(image, sharp, border)
        results[name] = Result(image.cpu(), psnr, ssim)
    return Row(LABELS[setting], sharp.cpu(), results)


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


def save_results(out, rows, kernel, progress, folder, beside="Richardson–Lucy"):
    """comparison.png, reconstructed_image.jpg, progress.png and progress.gif; history.csv and
    training_curves.png, with the blurred input's and the baseline's PSNR as lines where they are
    on the training scale."""
    import matplotlib.pyplot as plt
    from matplotlib.backends import BackendFilter, backend_registry

    save_comparison(rows, kernel, out / "comparison.png", beside)
    restored = tensor_to_image(rows[0].results["Network"].image)
    save_image(restored, out / "reconstructed_image.jpg", "JPEG")
    save_progress(progress.frames, rows[0], out)
    write_history(out / "history.csv", progress.history)
    baselines = {}
    if not folder:  # a folder trains on crops: their PSNR is not the test images'
        for name in ("Blurred", beside):
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
