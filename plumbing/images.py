"""Reading images as 8-bit RGB (each change said in a note), folders of them, and turning images
into tensors and back. Blurring and deblurring are the method's, in Deblur.py.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from plumbing.errors import DeblurError, first_line, note

FOLDER_PIXELS = 300_000_000  # at 3 bytes a pixel, a folder's images may take 900 MB in memory


def resolve_image_path(path):
    """A relative path missing from the current folder is looked up next to Deblur.py."""
    given = Path(path).expanduser()
    beside_script = Path(__file__).resolve().parent.parent / path
    if not given.is_absolute() and not given.exists() and beside_script.exists():
        return beside_script
    return given


def read_rgb_image(path, setting="image_path"):
    """An image file as 8-bit RGB, EXIF orientation applied, each change said in a note; what Pillow
    cannot read is refused in one line."""
    if path.is_dir():
        raise DeblurError(f"{path} is a folder, not an image file (pass --{setting} FILE)")
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
    if image.mode.startswith("I"):
        image = rescaled_to_8_bits(image)
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


def read_image_folder(folder, smallest):
    """Every image in the folder, decoded once into memory as 8-bit (3, H, W) tensors; a file that
    cannot be read, or is smaller than `smallest` pixels on a side, is skipped with a note. Refused
    when none is left, or when they would not fit in FOLDER_PIXELS."""
    files = sorted(path for path in folder.iterdir() if path.is_file())
    if not files:
        raise DeblurError(f"--image_path {folder} is an empty folder; put photographs in it")
    sizes = {}
    for path in files:
        try:
            with Image.open(path) as image:  # reads the header only
                sizes[path] = image.size
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            note(f"skipped {path.name}: {first_line(e)}")
    pixels = sum(width * height for width, height in sizes.values())
    if pixels > FOLDER_PIXELS:
        raise DeblurError(
            f"the images in {folder} hold {pixels / 1e6:g} megapixels, more than the "
            f"{FOLDER_PIXELS / 1e6:g} that training on a folder keeps in memory; use fewer or "
            f"smaller images"
        )
    images = []
    for path, (width, height) in sizes.items():
        if min(width, height) < smallest:
            note(f"skipped {path.name}: {width}x{height} is smaller than a crop and its margin")
            continue
        pixels = np.array(read_rgb_image(path))
        images.append(torch.from_numpy(pixels).permute(2, 0, 1))
    if not images:
        raise DeblurError(
            f"none of the {len(files)} files in {folder} is an image Pillow can read of at least "
            f"{smallest}x{smallest} pixels; put photographs in it, or lower --crop_size"
        )
    if len(images) < len(files):
        note(f"training on {len(images)} images of {folder}; the other files were skipped")
    return images


def rescaled_to_8_bits(image):
    """16- or 32-bit grey, rescaled to 0..255 where Pillow's own convert would clip."""
    pixels = np.asarray(image, dtype=np.float64)
    full_scale = 65535 if image.mode.startswith("I;16") or pixels.max() > 255 else 255
    return Image.fromarray((pixels * 255 / full_scale).round().clip(0, 255).astype(np.uint8))


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


def check_blur_fits(kernel, image, setting):
    """A blur wider than the image leaves nothing to learn from, and padding by it makes the
    baselines ask for gigabytes: refused, naming the limit."""
    width = kernel.shape[0]
    height, breadth = image.shape[-2:]
    if width > min(height, breadth):
        raise DeblurError(
            f"the {width}x{width}-pixel blur kernel is larger than the {breadth}x{height} image "
            f"of --{setting}; lower --blur_radius (a gaussian's kernel is about 6 x radius + 1 "
            f"pixels wide, the others 2 x radius + 1) or use a larger image (--image_size)"
        )


def image_to_tensor(image, processor):
    """(1, 3, H, W) float32 in [0, 1], channels_last: the layout oneDNN and cuDNN convolve best."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    return pixels.to(processor, memory_format=torch.channels_last)


def to_hwc(image):
    """(1, 3, H, W) tensor to an (H, W, 3) array in [0, 1], for matplotlib and scikit-image."""
    return image[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def tensor_to_image(image):
    return Image.fromarray((to_hwc(image) * 255).round().astype(np.uint8))


def input_paths(cfg, unseen_sample=None):
    """{setting: path} of the images to test on: the training image (for a folder, the unseen
    sample instead) and the held-out one. image_path is made absolute, for the checkpoint."""
    if cfg.apply:
        return {"apply": resolve_image_path(cfg.apply)}
    inputs = {"image_path": resolve_image_path(cfg.image_path)}
    cfg.image_path = str(inputs["image_path"].resolve())
    if inputs["image_path"].is_dir():
        inputs = {"sample": resolve_image_path(unseen_sample)}
    if cfg.holdout_path:
        inputs["holdout_path"] = resolve_image_path(cfg.holdout_path)
        if inputs["holdout_path"].resolve() == Path(cfg.image_path):
            note("holdout_path is the training image itself: its row is not held out")
    return inputs
