"""The blur model: the kernels Deblur learns to undo (Pillow's Gaussian, motion, defocus, box, and a
random family for photos whose blur is any of these), and blurring images with them and adding
noise, as a camera does. Undoing it with the known kernel is deconvolution.py's; Deblur.py trains
on what these make.
"""

import math
from typing import NamedTuple

import numpy as np
import torch
from scipy.fft import next_fast_len
from torch.nn import functional as F

BLUR_KINDS = ("gaussian", "motion", "defocus", "box", "random")
QUANTISATION = 1 / math.sqrt(12)  # the noise rounding to 8 bits adds, in 8-bit steps
NO_BLUR = np.ones((1, 1))  # the kernel of no blur: a network trained for any blur knows it
NO_BLUR.setflags(write=False)  # shared by every caller: none may change it


class Pair(NamedTuple):
    """A test image: blurred, sharp, and the blur: its kernel and its noise (8-bit steps)."""

    blurred: torch.Tensor
    sharp: torch.Tensor
    kernel: object  # a (k, k) NumPy array
    noise: float

    @property
    def border(self):
        """The pixels the metrics leave out on each side: the kernel's half-width."""
        return self.kernel.shape[0] // 2


# ---- The kernels: explicit 2-D arrays that sum to 1, an odd number of pixels a side
def blur_kernel(kind, radius, angle=0.0):
    """The blur of a fixed kind as its kernel: what the classical baselines deconvolve."""
    if kind == "gaussian":
        return np.outer(pillow_gaussian_1d(radius), pillow_gaussian_1d(radius))
    if kind not in DRAWN_SHAPES:
        raise ValueError(f"unknown blur kind {kind!r}; the kinds are {', '.join(BLUR_KINDS)}")
    return drawn_shapes(kind, np.array([radius]), np.array([angle]), math.ceil(radius))[0]


DRAWN_SHAPES = ("box", "defocus", "motion")  # the kinds whose kernel is a formula of the grid


def drawn_shapes(kind, radii, angles, half):
    """(N, 2 * half + 1, 2 * half + 1): a kernel of one of DRAWN_SHAPES for each radius and angle
    (in degrees), at once, each summing to 1; a kernel reaching less than `half` pixels is
    zero past its reach."""
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    radius = radii.reshape(-1, 1, 1)
    if kind == "box":  # a square 2 * radius + 1 pixels a side; its edge pixels partly covered
        kernels = np.clip(radius + 1 - np.abs(x), 0, 1) * np.clip(radius + 1 - np.abs(y), 0, 1)
    elif kind == "defocus":  # the uniform disk an out-of-focus lens spreads a point into
        kernels = (x**2 + y**2 <= radius**2).astype(np.float64)
    else:  # motion: a line 2 * radius + 1 pixels long through the centre, anti-aliased
        angle = np.radians(angles).reshape(-1, 1, 1)
        along = np.cos(angle) * x - np.sin(angle) * y  # rows grow downwards
        across = np.sin(angle) * x + np.cos(angle) * y
        kernels = np.clip(1 - np.abs(across), 0, 1) * (np.abs(along) <= radius)
    return kernels / kernels.sum(axis=(1, 2), keepdims=True)


def pillow_gaussian_1d(radius):
    """Pillow's GaussianBlur is not a sampled Gaussian but three 'extended box' passes of variance
    radius**2 / 3 each (Gwosdek et al.; Pillow's BoxBlur.c), with 24-bit fixed-point weights."""
    variance = radius**2 / 3
    inner = math.floor((math.sqrt(12 * variance + 1) - 1) / 2)
    spill = (inner * (inner + 1) - 3 * variance) / (6 * (variance - (inner + 1) ** 2))
    extended = inner + (2 * inner + 1) * spill
    weight = math.floor(2**24 / (2 * extended + 1)) / 2**24
    edge = (1 - (2 * inner + 1) * weight) / 2
    box = np.array([edge, *[weight] * (2 * inner + 1), edge])
    return np.convolve(np.convolve(box, box), box)


