"""The classical deconvolutions that use the known kernel (blurs.py's): Wiener, with a balance
that follows the noise and the kernel (also the network's first step), Richardson-Lucy, and total
variation (a sparse gradient prior); the kernel's data step that Deblur.py's plug and play
repeats between the network's passes; and the noise a photo has, which they need. results.py sets
what they give beside the network.
"""

import math
from typing import NamedTuple

import numpy as np
import torch
from skimage import restoration
from torch.nn import functional as F

from blurs import QUANTISATION, transfer_function

# ---- Wiener deconvolution, with a balance that follows the noise and the kernel


def wiener_margin(width):
    """The real pixels a crop's Wiener step needs around it: a kernel's width, rounded up to 16 so
    that the crop's FFT is fast (beyond it the crop is extended smoothly by another width)."""
    return -(-width // 16) * 16


def wiener(blurred, kernels, balance, pad=None):
    """Non-blind Wiener deconvolution of (N, 3, H, W) images with the known kernel (one for all, or
    one each), by FFT on their device: the kernel's inverse, damped by `balance` (a number, or one
    per image) times the gradient's energy at each frequency. That is the Wiener filter for the
    1 / f**2 spectrum photos have (scikit-image's restoration.wiener with that `reg`; its default
    damps the Laplacian's square, and its best balance then moves with the kernel far more). The
    FFT treats the image as if it repeated past its edges: they are first extended by `pad`
    pixels (by default wiener_reach; less for crops that bring a margin of real pixels themselves)
    and blended into each other (wrapped_smoothly), and cut off after. A large photo is done a
    channel at a time, and in place where it can: a fraction of the memory."""
    if len(blurred) == 1 and blurred.shape[1] > 1 and blurred[0, 0].numel() > 2**22:
        restored = torch.empty_like(blurred)
        for channel in range(blurred.shape[1]):
            part = blurred[:, channel : channel + 1]
            restored[:, channel : channel + 1] = wiener(part, kernels, balance, pad)
        return restored
    return wiener_at(wiener_spectra(blurred, kernels, pad), balance, in_place=True)


class Spectra(NamedTuple):
    """What Wiener makes of images and their kernel before it weighs in a balance."""

    numerator: torch.Tensor  # the extended images' spectrum times the kernel's conjugate
    power: torch.Tensor  # the kernel's squared magnitude at each frequency
    energy: torch.Tensor  # gradient_energy
    size: tuple  # the extended images' (H, W)
    shape: tuple  # the images' own, to cut the extension off again


def wiener_by_rule(blurred, kernels, noise, pad=None):
    """Wiener at the balance its rule gives the kernels and the noise (wiener_balance)."""
    return wiener(blurred, kernels, wiener_balance(kernels, noise), pad)


def wiener_spectra(blurred, kernels, pad=None):
    padded = wrapped_smoothly(blurred.float(), wiener_reach(kernels) if pad is None else pad)
    size = padded.shape[-2:]
    numerator = torch.fft.rfft2(padded)
    del padded
    transfer = transfer_function(kernels, size, blurred.device)
    numerator.mul_(transfer.conj())
    energy = gradient_energy(size, blurred.device)
    power = transfer.abs().square_()
    return Spectra(numerator, power, energy, tuple(size), tuple(blurred.shape[-2:]))


def wiener_at(spectra, balance, in_place=False):
    """Wiener's restoration at `balance` (a number, or one per image) from the Spectra, which
    `in_place` uses up (a fraction of the memory) and otherwise keeps, for other balances."""
    if torch.is_tensor(balance):  # one for each image
        device = spectra.numerator.device
        balance = balance.reshape(-1, 1, 1, 1).to(device, non_blocking=device.type == "cuda")
    denominator = spectra.energy * balance + spectra.power
    numerator = spectra.numerator if in_place else spectra.numerator.clone()
    numerator.div_(denominator)
    del denominator  # a photo's worth of memory, before the inverse FFT makes another
    return image_of(numerator, spectra)


def image_of(spectrum, spectra):
    """The image whose rfft2 is `spectrum` (on the Spectra's extended size), its extension cut off
    and its values clamped to [0, 1]."""
    size = spectra.size
    restored = torch.fft.irfft2(spectrum, s=size)
    cut = (size[0] - spectra.shape[0]) // 2, (size[1] - spectra.shape[1]) // 2
    restored = restored[..., cut[0] : size[0] - cut[0], cut[1] : size[1] - cut[1]].clamp(0, 1)
    return restored.contiguous(memory_format=torch.channels_last)


def gradient_energy(size, device):
    """The energy of the image's gradient at each frequency of an rfft2 of `size`, per unit of
    the image's: 4 - 2 cos(u) - 2 cos(v), the spectrum of the Laplacian (the damping Wiener's
    balance weighs)."""
    rows = 2 - 2 * torch.cos(2 * math.pi * torch.fft.fftfreq(size[0], device=device))
    columns = 2 - 2 * torch.cos(2 * math.pi * torch.fft.rfftfreq(size[1], device=device))
    return rows[:, None] + columns[None, :]


def wrapped_smoothly(images, pad):
    """The images with `pad` more pixels on each side: the edges replicated, then blended into the
    opposite ones (a raised cosine across the 2 * pad pixels where the FFT's repetition joins
    them), so that the repetition meets no step. A step there would ring through the whole image
    at the frequencies where the kernel's spectrum is near zero: a large disk's result gains
    3 dB."""
    padded = F.pad(images, [pad] * 4, mode="replicate")
    if pad == 0:
        return padded
    ramp = (torch.arange(2 * pad, device=images.device) + 0.5) / (2 * pad)
    towards_first = 0.5 - 0.5 * torch.cos(math.pi * ramp)
    for dim in (-1, -2):
        length = padded.shape[dim]
        last, first = padded.narrow(dim, length - pad - 1, 1), padded.narrow(dim, pad, 1)
        shape = [2 * pad if axis == padded.dim() + dim else 1 for axis in range(padded.dim())]
        blend = last + (first - last) * towards_first.reshape(shape)
        inside = padded.narrow(dim, pad, length - 2 * pad)
        padded = torch.cat([blend.narrow(dim, pad, pad), inside, blend.narrow(dim, 0, pad)], dim)
    return padded


def wiener_balance(kernels, noise):
    """The balance for each kernel and noise level (8-bit steps; the rounding to 8 bits counted
    in): 0.01 x (noise**2 + 1/12) ** 0.68 x (the kernel's energy, its squared values' sum) ** 0.29.
    Fitted to the best balances of photos Deblur never trains or tests on, under 24 kernels of the
    random family and 5 noise levels (benchmarks/tune_baselines.py): more noise, more damping;
    and a small kernel, whose energy is large, damps more too, since there Wiener is mostly a
    denoiser. On those photos it restores 0.16 dB less than each image's best balance at noise
    2.55 and 0.11 dB at 8, on average; 0.70 dB without noise."""
    energy = np.square(kernels).sum(axis=(-2, -1))
    if torch.is_tensor(noise):  # a batch, each with its own blur: one balance each
        energy = torch.as_tensor(energy, dtype=torch.float32)
    return 10**-2.0 * (noise**2 + QUANTISATION**2) ** 0.68 * energy**0.29


def wiener_reach(kernels):
    """How far Wiener's result at a pixel depends on the blurred image: three times the kernel's
    width (on the sample at sigma 5, a strip with this margin is within 0.14/255 of the whole
    image's result, within 1.8/255 with twice the width)."""
    return 3 * kernels.shape[-1]


# ---- The kernel's data step, between a network's rounds (Deblur.py's prior_rounds)
PRIOR_WEIGHT = 0.5  # prior_levels: the data step's weight at the photo's own noise level


def data_step(blurred, kernel, restored, weight):
    """argmin over x of |kernel * x - blurred|^2 + weight |x - restored|^2, for a (1, 3, H, W)
    photo and its `restored` image (in [0, 1], or 8 bits), by FFT a channel at a time: the image
    that the kernel blurs into the photo, held near the restoration, the nearer the larger the
    weight. Half-quadratic splitting's data step, as DPIR's (Zhang et al. 2021); edges as Wiener's.
    """
    result = torch.empty(restored.shape, device=blurred.device)
    for channel in range(blurred.shape[1]):
        part = slice(channel, channel + 1)
        spectra = wiener_spectra(blurred[:, part], kernel)
        near = restored[:, part].to(blurred.device).float()
        near = near / 255 if restored.dtype == torch.uint8 else near
        towards = torch.fft.rfft2(wrapped_smoothly(near, wiener_reach(kernel)))
        numerator = spectra.numerator.add_(towards.mul_(weight))
        result[:, part] = image_of(numerator.div_(spectra.power.add_(weight)), spectra)
    return result


def prior_levels(noise, most, rounds):
    """(noise level, data step's weight) of each of `rounds` rounds: the levels (8-bit steps, the
    8-bit rounding counted in) falling geometrically from `most` (the most noise the network
    learned) to the photo's `noise` (one round: `most` alone, as DPIR's schedule); each weight the
    photo's noise power over the level's, times PRIOR_WEIGHT (DPIR's rule: where the network is
    told more noise, it is trusted less)."""
    power = noise**2 + QUANTISATION**2
    top = max(most, noise) ** 2 + QUANTISATION**2
    powers = np.geomspace(top, power, rounds) if rounds else []
    return [(math.sqrt(level - QUANTISATION**2), PRIOR_WEIGHT * power / level) for level in powers]


# ---- Richardson-Lucy
def rl_iterations(noise):
    """Richardson-Lucy's iterations are its regulariser: it first sharpens, then amplifies the
    noise, the sooner the more noise there is. Its best counts on photos Deblur neither trains nor
    reports on (benchmarks/tune_baselines.py): 50 without noise, 20 at 2.55 8-bit steps, 5 at 8."""
    return max(5, round(50 / (1 + float(noise) ** 2 / 4)))


def richardson_lucy(blurred, kernel, iterations):
    """scikit-image's Richardson-Lucy deconvolution with the known kernel, after replicating the
    edges by the kernel's width (it assumes zeros past them). The three channels in one call, with
    the kernel one channel deep: scipy convolves along no axis of length 1, so this is the
    per-channel result exactly, in a third of the calls. In float32, twice to twenty times as
    fast as float64, and as exact once its ratios are left out where the reblurred image is under
    1e-6 (filter_epsilon): in black regions float32's FFT leaves it a rounding error from 0, and
    the ratio blew up (a photo of coins: -12 dB; of the moon: -26 dB; NaN: float64 +6.4, +1.2)."""
    pad = kernel.shape[0]
    padding = ((pad, pad), (pad, pad), (0, 0))
    image = np.pad(blurred[0].float().permute(1, 2, 0).cpu().numpy(), padding, mode="edge")
    psf = kernel.astype(np.float32)[..., None]
    deconvolved = restoration.richardson_lucy(image, psf, iterations, filter_epsilon=1e-6)
    deconvolved = deconvolved[pad:-pad, pad:-pad]
    return torch.from_numpy(deconvolved).permute(2, 0, 1)[None].clamp(0, 1)


# ---- A sparse gradient prior (Krishnan & Fergus 2009): photos' gradients are mostly near zero
SPARSENESS = 1.0  # the prior's exponent on each gradient, |g| ** SPARSENESS: total variation
FIDELITY = 0.12  # sparse_fidelity's scale, tuned with the exponent on the validation photos
BETAS = [2 ** (step * 1.5) for step in range(9)]  # the splitting's weight, 1 to 4096: see below


def sparse_fidelity(noise, scale=None):
    """The data term's weight for noise of `noise` 8-bit steps: MAP's 1 / variance (the rounding
    to 8 bits counted), times `scale`: FIDELITY, as tuned (benchmarks/tune_baselines.py)."""
    variance = (float(noise) ** 2 + QUANTISATION**2) / 255**2
    return (FIDELITY if scale is None else scale) / variance


def sparse_deconvolution(blurred, kernel, fidelity):
    """argmin over x of fidelity / 2 |kernel * x - blurred|^2 + the sum over x's gradients of
    |g| ** SPARSENESS, by half-quadratic splitting: each gradient gets a copy w, the cheapest
    near it under the prior (shrunk towards 0, or 0: sparse_shrinkage), then x is the least
    squares of both by FFT; the copies' weight beta grows until x's gradients are w. Sharper
    edges than Wiener's (whose prior is Gaussian: it smooths edges as it smooths noise), at a few
    more FFTs. The edges are extended as Wiener's are (wrapped_smoothly)."""
    pad = wiener_reach(kernel)
    padded = wrapped_smoothly(blurred.float(), pad)
    size = padded.shape[-2:]
    transfer = transfer_function(kernel, size, blurred.device)
    numerator = fidelity * transfer.conj() * torch.fft.rfft2(padded)
    power = fidelity * transfer.abs().square()
    energy = gradient_energy(size, blurred.device)
    restored = padded
    for beta in BETAS:
        along_x = sparse_shrinkage(restored.roll(-1, -1) - restored, beta)
        along_y = sparse_shrinkage(restored.roll(-1, -2) - restored, beta)
        divergence = (along_x.roll(1, -1) - along_x) + (along_y.roll(1, -2) - along_y)
        spectrum = (numerator + beta * torch.fft.rfft2(divergence)) / (power + beta * energy)
        restored = torch.fft.irfft2(spectrum, s=size)
    return restored[..., pad:-pad, pad:-pad].clamp(0, 1)


def sparse_shrinkage(gradient, beta, steps=5):
    """argmin over w of |w| ** SPARSENESS + beta / 2 (w - gradient)^2, for each pixel: zero under
    a threshold, above it the gradient shrunk by the prior's slope (generalised shrinkage, Zuo et
    al. 2013: a few fixed-point steps from the gradient itself)."""
    p = SPARSENESS
    if p == 1:
        return gradient.sign() * (gradient.abs() - 1 / beta).clamp(min=0)
    knee = (2 / beta * (1 - p)) ** (1 / (2 - p))
    threshold = knee + p / beta * knee ** (p - 1)
    size = gradient.abs()
    shrunk = size
    for _ in range(steps):
        shrunk = size - p / beta * shrunk.clamp(min=1e-8) ** (p - 1)
    return torch.where(size > threshold, gradient.sign() * shrunk, torch.zeros_like(gradient))


# ---- The noise a photo has, when --apply is not told
FLAT_SHARE = 0.25  # the noise is read on this share of the photo's 2x2 blocks: its flattest
JPEG_NOISE = 2.0  # 8-bit steps: a JPEG's noise is taken as at least this (estimated_noise)


def estimated_noise(image, jpeg=False):
    """The standard deviation of the Gaussian noise in (1, 3, H, W) `image`, in 8-bit steps, from
    its finest diagonal detail (the Haar wavelet's HH band), where a blurred photo has almost
    nothing but noise: its median absolute value / 0.6745 (Donoho's robust estimate), read on the
    flattest FLAT_SHARE of the 2x2 blocks, none clipped: text and fine textures have detail at
    that scale too, and where a photo is black or white its noise was cut off (docs/blind.md).
    The rounding to 8 bits is left out: it is counted on its own (QUANTISATION). A photo one
    pixel high or wide has no 2x2 block to tell its noise by: none is assumed. Of a `jpeg`, at
    least JPEG_NOISE: its compression wiped the finest noise from its flat parts, where it is
    read, not from its edges, and added its own error (docs/blind.md, JPEG photos)."""
    pixels = image[0]
    height, width = (pixels.shape[-2] // 2) * 2, (pixels.shape[-1] // 2) * 2
    if height * width == 0:
        return 0.0
    details, activity = [], None
    for channel in pixels:  # one at a time: a large photo's float copy is never made whole
        a, b = channel[0:height:2, 0:width:2].float(), channel[0:height:2, 1:width:2].float()
        c, d = channel[1:height:2, 0:width:2].float(), channel[1:height:2, 1:width:2].float()
        details.append((a - b - c + d).abs() * 255)
        variation = variation_around((a + b + c + d) / 4)
        clipped = torch.stack([a, b, c, d]).aminmax(dim=0)  # black or white: its noise cut off
        variation[(clipped.min <= 0) | (clipped.max >= 1)] = math.inf
        activity = variation if activity is None else torch.maximum(activity, variation)
    flattest = activity.flatten().kthvalue(max(int(FLAT_SHARE * activity.numel()), 1)).values
    on_flat = activity <= flattest  # all of it where more than 3 in 4 blocks are clipped
    sigma = median_between_steps(torch.cat([detail[on_flat] for detail in details])) / 2 / 0.6745
    noise = math.sqrt(max(sigma**2 - QUANTISATION**2, 0))
    return max(noise, JPEG_NOISE) if jpeg else noise


def variation_around(coarse):
    """How much the photo varies around each 2x2 block: the largest step (across plus down) of
    its coarse copy (the blocks' means) within the 3x3 blocks around it. The steps wrap around:
    an edge block is compared with the opposite edge, and at worst left out."""
    across = (coarse.roll(-1, 1) - coarse).abs()
    down = (coarse.roll(-1, 0) - coarse).abs()
    return F.max_pool2d((across + down)[None, None], 3, stride=1, padding=1)[0, 0]


def median_between_steps(values):
    """The median of non-negative values that an 8-bit photo makes whole numbers, read between
    them: where it falls within the count of values at the median step, as if they were spread
    evenly across it (the grouped median). The plain median of whole numbers is one: 1.2 and 1.7
    steps of noise were both told 1.45."""
    steps = values.round()
    middle = float(steps.median())
    lower_edge = max(middle - 0.5, 0.0)  # the median step's span: from here to middle + 0.5
    below = int((values < lower_edge).sum())
    at_middle = int((steps == middle).sum())
    return lower_edge + (values.numel() / 2 - below) / at_middle * (middle + 0.5 - lower_edge)
