"""Reading images as 8-bit RGB (each change said in a note) and turning images into tensors and
back (a folder of them: photo_folder.py). Blurring is blurs.py's; deblurring, the method's.
"""

import io
import math
from contextlib import suppress
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.nn import functional as F

from plumbing.errors import DeblurError, note
from plumbing.files import name_checked


def resolve_image_path(path, setting):
    """A relative path missing from the current folder is looked up next to Deblur.py."""
    given = name_checked(Path(path).expanduser(), setting)
    beside_script = Path(__file__).resolve().parent.parent / path
    if not given.is_absolute() and not given.exists() and beside_script.exists():
        return beside_script
    return given


def read_rgb_image(path, setting="image_path"):
    """An image file as 8-bit RGB, EXIF orientation applied, each change said in a note; what Pillow
    cannot read is refused in one line."""
    if path.is_dir():
        raise DeblurError(f"{path} is a folder, not an image file (pass --{setting} FILE)")
    if path.exists() and not path.is_file():
        raise DeblurError(f"{path} is not a regular file (a pipe or a device?); pass an image file")
    if not path.is_file():
        raise DeblurError(f"image not found: {path} (set {setting} or pass --{setting} FILE)")
    try:
        with Image.open(path) as image:
            changes = changes_needed(image)
            image.load()
            image = ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise DeblurError(
            f"{path} is not an image Pillow can read (use a JPEG, PNG, BMP, TIFF or WebP file)"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DeblurError(f"cannot read {path}: {e}") from None  # damaged, unreadable, too large
    if changes:
        note(f"{path.name}: {'; '.join(changes)}")
    if image.mode.startswith("I") or image.mode == "F":
        image = rescaled_to_8_bits(image, path)
    if image.mode == "RGB":
        return image
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return image.convert("RGB")  # nothing to composite: a copy of the photo less
    white = Image.new("RGBA", image.size, "white")
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


def changes_needed(image):
    """What reading `image` as 8-bit RGB will change, in words, before anything is decoded."""
    changes = []
    if getattr(image, "n_frames", 1) > 1:
        changes.append("used its first frame only")
    if image.mode == "RGB" and any(";16" in str(tile.args) for tile in image.tile):
        changes.append("reduced it to 8 bits")
    if image.getexif().get(0x0112, 1) != 1:
        changes.append("applied its EXIF orientation")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        changes.append("composited it on white")
    if image.mode not in ("RGB", "RGBA"):
        changes.append(f"converted it from {image.mode} to RGB")
    return changes


def rescaled_to_8_bits(image, path):
    """16- or 32-bit grey, integers or floats, scaled to 0..255 where Pillow's own convert would
    clip, the scale said in a note: 16-bit images by their type's range, 32-bit integers by the
    smallest of 8 bits, 16 bits or their largest value that holds them, floats of at most 1 as
    0..1, larger ones by their largest value. NaN or infinite pixels are refused by name."""
    pixels = np.asarray(image, dtype=np.float64)
    if not np.isfinite(pixels).all():
        count = int((~np.isfinite(pixels)).sum())
        raise DeblurError(
            f"{path} has {count} NaN or infinite pixels, which no scale turns into a photo; "
            f"re-export it with finite values"
        )
    largest = pixels.max()
    if image.mode.startswith("I;16"):
        full_scale = 65535
    elif image.mode == "F" and largest <= 1:
        full_scale = 1
    else:
        full_scale = next(scale for scale in (255, 65535, largest) if largest <= scale)
    note(f"{path.name}: scaled its {image.mode} values from 0..{full_scale:g} to 0..255")
    return Image.fromarray((pixels * 255 / full_scale).round().clip(0, 255).astype(np.uint8))


def read_sharp(path, size, setting="image_path"):
    """The image as 8-bit RGB, resized to size x size as the original did (None: as it is)."""
    image = read_rgb_image(path, setting)
    return resized(image, size, path) if size else image


def resized(image, size, path):
    """The image at size x size, as the original did; stretching and squashing are said."""
    changes = []
    if min(image.size) < size:
        changes.append("stretching it: it will look soft")
    if image.width != image.height:
        changes.append("not keeping its aspect ratio")
    if changes:
        note(
            f"{path.name} is {image.width}x{image.height}; resized it to {size}x{size}, "
            f"{', '.join(changes)}"
        )
    return image.resize((size, size))


# Each image a blur is checked against, in words, and what makes the blur fit it
IMAGES_TOLD = {
    "image_path": ("the --image_path image", "or a larger --image_size"),
    "holdout_path": ("the --holdout_path image", "or a larger --holdout_path image"),
    "sample": ("the unseen sample, data/sample.jpg", "(a folder's test images keep their size)"),
}


def check_blur_fits(kernel, image, setting, trained=None):
    """A blur wider than the image leaves nothing to learn from, and padding by it makes the
    baselines ask for gigabytes: refused, naming the image and what to change. With `trained`
    (the settings a checkpoint for any blur learned), a blur wider than it learned is said."""
    width = kernel.shape[0]
    height, breadth = image.shape[-2:]
    if width <= min(height, breadth):
        if trained and trained.blur_kind == "random":
            note_if_wider_than_trained(np.asarray(kernel), 2 * math.ceil(trained.blur_radius) + 1)
        return
    if setting == "apply":
        told, fix = "the photo", "name a smaller --blur_radius, or crop --kernel to the blur"
    else:
        told, larger = IMAGES_TOLD[setting]
        fix = (
            f"lower --blur_radius (a gaussian's kernel is about 6 x radius + 1 pixels wide, the "
            f"others 2 x radius + 1) {larger}"
        )
    raise DeblurError(
        f"the {width}x{width}-pixel blur kernel is larger than {told}, {breadth}x{height}; {fix}"
    )


def note_if_wider_than_trained(kernel, trained_width):
    """A network trained on blurs up to trained_width pixels wide has not learned to mend what
    Wiener leaves of a wider one: it is said, not refused (a blur a little wider may still do)."""
    width = max(extent(kernel))
    if width > trained_width:
        note(
            f"the blur is {width} pixels wide, wider than the {trained_width} the network was "
            f"trained on: it may ring (a network trained with a larger --blur_radius undoes it)"
        )


def extent(kernel):
    """(width, height) in pixels of a kernel's non-zero part: how far the camera moved."""
    rows, columns = np.flatnonzero(kernel.any(1)), np.flatnonzero(kernel.any(0))
    return int(columns[-1] - columns[0] + 1), int(rows[-1] - rows[0] + 1)


ESTIMATION_MARGIN = 3  # a blur is estimated from a photo at least this many kernels wide


def check_photo_fits_estimation(photo, width):
    """A blur is told by the edges it smears: a photo a few kernels wide has too few of them."""
    height, breadth = photo.shape[-2:]
    if min(height, breadth) < ESTIMATION_MARGIN * width:
        raise DeblurError(
            f"the {breadth}x{height} photo is too small to estimate a blur up to {width} pixels "
            f"wide from (it needs {ESTIMATION_MARGIN * width} pixels a side); pass a smaller "
            f"--kernel_size, or the photo's measured --kernel"
        )


def is_jpeg(path):
    """Whether the image file is a JPEG (a camera's MPO is one too): its noise is read otherwise
    (deconvolution.estimated_noise). A file gone or changed since it was read is taken as none."""
    with suppress(OSError), Image.open(path) as image:
        return image.format in ("JPEG", "MPO")
    return False


def as_saved_jpeg(image, quality):
    """A (1, 3, H, W) image as it comes back from a JPEG of `quality` (Pillow's: chroma halved
    each way, as most cameras do): a photo as a camera or a web page keeps it."""
    buffer = io.BytesIO()
    tensor_to_image(image).save(buffer, "JPEG", quality=quality)
    return image_to_tensor(Image.open(buffer).convert("RGB"), "cpu")


def image_to_tensor(image, device, dtype=torch.float32):
    """(1, 3, H, W) in [0, 1], channels_last: the layout oneDNN and cuDNN convolve best. Made from
    the 8-bit pixels in place: one copy in `dtype` (--apply keeps a large photo in float16)."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    pixels = pixels.to(device, memory_format=torch.channels_last).to(dtype)
    return pixels.div_(255)


def to_hwc(image):
    """(1, 3, H, W) tensor to an (H, W, 3) array in [0, 1], for matplotlib and scikit-image."""
    return image[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def as_8_bits(image):
    """A (1, 3, H, W) image in [0, 1] as 8 bits (uint8), on the CPU."""
    return (image.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def as_image(pixels):
    """A (1, 3, H, W) uint8 tensor as a Pillow image."""
    return Image.fromarray(pixels[0].permute(1, 2, 0).contiguous().numpy())


def tensor_to_image(image):
    return as_image(as_8_bits(image))


def input_paths(cfg, unseen_sample=None):
    """{setting: path} of the images to test on: the training image (for a folder, the unseen
    sample instead) and the held-out one."""
    if cfg.apply:
        return {"apply": resolve_image_path(cfg.apply, "apply")}
    inputs = {"image_path": Path(cfg.image_path)}  # found, and made absolute, by parse_settings
    if cfg.folder:
        inputs = {"sample": resolve_image_path(unseen_sample, "image_path")}
    if cfg.holdout_path:
        inputs["holdout_path"] = resolve_image_path(cfg.holdout_path, "holdout_path")
        if inputs["holdout_path"].resolve() == Path(cfg.image_path):
            note("holdout_path is the training image itself: its row is not held out")
    return inputs


def thumbnail(image, longest=256):
    """A (1, 3, H, W) image in [0, 1] shrunk to at most `longest` pixels a side, as an 8-bit
    (H, W, 3) tensor on the CPU: a frame of progress.png, small enough to keep a dozen of."""
    shrink = math.ceil(max(image.shape[-2:]) / longest)
    # Each pixel a shrink x shrink block's mean (the last ones' cut by the edge): pooling, not
    # interpolate(mode="area"), which MPS refuses where the size is not a multiple of the output
    small = F.avg_pool2d(image.float(), shrink, ceil_mode=True)
    return (small[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().contiguous()
