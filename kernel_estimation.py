"""A photo's camera shake found from the photo, coarse to fine (Cho & Lee 2009; Xu & Jia 2010; Pan
et al. 2014): at each scale a sharp-edged latent image (an L0 prior on its gradients), then the
kernel that best blurs its strongest, wide edges into the photo's; upsampled, it starts the next
scale. Grey, by FFT on the photo's device; Deblur.py undoes it as it undoes a measured kernel.
"""

import math
from time import perf_counter

import torch
from skimage.measure import label
from torch.nn import functional as F

from blurs import QUANTISATION, kernel_spectrum
from deconvolution import gradient_energy, wrapped_smoothly

COARSEST = 5  # the kernel's width in pixels at the coarsest scale
SCALE_STEP = math.sqrt(0.5)  # each scale's image and kernel are this much of the next finer's
ROUNDS = 5  # latent image, then kernel, this many times at each scale
EDGE_WEIGHT = 4e-3  # the L0 prior's weight at the start; it falls by 1.1 each round, to 1e-4
KERNEL_DAMPING = 2.0  # Tikhonov damping of the kernel's least squares (images in [0, 1])
REGION = 800  # a larger photo's kernel is estimated on its REGION x REGION window of most edges
LUMA = (0.299, 0.587, 0.114)  # the photo's grey: its luma (ITU-R BT.601)
ONE_WAY = 0.5  # wide_edges: how much of a window's gradients must point one way
SUPPORT_REACH = 2  # pixels a finer scale's kernel may reach beyond the coarser one's
CLIPPED = 254 / 255  # pixels this bright may have been clipped: no edge near them is trusted
EDGES_OVER_NOISE = 20  # the strongest edges (0.1%) must stand this far above the noise
WIDE_SHARE = 0.6  # at least this share of the strongest edges (2%) must be wide_edges
HAZE = 0.05  # a kernel's values under this share of its peak are haze: taken away
PATH = 0.25  # a kernel's values this share of its peak are its path, not the haze around it


def estimate_kernel(photo, width, noise, between_rounds=None, say=print):
    """The blur kernel of a (1, 3, H, W) photo in [0, 1] (any float dtype) with noise of `noise`
    8-bit steps, as (kernel, None): a (width, width) NumPy array (width odd), non-negative,
    summing to 1, centred on its centroid; or (None, why) where it cannot be told: the photo's
    edges too faint or too fine, or a blur wider than the square. `between_rounds` is called
    between rounds (to stop, it raises)."""
    grey = grey_region(photo)
    doubt = reason_to_doubt(grey, noise)
    if doubt:
        return None, doubt
    widths = scale_widths(width)
    kernel = first_guess(widths[0], grey.device)
    weight, threshold = EDGE_WEIGHT, None
    began = perf_counter()
    for scale, scale_width in enumerate(widths):
        blurred = resized(grey, scale_width / width)
        kernel = upsampled(kernel, scale_width)
        if threshold is None:
            threshold = edge_threshold(blurred, scale_width)
        say_progress(say, scale, widths, blurred, began)
        padded = wrapped_smoothly(blurred[None, None], scale_width)[0, 0]  # a kernel each side
        trusted = trusted_edges(padded, scale_width) & wide_edges(padded)
        photo_edges = gradients(padded)
        support = near(kernel) if scale else None
        for _ in range(ROUNDS):
            if between_rounds:
                between_rounds()
            latent = latent_image(padded, kernel, weight)
            edges, threshold = strongest_edges(latent, threshold, trusted)
            fitted = kernel_fitting(edges, photo_edges, scale_width, support)
            if edges.any() and fitted.max() > 0:  # else no edge here tells it: it stays as it is
                kernel = cleaned(fitted)
            weight = max(weight / 1.1, 1e-4)
        kernel = centred_on_centroid(kernel)
    kernel = without_haze(kernel)
    if spans_its_square(kernel):
        return None, (
            f"the blur found reaches across the whole {width}-px square it was sought in: it may "
            f"be wider, and undoing a cut-off blur rings (a larger --kernel_size may find it)"
        )
    return kernel, None


def without_haze(kernel):
    """The kernel as a NumPy array, summing to 1, without the faint haze (under HAZE x its peak)
    that least squares leaves around it."""
    kernel = kernel.double().cpu().numpy()
    kernel[kernel < kernel.max() * HAZE] = 0
    return kernel / kernel.sum()


