"""--apply's tiles: a photo of any size, a network's work on it a tile at a time, so that memory
stays that of a few copies of the photo.
"""

from itertools import count
from time import perf_counter

import torch

from plumbing.device import mixed_precision
from plumbing.images import as_8_bits
from plumbing.job import stop_point
from plumbing.progress import hms


def in_tiles(image, margin, stop, doing, core=512):
    """--apply's tiles of an image, to bound the memory: yields (target, tile, inside): where a
    tile's core of core x core pixels lies in the image, the tile with `margin` more pixels on
    each side (a multiple of 8, so that a U-Net's poolings meet it as they meet the whole image),
    and where the core lies in the tile. Says what it is `doing`, the size and the time to go; a
    stop request ends it between tiles."""
    margin = -(-margin // 8) * 8
    height, width = image.shape[-2:]
    corners = [(top, left) for top in range(0, height, core) for left in range(0, width, core)]
    print(f"{doing}: {width}x{height} pixels, in {len(corners)} tiles")
    began = reported = perf_counter()
    for done, (top, left) in enumerate(corners):
        stop_point(stop)
        up, back = max(top - margin, 0), max(left - margin, 0)
        tile = image[..., up : top + core + margin, back : left + core + margin]
        inside = (..., slice(top - up, top - up + core), slice(left - back, left - back + core))
        yield (..., slice(top, top + core), slice(left, left + core)), tile, inside
        now = perf_counter()
        left_s = (now - began) / (done + 1) * (len(corners) - done - 1)
        if done == 0 and left_s > 10:
            print(
                f"The first tile took {now - began:.1f} s: about {hms(left_s)} to go in this pass"
            )
        elif now - reported > 10 and done + 1 < len(corners):
            print(f"{done + 1} of {len(corners)} tiles, about {hms(left_s)} to go in this pass")
            reported = now


def network_in_tiles(net, stop, photo_path, facts):
    """restored_in_tiles as a function of the described photo alone, each pass said: the first
    deblurs the photo, each after it is a round of plug and play (Deblur.py's)."""
    passes = count()

    def restored(described_photo):
        done = next(passes)
        doing = (
            f"Plug and play, round {done}, on {photo_path}" if done else f"Deblurring {photo_path}"
        )
        return restored_in_tiles(net, described_photo, stop, doing, facts)

    return restored


def restored_in_tiles(net, described_photo, stop, doing, facts):
    """The network's restoration of a (1, C, H, W) photo, kept in half precision (within 1/16 of
    an 8-bit step), as 8-bit (1, 3, H, W): its correction in tiles (each with net.REACH pixels
    more around it, so that a tile's core is what the whole photo at once would give), under the
    run's autocast (facts.amp), then its last step on the whole photo, a channel at a time, in
    float32: memory for a few copies of the photo, not for all the network's work. Call it under
    torch.no_grad()."""
    inputs = described_photo[:, :3].to(torch.float16, copy=True)
    description = described_photo[:, 3:, :1, :1].float()  # the same at every pixel: one each
    correction = torch.empty_like(inputs)
    for where, tile, inside in in_tiles(inputs, net.REACH, stop, doing):
        tile = torch.cat([tile.float(), description.expand(-1, -1, *tile.shape[-2:])], 1)
        tile = tile.contiguous(memory_format=torch.channels_last)  # as the network: 1.4x
        with mixed_precision(facts):
            correction[where] = net.correction(tile)[inside]
    restored = torch.empty(inputs.shape, dtype=torch.uint8)
    for channel in range(3):
        part = slice(channel, channel + 1)
        colour = net.restored(inputs[:, part].float(), correction[:, part].float())
        restored[:, part] = as_8_bits(colour)
    return restored