def drawn(settings, count, generator):
    """The kernels and noise levels (8-bit steps) of `count` images, as the settings (Deblur's:
    blur_kind, blur_radius, blur_angle, noise_level) say: a fixed kind's one kernel and
    noise_level for all; or for random, each a kernel of the family and a level from 0 to
    noise_level, drawn by `generator`."""
    if settings.blur_kind != "random":
        kernel = blur_kernel(settings.blur_kind, settings.blur_radius, settings.blur_angle)
        return kernel, settings.noise_level
    kernels = random_kernels(count, settings.blur_radius, generator)
    return kernels, torch.rand(count, generator=generator) * settings.noise_level


def kernel_width(settings):
    """The width in pixels of the settings' kernels: the random family's all as its widest."""
    if settings.blur_kind == "random":
        return 2 * math.ceil(settings.blur_radius) + 1
    return blur_kernel(settings.blur_kind, settings.blur_radius, settings.blur_angle).shape[0]


# The random family: how often each shape is drawn. Camera shake is what hand-held photos have;
# a sharp photo (no blur) is there too, so that the network learns to leave one alone.
SHAPES = {"camera shake": 0.4, "motion": 0.125, "gaussian": 0.125, "defocus": 0.125, "box": 0.125}
SHAPES["none"] = 0.1
ODDS = torch.tensor(list(SHAPES.values()))  # for torch.multinomial, made once


def random_kernels(count, radius, generator):
    """`count` kernels of the random family, drawn by `generator` (the same state, the same
    kernels) as one batch, without a Python step per kernel: a shape of SHAPES each, a size
    between 0 and `radius` (how far the kernel reaches from its centre), and for the directed
    ones an angle. All are 2 * ceil(radius) + 1 pixels square."""
    half = math.ceil(radius)
    shapes = torch.multinomial(ODDS, count, replacement=True, generator=generator).numpy()
    sizes, angles = torch.rand(2, count, generator=generator, dtype=torch.float64).numpy()
    sizes, angles = sizes * radius, angles * 180
    kernels = np.zeros((count, 2 * half + 1, 2 * half + 1))
    for number, shape in enumerate(SHAPES):
        chosen = shapes == number
        if not chosen.any():
            continue
        if shape == "none":
            kernels[chosen, half, half] = 1
        elif shape == "camera shake":
            kernels[chosen] = camera_shakes(sizes[chosen], half, generator)
        elif shape == "gaussian":
            kernels[chosen] = oriented_gaussians(sizes[chosen], angles[chosen], half, generator)
        else:
            kernels[chosen] = drawn_shapes(shape, sizes[chosen], angles[chosen], half)
    return kernels


def camera_shake(size, half, generator):
    """One camera_shakes kernel reaching `size` pixels, (2 * half + 1) square."""
    return camera_shakes(np.array([size]), half, generator)[0]


def camera_shakes(sizes, half, generator, steps=64):
    """A hand's shake during the exposure, one for each of `sizes`: a random walk with inertia (the
    velocity keeps part of itself and gets a random push each step; Boracchi & Foi 2012 model it
    so), sampled evenly in time, so that the kernel is brighter where the camera moved slowly.
    Its centroid is the kernel's centre (the photo does not shift), its farthest point `size`
    pixels from it, and each point is shared between the four pixels around it (anti-aliased).
    The walks are taken side by side: a step of Python per step of the walk, none per kernel."""
    count = len(sizes)
    inertia = 0.6 + 0.35 * torch.rand(count, 1, generator=generator, dtype=torch.float64)
    pushes = torch.randn(count, steps, 2, generator=generator, dtype=torch.float64)
    velocity = position = torch.zeros(count, 2, dtype=torch.float64)
    path = []
    for step in range(steps):
        velocity = inertia * velocity + pushes[:, step]
        position = position + velocity
        path.append(position)
    path = torch.stack(path, dim=1)  # (count, steps, 2)
    between = torch.linspace(0, 1, 16, dtype=torch.float64)[:-1, None, None]  # 15 in each step
    path = path[:, None, :-1] + between * (path[:, None, 1:] - path[:, None, :-1])
    path = path.transpose(1, 2).reshape(count, -1, 2)
    path = path - path.mean(dim=1, keepdim=True)
    farthest = path.abs().amax(dim=(1, 2))
    scale = torch.from_numpy(np.asarray(sizes, dtype=np.float64)) / farthest
    path = path * torch.where(farthest > 0, scale, 1.0)[:, None, None]
    return splatted(path + half, 2 * half + 1)