def spans_its_square(kernel):
    """Whether the kernel's path (its values of at least PATH x its peak, not the faint haze a fit
    leaves) touches two opposite sides of its square. Centred on its centroid, a blur that fits
    has room left on both sides (on the validation photos every estimate did); one that reaches
    both was cut off where the square ends, or is noise spread all over it (a blur exactly as
    wide as the square cannot be told from a cut-off one: the square must leave it room)."""
    path = kernel >= PATH * kernel.max()
    rows, columns = path.any(1), path.any(0)
    return bool((rows[0] and rows[-1]) or (columns[0] and columns[-1]))


def reason_to_doubt(grey, noise):
    """Why no kernel should be estimated from this grey image, or None: where even its strongest
    edges (0.1%) stand less than EDGES_OVER_NOISE times above the noise, a kernel fitted to them
    is fitted to noise, and undoing it makes the photo worse (docs/blind.md, by up to 18 dB);
    where fewer than WIDE_SHARE of its strongest edges (2%) are wide_edges, it is fitted to
    strokes finer than the blur, and rings (4 of 7 pages of text ended below their input)."""
    magnitude = gradients(grey).square().sum(0).sqrt()
    strength = magnitude.flatten()
    strongest = float(strength.kthvalue(max(int(0.999 * strength.numel()), 1)).values) * 255
    if strongest < 1:
        return "the photo has no edges to tell a blur by (a flat colour?)"
    if grey.ge(CLIPPED).float().mean() > 0.5:
        return "most of the photo is clipped highlights, which keep no trace of the blur"
    over_noise = strongest / max(noise, QUANTISATION)
    if over_noise < EDGES_OVER_NOISE:
        return (
            f"the photo's strongest edges stand only {over_noise:.0f} times above its noise "
            f"(at least {EDGES_OVER_NOISE} are needed to tell a blur from noise)"
        )
    inside = magnitude[3:-3, 3:-3]  # the gradients wrap around the border
    wide = wide_edges(grey)[3:-3, 3:-3][inside >= inside.quantile(0.98)]
    if wide.float().mean() < WIDE_SHARE:
        return (
            "most of the photo's strongest edges are finer than a blur (text? a fine texture?): "
            "they cannot tell its kernel"
        )
    return None


def say_progress(say, scale, widths, blurred, began):
    """The scale the estimate is at, and the time left as the scales done so far foretell it."""
    done = sum(w**2 for w in widths[:scale])  # a scale's work grows with its image, as w**2
    left = (perf_counter() - began) / done * (sum(w**2 for w in widths) - done) if done else None
    height, width = blurred.shape
    eta = f", about {left:.0f} s to go" if left is not None and left > 2 else ""
    say(
        f"Estimating the blur kernel: scale {scale + 1} of {len(widths)}, "
        f"{widths[scale]}x{widths[scale]} px on {width}x{height}{eta}"
    )


