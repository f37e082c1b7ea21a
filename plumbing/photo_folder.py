"""A folder of training photos: which of its files are photos, each decoded once into a cache on
disk and then read through a memory map. A folder of any size trains in bounded memory: crops
touch only their own pages, which the operating system keeps while there is room and drops when
there is not; processes on one machine (torchrun's) share them. Each step's random views of
them (random_views) are cut here; what is trained on them is Deblur.py's.
"""

import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import platformdirs
import torch
from PIL import Image, UnidentifiedImageError

from plumbing.errors import DeblurError, first_line, note
from plumbing.files import atomic_path, file_digest, recorded
from plumbing.images import read_rgb_image
from plumbing.processes import one_process_first

LABELS_OF_TESTS = {"sample": "unseen sample", "holdout_path": "--holdout_path image"}
SPARE_BYTES = 2**28  # room the cache leaves free on its disk: 256 MB, for checkpoints and the rest


class Photo(NamedTuple):
    """A training photo: its file, the SHA-256 of its bytes (its name in the cache, and what a
    checkpoint remembers) and, for a folder's, its 8-bit (3, H, W) pixels, memory-mapped."""

    path: Path
    digest: str
    pixels: torch.Tensor | None = None


def training_photos(cfg, margin, tests, team):
    """[Photo] to train on: the one image, or the folder's photos (read_image_folder), decoded by
    the first process on each machine (torchrun's `team`) before the others look for them."""
    training = Path(cfg.image_path)
    if not cfg.folder:
        return [Photo(training, file_digest([training]))]
    with one_process_first(team):
        return read_image_folder(training, cfg.crop_size, margin, tests)


def random_views(images, count, size, generator):
    """`count` random size x size crops of (3, H, W) images, as one (count, 3, size, size) batch,
    each turned by a multiple of 90 degrees and maybe mirrored (8 views of each), drawn by
    `generator` (the same state, the same crops)."""
    crops = []
    for index in torch.randint(len(images), (count,), generator=generator):
        top = torch.randint(images[index].shape[1] - size + 1, (), generator=generator)
        left = torch.randint(images[index].shape[2] - size + 1, (), generator=generator)
        crop = images[index][:, top : top + size, left : left + size]
        crop = torch.rot90(crop, int(torch.randint(4, (), generator=generator)), dims=(1, 2))
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(2)
        crops.append(crop)
    return torch.stack(crops)


def cache_folder():
    """Where decoded photos are kept: the system's cache folder for Deblur (platformdirs: on Linux
    $XDG_CACHE_HOME/deblur, else ~/.cache/deblur; ~/Library/Caches/deblur on a Mac;
    %LOCALAPPDATA%\\deblur\\Cache on Windows)."""
    return platformdirs.user_cache_path("deblur", appauthor=False)


def read_image_folder(folder, crop_size, margin, tests=None):
    """[Photo] of every photo in the folder, sorted by name. Hidden files, PyTorch files and what
    Deblur wrote there itself are left out; a file that cannot be read, or is smaller than a crop
    and its margin on each side (the blur's and the Wiener step's: blur_radius sets both) on a
    side, is skipped with a note. Refused when none is left, when one of `tests` ({setting: path}
    of the test images) is among them, or when the cache's disk has no room for them."""
    own = recorded(folder)
    smallest = crop_size + 2 * margin
    files = [path for path in sorted(folder.iterdir()) if path.is_file()]
    files = [path for path in files if not path.name.startswith(".") and path.suffix != ".pt"]
    if not files and any(path.is_dir() for path in folder.iterdir()):
        raise DeblurError(
            f"--image_path {folder} holds folders but no files (subfolders are not searched); "
            f"pass the folder that holds the photographs"
        )
    if not files:
        raise DeblurError(f"--image_path {folder} is an empty folder; put photographs in it")
    sizes = {}
    for path in files:
        if path.name in own and own[path.name] == file_digest([path]):
            continue  # a figure of an earlier run here: never a photo to learn from
        try:
            with Image.open(path) as image:  # reads the header only
                sizes[path] = image.size
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            note(f"skipped {path.name}: {first_line(e)}")
            continue
        if min(sizes[path]) < smallest:
            width, height = sizes.pop(path)
            note(f"skipped {path.name}: {width}x{height} is smaller than a crop and its margin")
    digests = {path: file_digest([path]) for path in sizes}
    check_apart(digests, tests or {})
    cache = writable(cache_folder())  # None: the photos are decoded into memory
    if cache:
        check_cache_room(
            cache, [size for path, size in sizes.items() if not cached(cache, digests[path])]
        )
    photos = []
    for path, digest in digests.items():
        try:
            if cache:
                pixels = decoded(path, cache / f"{digest}.npy", sizes[path])
            else:
                pixels = in_memory(np.asarray(read_rgb_image(path)))
            photos.append(Photo(path, digest, pixels))
        except DeblurError as e:  # damaged (a truncated JPEG, say): the others still teach
            note(f"skipped {path.name}: {e}")
    if not photos:
        raise DeblurError(
            f"none of the {len(files)} files in {folder} is an image Pillow can read of at least "
            f"{smallest}x{smallest} pixels ({smaller(crop_size, margin)}); put larger photographs "
            f"in it"
        )
    if len(photos) < len(files):
        note(f"training on {len(photos)} images of {folder}; the other files were skipped")
    return photos