def splatted(points, side):
    """(N, side, side) kernels of the (N, n, 2) (x, y) points, each point's weight shared
    bilinearly between the four pixels around it; each kernel sums to 1."""
    count = points.shape[0]
    kernels = torch.zeros(count, side, side, dtype=torch.float64)
    which = torch.arange(count)[:, None].expand(points.shape[:2])
    low = points.floor()
    fraction = points - low
    for step_x, step_y in ((0, 0), (1, 0), (0, 1), (1, 1)):
        weight_x = fraction[..., 0] if step_x else 1 - fraction[..., 0]
        weight_y = fraction[..., 1] if step_y else 1 - fraction[..., 1]
        columns = (low[..., 0] + step_x).long().clamp(0, side - 1)
        rows = (low[..., 1] + step_y).long().clamp(0, side - 1)
        kernels.index_put_((which, rows, columns), weight_x * weight_y, accumulate=True)
    return (kernels / kernels.sum(dim=(1, 2), keepdim=True)).numpy()


def oriented_gaussians(sizes, angles, half, generator):
    """Sampled Gaussians, each reaching its size in pixels (three standard deviations) along its
    angle, and a random fraction of that across: the blur of a lens or of air, round or not."""
    across = 0.3 + 0.7 * torch.rand(len(sizes), generator=generator, dtype=torch.float64).numpy()
    along_sigma = np.maximum(sizes / 3, 0.2).reshape(-1, 1, 1)
    across_sigma = across.reshape(-1, 1, 1) * along_sigma
    angle = np.radians(angles).reshape(-1, 1, 1)
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    along = np.cos(angle) * x - np.sin(angle) * y
    other = np.sin(angle) * x + np.cos(angle) * y
    kernels = np.exp(-0.5 * ((along / along_sigma) ** 2 + (other / across_sigma) ** 2))
    return kernels / kernels.sum(axis=(1, 2), keepdims=True)


def kernel_spread(kernels):
    """How far each kernel spreads light: the root-mean-square distance of its weight from its
    centroid, in pixels; 0 for no blur."""
    side = kernels.shape[-1]
    rows, columns = np.mgrid[:side, :side].astype(np.float64)
    moments = []
    for axis in (rows, columns):
        centre = (kernels * axis).sum(axis=(-2, -1), keepdims=True)
        moments.append((kernels * (axis - centre) ** 2).sum(axis=(-2, -1)))
    return np.sqrt(moments[0] + moments[1])


def described(images, kernels, noise):
    """The images with two channels more that tell a network their blur: the noise level (8-bit
    steps / 10) and the kernel's spread (pixels / 10), each the same at every pixel, as DPIR gives
    its network a map of the noise level (a number for all, or a tensor of one each)."""
    maps = []
    for value in (noise / 10, kernel_spread(kernels) / 10):
        if np.ndim(value):  # one each, copied to the device once
            value = torch.as_tensor(value, dtype=images.dtype).to(
                images.device, non_blocking=images.is_cuda
            )
            maps.append(value.reshape(-1, 1, 1, 1).expand(len(images), 1, *images.shape[-2:]))
        else:
            maps.append(images.new_full((len(images), 1, *images.shape[-2:]), float(value)))
    return torch.cat([images, *maps], dim=1)