# ---- The photo: grey, a region of a large one, each scale's copy
def grey_region(photo):
    """The photo's luma, float32; of a photo over REGION a side, its window with the most edge."""
    luma = torch.tensor(LUMA, device=photo.device).reshape(3, 1, 1)
    grey = (photo[0].float() * luma).sum(0)
    height, width = grey.shape
    if max(height, width) <= REGION:
        return grey
    small = F.avg_pool2d(grey[None, None], 4, ceil_mode=True)
    magnitude = gradients(small[0, 0]).square().sum(0).sqrt()[None, None]
    window = [min(REGION // 4, side) for side in magnitude.shape[-2:]]  # REGION, a quarter
    stride = REGION // 16
    scores = F.avg_pool2d(magnitude, window, stride)[0, 0]
    row, column = divmod(int(scores.argmax()), scores.shape[1])
    top = min(row * stride * 4, max(height - REGION, 0))
    left = min(column * stride * 4, max(width - REGION, 0))
    return grey[top : top + REGION, left : left + REGION]


def scale_widths(width):
    """The kernel's width at each scale, coarse to fine: times SCALE_STEP's powers, odd."""
    widths = [width]
    while widths[-1] > COARSEST:
        smaller = math.ceil(width * SCALE_STEP ** len(widths))
        widths.append(max(smaller + 1 - smaller % 2, COARSEST))
    return sorted(set(widths))


def resized(grey, factor):
    """The grey image scaled by `factor` (antialiased: a smaller copy has less noise)."""
    if factor == 1.0:
        return grey
    size = [max(round(side * factor), 1) for side in grey.shape]
    return F.interpolate(grey[None, None], size, mode="bilinear", antialias=True)[0, 0]


# ---- The kernel: its first guess, from scale to scale, and cleaned after each fit
def first_guess(width, device):
    """The coarsest scale's start: a 2-pixel horizontal line in the middle (Pan et al.'s)."""
    kernel = torch.zeros(width, width, device=device)
    kernel[width // 2, width // 2 : width // 2 + 2] = 0.5
    return kernel


def upsampled(kernel, width):
    """The kernel at the next finer scale: stretched to width x width, as the image is."""
    if kernel.shape[0] == width:
        return kernel
    grown = F.interpolate(kernel[None, None], (width, width), mode="bilinear")[0, 0].clamp(min=0)
    return grown / grown.sum()


def cleaned(kernel):
    """Non-negative, summing to 1, without each group of touching non-zero pixels (8-connected)
    that holds less than a tenth of the weight (the largest is kept whatever it holds)."""
    kernel = kernel.clamp(min=0)
    kernel = kernel / kernel.sum()
    groups = torch.from_numpy(label(kernel.cpu().numpy() > 0, connectivity=2)).to(kernel.device)
    weights = torch.zeros(int(groups.max()) + 1, device=kernel.device)
    weights.index_add_(0, groups.flatten(), kernel.flatten())
    weights[0] = 0  # the background
    keep = weights >= 0.1
    keep[weights.argmax()] = True
    kernel = kernel * keep[groups]
    return kernel / kernel.sum()


def near(kernel):
    """Where the next scale's fits may put weight: within SUPPORT_REACH pixels of the upsampled
    kernel's. A finer scale has more noise to fit, and far from the blur's path all is noise."""
    reach = 2 * SUPPORT_REACH + 1
    grown = F.max_pool2d((kernel > 0).float()[None, None], reach, stride=1, padding=SUPPORT_REACH)
    return grown[0, 0]


def centred_on_centroid(kernel):
    """The kernel moved by whole pixels so that its centroid is its middle pixel: the restored
    photo does not shift."""
    width = kernel.shape[0]
    positions = torch.arange(width, device=kernel.device, dtype=kernel.dtype)
    row = round(float((kernel.sum(1) * positions).sum()))
    column = round(float((kernel.sum(0) * positions).sum()))
    shift = (width // 2 - row, width // 2 - column)
    padded = F.pad(kernel, [width] * 4)
    moved = padded.roll(shift, dims=(0, 1))
    return moved[width : 2 * width, width : 2 * width]


# ---- Gradients, and the edges the kernel is fitted on
def gradients(image):
    """(2, H, W): the forward differences along x and y, wrapping around (as the FFT sees it)."""
    return torch.stack([image.roll(-1, 1) - image, image.roll(-1, 0) - image])


def edge_threshold(blurred, width):
    """Cho & Lee's rule: the largest squared gradient that 20 x width pixels of each of four
    directions reach (the kernel is unknown along a direction without edges)."""
    along_x, along_y = gradients(blurred)
    magnitude = along_x.square() + along_y.square()
    direction = torch.atan2(along_y, along_x).remainder(math.pi)  # an edge has no sign
    needed = max(20 * width, 10)
    reached = []
    for quarter in range(4):
        inside = (direction >= quarter * math.pi / 4) & (direction < (quarter + 1) * math.pi / 4)
        strengths = magnitude[inside]
        if strengths.numel() >= needed:
            reached.append(strengths.topk(needed).values[-1])
    return float(min(reached)) if reached else float(magnitude.max()) / 2


def trusted_edges(padded, width):
    """Where the latent image's edges may be used: inside the photo (padded by a kernel's width
    each side), at least half a kernel from its border (past it the padding is made up), and a
    kernel away from clipped pixels (whose light the photo did not record)."""
    trusted = torch.zeros_like(padded, dtype=torch.bool)
    keep = width + width // 2 + 1
    trusted[keep:-keep, keep:-keep] = True
    clipped = (padded >= CLIPPED).float()[None, None]
    near_clipped = F.max_pool2d(clipped, 2 * width + 1, stride=1, padding=width)[0, 0] > 0
    return trusted & ~near_clipped


def wide_edges(padded):
    """Xu & Jia's (2010) edges that tell the kernel: where the gradients in a 5x5 window point one
    way (their sum's length over their lengths' sum above ONE_WAY). A texture finer than the blur,
    merged by it, cancels out there; fitted to it, a kernel comes out wrong (docs/blind.md)."""
    along_x, along_y = gradients(padded)[:, None]
    summed = F.avg_pool2d(along_x[None], 5, stride=1, padding=2).square()
    summed = (summed + F.avg_pool2d(along_y[None], 5, stride=1, padding=2).square()).sqrt()
    lengths = (along_x.square() + along_y.square()).sqrt()[None]
    total = F.avg_pool2d(lengths, 5, stride=1, padding=2) + 0.5 / 255 / 25  # never 0 / 0
    return (summed / total)[0, 0] > ONE_WAY


def strongest_edges(latent, threshold, trusted):
    """The latent image's gradients where they are at least `threshold` strong (squared), zero
    elsewhere, and the next round's threshold, 1.1 times lower (more edges join as the latent
    image gets sharper)."""
    edges = gradients(latent) * trusted
    strength = edges.square().sum(0)
    while threshold > 1e-8 and not (strength >= threshold).any():
        threshold *= 0.81
    return edges * (strength >= threshold), threshold / 1.1


# ---- The two steps that alternate: the latent image, then the kernel
def latent_image(padded, kernel, weight):
    """argmin over S of |kernel * S - padded|^2 + weight x (how many of S's gradients are not 0),
    by half-quadratic splitting (Xu et al. 2011): a copy of the gradient, zeroed where its square
    is under weight / beta, then S by FFT; beta doubles from 2 x weight to 1e5."""
    size = padded.shape
    transfer = kernel_spectrum(kernel[None], size)[0]
    numerator = transfer.conj() * torch.fft.rfft2(padded)
    power = transfer.abs().square()
    energy = gradient_energy(size, padded.device)
    latent = padded
    beta = 2 * weight
    while beta < 1e5:
        split = gradients(latent)
        split = split * (split.square().sum(0) >= weight / beta)
        divergence = (split[0].roll(1, 1) - split[0]) + (split[1].roll(1, 0) - split[1])
        spectrum_of = (numerator + beta * torch.fft.rfft2(divergence)) / (power + beta * energy)
        latent = torch.fft.irfft2(spectrum_of, s=size)
        beta *= 2
    return latent


def kernel_fitting(edges, blurred_edges, width, support=None, iterations=60):
    """argmin over the width x width k of |k * edges - blurred_edges|^2 + KERNEL_DAMPING |k|^2,
    k zero outside `support` (a 0/1 mask; None: all free), by conjugate gradients, each product
    by FFT (Cho & Lee's kernel step); its values under HAZE x its peak then zeroed."""
    size = edges.shape[-2:]
    free = torch.ones(width, width, device=edges.device) if support is None else support
    latent_spectra = torch.fft.rfft2(edges)
    autocorrelation = latent_spectra.abs().square().sum(0)
    correlated = (latent_spectra.conj() * torch.fft.rfft2(blurred_edges)).sum(0)
    right_side = around_origin(torch.fft.irfft2(correlated, s=size), width) * free

    def normal_matrix_times(kernel):
        blurred = torch.fft.irfft2(autocorrelation * kernel_spectrum(kernel[None], size)[0], s=size)
        return (around_origin(blurred, width) + KERNEL_DAMPING * kernel) * free

    kernel = free / free.sum()
    residual = right_side - normal_matrix_times(kernel)
    direction = residual
    residual_norm = residual.square().sum()
    for _ in range(iterations):
        if residual_norm < 1e-12:
            break
        product = normal_matrix_times(direction)
        step = residual_norm / (direction * product).sum()
        kernel = kernel + step * direction
        residual = residual - step * product
        previous, residual_norm = residual_norm, residual.square().sum()
        direction = residual + residual_norm / previous * direction
    return kernel * (kernel >= kernel.max() * HAZE)


def around_origin(image, width):
    """The width x width pixels around pixel (0, 0) of an image the FFT wraps around: where a
    kernel whose spectrum is blurs.kernel_spectrum lies."""
    return image.roll((width // 2, width // 2), dims=(0, 1))[:width, :width]
