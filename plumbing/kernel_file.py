"""The kernel --apply undoes, as a file: a measured one (--kernel), an image or a NumPy array,
checked and normalised; or one estimated from the photo (kernel_estimation.py does that), saved
beside the result so that --kernel reads it back; and the noise level it is told, said. What a
kernel does is blurs.py's.
"""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from plumbing.errors import DeblurError, note
from plumbing.files import free_output_name, name_checked, save_image
from plumbing.images import check_photo_fits_estimation, extent
from plumbing.job import stop_point

KERNEL_MOST = 255  # pixels a side of a measured blur kernel: more is background, not blur


def read_kernel(path):
    """A measured blur kernel (point-spread function) from a grayscale image (8 or 16 bits; a
    colour one is made grey, said in a note) or a NumPy .npy array: (k, k) float64 on an odd
    square, its middle pixel the kernel's, summing to 1. What cannot be one is refused by name."""
    path = name_checked(Path(path).expanduser(), "kernel")
    if path.is_dir():
        raise DeblurError(f"--kernel {path} is a folder; pass the kernel's file in it")
    if not path.is_file():
        raise DeblurError(
            f"kernel not found: {path} (pass --kernel PSF: a grayscale image or a .npy array)"
        )
    if path.suffix.lower() == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # damaged, Python objects, or another kind of file
            values = None
        if not isinstance(values, np.ndarray):  # or an .npz archive of several arrays
            raise DeblurError(
                f"--kernel {path} is not a NumPy array Deblur can read (damaged, or another kind "
                f"of file named .npy); save the kernel with numpy.save, or as a grayscale image"
            ) from None
    else:
        values = kernel_image(path)
    if values.dtype.kind not in "buif" or values.ndim != 2:
        raise DeblurError(
            f"--kernel {path} holds a {values.dtype} array of shape {values.shape}; a blur kernel "
            f"is 2-D numbers (1 x N for a straight horizontal line)"
        )
    values = values.astype(np.float64)
    wrong = None
    if not np.isfinite(values).all():
        wrong = "has NaN or infinite values"
    elif (values < 0).any():
        wrong = "has negative values; light spreads by zero or more"
    elif not values.any():
        wrong = "is all zeros: it spreads no light"
    elif max(values.shape) > KERNEL_MOST:
        wrong = f"is {values.shape[1]}x{values.shape[0]}, larger than {KERNEL_MOST} pixels a side"
    if wrong:
        raise DeblurError(f"--kernel {path} {wrong}; pass the photo's measured blur kernel")
    values = without_background(values / values.max(), path)  # scaled: no sum overflows
    side = max(values.shape) | 1  # odd: a middle pixel
    rows, columns = side - values.shape[0], side - values.shape[1]
    padding = ((rows // 2, rows - rows // 2), (columns // 2, columns - columns // 2))
    values = np.pad(values, padding)
    return values / values.sum()


BACKGROUND_MOST = 0.1  # a measured PSF's background floor is fainter than this share of its peak


def without_background(values, path):
    """A measured PSF less the faint floor its camera adds everywhere (its outer ring's median and
    three times its spread, when under BACKGROUND_MOST of the peak; said): left in, a floor of
    4/255 on a 41x41 PSF spreads a quarter of its light across the whole square, and the photo
    comes out 14 dB worse than blurred."""
    ring = np.concatenate([values[0], values[-1], values[1:-1, 0], values[1:-1, -1]])
    floor = np.median(ring)
    cut = floor + 3 * 1.4826 * np.median(np.abs(ring - floor))
    if not 0 < cut < BACKGROUND_MOST * values.max():
        return values
    note(f"{path.name}: took away its background, {cut / values.max():.1%} of its peak")
    return np.clip(values - cut, 0, None)


def kernel_image(path):
    """A kernel saved as an image: its pixel values, grey (a colour image is made grey)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "I", "F") and not image.mode.startswith("I;16"):
                note(f"{path.name}: the kernel is made grey from {image.mode}")
                image = image.convert("L")
            return np.asarray(image)
    except UnidentifiedImageError:
        raise DeblurError(
            f"--kernel {path} is neither an image Pillow can read nor a .npy array"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DeblurError(f"cannot read --kernel {path}: {e}") from None


def blind_kernel(estimate, photo, noise, cfg, stop, photo_path):
    """--apply's kernel for a photo no one measured: `estimate`d from it (kernel_estimation's
    estimate_kernel), up to cfg.kernel_size pixels wide, saved beside the result and said; or
    none (1x1) where the photo cannot tell its blur (edges too faint or too fine, a blur reaching
    across the square), said: the network, told there is no blur, leaves the photo nearly as it
    is. A stop request ends it between rounds."""
    width = cfg.kernel_size | 1  # odd: a middle pixel
    check_photo_fits_estimation(photo, width)
    kernel, doubt = estimate(photo, width, noise, lambda: stop_point(stop))
    if doubt:
        note(f"{doubt}; no blur is undone, the photo is left nearly as it is")
        return np.ones((1, 1))
    saved = save_kernel(kernel, cfg.output_dir, photo_path)
    across, high = extent(kernel)
    note(f"estimated the blur: {across}x{high} px, saved as {saved} (--kernel reads it)")
    return kernel


def save_kernel(kernel, output_dir, photo_path):
    """An estimated kernel as output_dir/<photo>_kernel.png (or the first free name: a user's file
    is never replaced), a 16-bit grayscale PNG with its peak white: a picture of the blur, and a
    file that --kernel reads back (within 1/65535 of its peak). Returns its path."""
    path = free_output_name(Path(output_dir), photo_path, "kernel")
    levels = np.round(kernel / kernel.max() * 65535).astype(np.uint16)
    save_image(Image.fromarray(levels), path, "PNG")
    return path


def note_noise(noise, trained, given):
    """The noise level --apply tells the network: estimated from the photo, said; given or
    estimated, far beyond what the network was trained on (a palette image's dithering, a heavy
    texture, a photo of high ISO), said so."""
    told = f"--noise_level {noise:g}"
    if not given:
        told = f"estimated the photo's noise at {noise:.2f} 8-bit steps (--noise_level sets it)"
    if noise > 2 * trained.noise_level + 1:
        note(
            f"{told}; far beyond the {trained.noise_level:g} the network was trained on: it may "
            f"smear detail (give a lower --noise_level if the photo is not that noisy)"
        )
    elif not given:
        note(told)