# ---- Blurring: the FFT of each image times its kernel's; then the noise and 8 bits, as a photo
def blur(images, kernels, pad=True):
    """(N, 3, H, W) images in [0, 1], each convolved with the kernel (one (k, k) kernel for all, or
    (N, k, k), one each), the edges replicated as Pillow's filters do, or with pad=False none: the
    result is then smaller by k - 1, all of it from real pixels."""
    half = kernels.shape[-1] // 2
    if pad:
        images = F.pad(images, [half] * 4, mode="replicate")
    height, width = images.shape[-2:]
    size = (next_fast_len(height), next_fast_len(width))  # zeros past the end: a faster FFT
    transfer = transfer_function(kernels, size, images.device)
    blurred = torch.fft.irfft2(torch.fft.rfft2(images.float(), s=size) * transfer, s=size)
    return blurred[..., half : height - half, half : width - half]  # none of it wrapped


def blurred_in_linear_light(images, kernels):
    """sRGB-encoded `images` (as photos are stored) blurred as a camera's sensor blurs them: the
    light adds up linearly, and is encoded after (the sRGB curve of IEC 61966-2-1). Deblur blurs,
    and undoes blur, in the stored values, as most synthetic benchmarks do (docs/blind.md)."""
    linear = torch.where(images <= 0.04045, images / 12.92, ((images + 0.055) / 1.055) ** 2.4)
    light = blur(linear, kernels).clamp(0, 1)
    return torch.where(light <= 0.0031308, light * 12.92, 1.055 * light ** (1 / 2.4) - 0.055)


def photographed(images, noise, generator):
    """The images as a camera saves them: Gaussian noise of standard deviation `noise` in 8-bit
    steps (a number, or a tensor of one per image) added, then rounded to 8 bits. The noise is
    drawn on the images' device by a generator seeded from `generator`: the same state, the same
    noise on any device, and nothing copied from the host but the levels."""
    if torch.is_tensor(noise):
        levels = noise.float().reshape(-1, 1, 1, 1)
        noisy = bool(levels.any())
        levels = levels.to(images.device, non_blocking=images.is_cuda)
    else:
        levels, noisy = float(noise), noise > 0
    if noisy:
        seed = int(torch.randint(2**62, (), generator=generator))
        drawn = torch.Generator(images.device).manual_seed(seed)
        fresh = torch.randn(images.shape, generator=drawn, device=images.device)
        images = images + fresh * levels / 255
    rounded = (images * 255).round().clamp(0, 255) / 255
    return rounded.contiguous(memory_format=torch.channels_last)


TRANSFER_FUNCTIONS = {}  # {(kernel, its shape and dtype, size, device): its transfer function}


def transfer_function(kernels, size, device):
    """The Fourier transform at `size` of a (k, k) kernel, or of each of (N, k, k), with its centre
    moved to pixel (0, 0): (N, 1, H, W // 2 + 1). A single kernel's is made once for each size and
    device: a fixed blur's every step asks for the same ones, and making one copies from the host.
    The kernel crosses to the device in float32: Apple's MPS has no float64."""
    kernels = np.asarray(kernels, dtype=np.float32)
    key = (kernels.tobytes(), kernels.shape, tuple(size), torch.device(device))
    if key in TRANSFER_FUNCTIONS:
        return TRANSFER_FUNCTIONS[key]
    stack = torch.from_numpy(kernels).reshape(-1, *kernels.shape[-2:]).to(device)
    transfer = kernel_spectrum(stack, size)[:, None]
    if kernels.ndim == 2 and size[0] * size[1] <= 2**22:  # a photo's is made once, not kept
        if len(TRANSFER_FUNCTIONS) >= 32:  # a long-lived process (the tests): start afresh
            TRANSFER_FUNCTIONS.clear()
        TRANSFER_FUNCTIONS[key] = transfer
    return transfer


def kernel_spectrum(kernels, size):
    """The rfft2 at `size` of each of (N, k, k) kernels (tensors, on their device), its middle
    pixel moved to pixel (0, 0): a product with an image's spectrum is then the kernel's
    convolution with it, not shifted."""
    placed = kernels.new_zeros(len(kernels), *size)
    placed[:, : kernels.shape[1], : kernels.shape[2]] = kernels
    centre = (-(kernels.shape[1] // 2), -(kernels.shape[2] // 2))
    return torch.fft.rfft2(placed.roll(centre, dims=(1, 2)))