def smaller(crop_size, margin):
    """Why a photo must be so large, and which setting to lower."""
    why = f"a {crop_size}-pixel crop and its {margin}-pixel margin on each side, for the blur"
    if margin > crop_size:
        return f"{why} and any Wiener step; the margin follows --blur_radius: lower it"
    return f"{why} and any Wiener step; or lower --crop_size"


def check_apart(digests, tests):
    """A test image that is also a training photo (the same bytes) would be called unseen: refused,
    naming it."""
    trained_on = set(digests.values())
    for setting, path in tests.items():
        if file_digest([path]) in trained_on:
            raise DeblurError(
                f"the training folder holds {path.name}, the {LABELS_OF_TESTS[setting]}: a test "
                f"on it would not be unseen; train on a folder without it (the shipped training "
                f"photos are in data/train)"
            )


def cached(cache, digest):
    return (cache / f"{digest}.npy").is_file()


def check_cache_room(cache, sizes):
    """Photos still to decode are refused, before any is, where their cache's disk has no room."""
    if not sizes:
        return
    needed = sum(3 * width * height for width, height in sizes)
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    if needed + SPARE_BYTES > free:
        raise DeblurError(
            f"decoded, the {len(sizes)} photos new to the cache need {in_bytes(needed)} in "
            f"{cache}, whose disk has {in_bytes(free)} free; make room there, or set "
            f"XDG_CACHE_HOME to a folder on a disk with room"
        )
    note(f"decoding {len(sizes)} photos into {cache} ({in_bytes(needed)}), once for every run")


def in_bytes(count):
    """A size in words: GB, MB or kB, whichever shows it best (never '0.00 GB')."""
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count / 1e3:.1f} kB"


def writable(cache):
    """The cache folder, made if missing, where files can be written in it; else None, said (a
    read-only home, or XDG_CACHE_HOME naming a file): the photos are then decoded into memory."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache):  # made and gone: what decoding a photo needs
            pass
    except OSError as e:
        reason = e.strerror or first_line(e)
        note(
            f"the photo cache {cache} cannot be written ({reason}): decoding the photos into "
            f"memory instead; set XDG_CACHE_HOME to a writable folder to keep them between runs"
        )
        return None
    return cache


def decoded(path, cached_copy, size):
    """The photo's 8-bit pixels as a (3, H, W) tensor read through a memory map of its decoded
    copy, which is made first where it is missing, damaged or not of the photo's `size` (Pillow's
    (width, height), either way round: EXIF may turn it); in memory where it cannot be written."""
    try:
        return mapped(cached_copy, size)
    except (OSError, ValueError):  # not there yet, cut short when its disk filled, or replaced
        pass
    pixels = np.asarray(read_rgb_image(path))
    try:
        with atomic_path(cached_copy) as temporary, open(temporary, "wb") as file:
            np.save(file, pixels)
    except DeblurError as e:  # its disk filled since check_cache_room, say
        note(f"{path.name} is kept in memory: {e}")
        return in_memory(pixels)
    return mapped(cached_copy, size)


def in_memory(pixels):
    """A photo's (H, W, 3) 8-bit pixels as a (3, H, W) tensor of its own, for want of a cache."""
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def mapped(cached_copy, size):
    # copy-on-write: the file is never written, and PyTorch wants an array it may write to
    pixels = np.load(cached_copy, mmap_mode="c")
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"{cached_copy} is not a decoded photo")
    if sorted(pixels.shape[:2]) != sorted(size):
        raise ValueError(f"{cached_copy} is not the photo's size")
    return torch.from_numpy(pixels).permute(2, 0, 1)
