"""Deblur: remove blur from an image by training a small residual CNN on that very image (or,
given a folder, on random crops of its photos), measured against classical deconvolution and on
images it never saw. Read it top to bottom: settings, data, model, loss, the training loop,
results, the job. The plumbing it borrows is in plumbing/, one module per concern, and the
figures are drawn by results.py.
"""

import math
from functools import partial
from itertools import repeat
from pathlib import Path

import numpy as np
import torch
from PIL import ImageFilter
from skimage import restoration
from torch import nn
from torch.nn import functional as F

from PerceptualLoss import load_vgg19_loss
from plumbing.checkpoints import load_weights, read_checkpoint, restore_training
from plumbing.command_line import check_something_to_learn, settings_in
from plumbing.device import compiled_on_first_batch, cpu_has_fast_bfloat16, pick_device
from plumbing.files import locked_output_dir, photo_output, save_image, space_needed
from plumbing.images import (
    check_blur_fits,
    image_to_tensor,
    input_paths,
    read_image_folder,
    read_rgb_image,
    resized,
    tensor_to_image,
    to_hwc,
)
from plumbing.job import run_job
from plumbing.progress import Progress, in_strips, print_plan, report_outcome
from results import LABELS, Result, Row, image_quality, print_summary, save_results

# ---- Settings: edit a line, or override it for one run: python Deblur.py --num_epochs 300
image_path = "data/sample.jpg"  # the training image, or a folder of them (see crop_size)
image_size = 512  # the image is resized to image_size x image_size pixels (16 to 4096)
crop_size = 48  # a folder: each step trains on random crop_size x crop_size crops of its images
batch_size = 16  # a folder: crops per step
blur_kind = "gaussian"  # the blur to undo: gaussian (Pillow's GaussianBlur), motion, defocus or box
blur_radius = 5.0  # blur size in pixels: Gaussian sigma, half the motion length, disk or box radius
blur_angle = 0.0  # direction of a motion blur, in degrees anticlockwise from horizontal
num_epochs = 20000  # one optimisation step on the single image pair per epoch
lr = 0.0001  # Adam learning rate
weight_decay = 1e-5  # Adam weight decay (L2 regularisation)
mse_weight = 1.0  # weight of the pixel-wise MSE loss
perceptual_weight = 0.1  # weight of the VGG19 perceptual loss; 0 skips loading VGG19 at all
max_grad_norm = 1.0  # gradients are clipped to this norm
log_every = 10  # print a progress line and a history.csv row every this many epochs (and the last)
checkpoint_every = 1000  # write output_dir/checkpoint.pt every this many epochs (and at the end)
seed = 0  # seeds the network's initialisation: same seed and settings, same result on a CPU
device = "auto"  # auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps
amp_dtype = "auto"  # auto (float16 on CUDA, bfloat16 on a CPU with AVX-512, else float32) or one
torch_compile = "auto"  # torch.compile the network and VGG19: auto (on CUDA only), on or off
holdout_path = "data/holdout.jpg"  # a second image, never trained on, to test on; '' skips it
output_dir = "."  # where results, history.csv and checkpoint.pt are written (created if missing)
resume = ""  # '' starts afresh; auto (or a bare --resume): output_dir/checkpoint.pt; or a path
apply = ""  # a photo to deblur with the network in --resume's checkpoint, instead of training
# ----
SETTINGS = settings_in(globals())


# ---- Data: a blurred image and its sharp original, always in that order
def load_image_pair(path, size, kind="gaussian", radius=5.0, angle=0.0, setting="image_path"):
    """(blurred, sharp): the image resized to size x size (None: as it is) and blurred by `kind`."""
    image = read_rgb_image(path, setting)
    sharp = resized(image, size, path) if size else image  # the original's square
    if kind == "gaussian":  # exactly the original's blur
        return sharp.filter(ImageFilter.GaussianBlur(radius=radius)), sharp
    blurred = blur(image_to_tensor(sharp, "cpu"), blur_kernel(kind, radius, angle))
    return tensor_to_image(blurred), sharp


def blur(images, kernel, pad=True):
    """Each channel convolved with the kernel (a grouped convolution, on the images' device), the
    edges replicated as Pillow's filters do, or with pad=False none: the result is then smaller by
    the kernel's width - 1. Rounded to 8 bits, as a saved image is."""
    weight = torch.as_tensor(kernel, dtype=images.dtype, device=images.device)
    if pad:
        images = F.pad(images, [kernel.shape[0] // 2] * 4, mode="replicate")
    return (F.conv2d(images, weight.expand(3, 1, -1, -1), groups=3) * 255).round() / 255


BLUR_KINDS = ("gaussian", "motion", "defocus", "box")


def blur_kernel(kind, radius, angle=0.0):
    """The blur as an explicit 2-D kernel summing to 1: what the classical baselines deconvolve."""
    if kind == "gaussian":
        return np.outer(pillow_gaussian_1d(radius), pillow_gaussian_1d(radius))
    half = math.ceil(radius)
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    if kind == "box":
        kernel = np.ones_like(x)
    elif kind == "defocus":  # the uniform disk an out-of-focus lens spreads a point into
        kernel = (x**2 + y**2 <= radius**2).astype(np.float64)
    elif kind == "motion":  # a line 2 * radius + 1 pixels long through the centre, anti-aliased
        along = np.cos(np.radians(angle)) * x - np.sin(np.radians(angle)) * y  # rows grow downwards
        across = np.sin(np.radians(angle)) * x + np.cos(np.radians(angle)) * y
        kernel = np.clip(1 - np.abs(across), 0, 1) * (np.abs(along) <= radius)
    else:
        raise ValueError(f"unknown blur kind {kind!r}; the kinds are {', '.join(BLUR_KINDS)}")
    return kernel / kernel.sum()


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


# ---- Model
class DeblurNet(nn.Module):
    """Seven 3x3 convolutions, 3-64-128-256-256-128-64-3, Tanh between them, residual, sigmoid."""

    REACH = 7  # seven 3x3 convolutions: an output pixel sees 7 pixels each way

    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.Conv2d(64, 128, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.Conv2d(128, 256, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.Conv2d(256, 128, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.Conv2d(128, 64, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.Conv2d(64, 3, kernel_size=3, padding=1),
        )

    def forward(self, x):
        # The residual keeps the input's colours and structure; the convolutions add the detail.
        return torch.sigmoid(self.main(x) + x)


def make_network(cfg, processor):
    torch.manual_seed(cfg.seed)  # the same seed, the same initial weights
    return DeblurNet().to(processor, memory_format=torch.channels_last)


# ---- Loss: mse_weight x MSE + perceptual_weight x VGG19 distance, summed in the training loop
def vgg_targets(vgg, sharp, amp):
    """The sharp images' VGG19 features: the fixed side of the perceptual loss (None: no VGG)."""
    if vgg is None:
        return None
    with (
        torch.no_grad(),
        torch.autocast(sharp.device.type, dtype=amp, enabled=amp != torch.float32),
    ):
        return vgg.feature_maps(sharp)


# ---- Training: one step per epoch, on the image pair or on a batch of a folder's crops
def amp_dtype_of(cfg, processor):
    """float16 on CUDA (with a GradScaler); bfloat16 on a CPU that computes it natively (no scaler
    needed); else float32, which such a CPU computes many times faster than emulated bfloat16."""
    if cfg.amp_dtype != "auto":
        return getattr(torch, cfg.amp_dtype)
    if processor.type == "cuda":
        return torch.float16
    if processor.type == "cpu" and cpu_has_fast_bfloat16():
        return torch.bfloat16
    return torch.float32


def make_training(cfg, net, vgg_weights):
    """The perceptual loss (None for MSE only), Adam and the gradient scaler for `net`."""
    processor = next(net.parameters()).device
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA (convolutions already are)
    vgg = load_vgg19_loss(vgg_weights, processor) if cfg.perceptual_weight else None
    # Fused Adam: one kernel for all tensors, and no host sync for a GradScaler's skipped steps
    fused = processor.type in ("cuda", "cpu")
    adam = torch.optim.Adam(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    float16 = amp_dtype_of(cfg, processor) == torch.float16
    return vgg, adam, torch.amp.GradScaler(processor.type, enabled=float16)


def folder_batches(images, kernel, cfg, generator, vgg, amp, processor):
    """Every step, batch_size random crops of the folder's images, each turned by a random multiple
    of 90 degrees and maybe mirrored (augmentation: 8 views of every crop), as (blurred, sharp,
    VGG19 targets). Each crop is cut with a margin of the kernel's half-width and blurred without
    padding, so that no edge is blurred against made-up pixels."""
    margin = kernel.shape[0] // 2
    size = cfg.crop_size + 2 * margin
    while True:
        crops = []
        for index in torch.randint(len(images), (cfg.batch_size,), generator=generator):
            top = torch.randint(images[index].shape[1] - size + 1, (), generator=generator)
            left = torch.randint(images[index].shape[2] - size + 1, (), generator=generator)
            crop = images[index][:, top : top + size, left : left + size]
            crop = torch.rot90(crop, int(torch.randint(4, (), generator=generator)), dims=(1, 2))
            if torch.rand((), generator=generator) < 0.5:
                crop = crop.flip(2)
            crops.append(crop)
        crops = torch.stack(crops)
        if processor.type == "cuda":  # pinned: the copy to the GPU does not make the host wait
            crops = crops.pin_memory()
        # Blurred on the device, where the convolution is fast: only 8-bit crops cross over
        sharp = crops.to(processor, non_blocking=True, memory_format=torch.channels_last) / 255
        blurred = blur(sharp, kernel, pad=False)
        sharp = sharp[:, :, margin : margin + cfg.crop_size, margin : margin + cfg.crop_size]
        yield blurred, sharp, vgg_targets(vgg, sharp, amp)


WARM_UP = 100  # a folder's learning rate rises over this many steps


def learning_rate(cfg, epoch):
    """For a folder (one image keeps the original's constant lr): a warm-up over the first WARM_UP
    steps, then a cosine decay to 0 at num_epochs; without it the loss jumps at lr 5e-4 and up."""
    warm_up = min(epoch / WARM_UP, 1)
    return cfg.lr * warm_up * (1 + math.cos(math.pi * min(epoch / cfg.num_epochs, 1))) / 2


def train(cfg, net, vgg, optimizer, scaler, batches, progress, folder=False):
    """Trains epochs progress.epoch + 1 .. num_epochs on (blurred, sharp, VGG19 targets) batches;
    returns 'done', 'stopped' or 'diverged'."""
    processor = next(net.parameters()).device
    amp = amp_dtype_of(cfg, processor)
    no_vgg = torch.zeros((), device=processor)  # the perceptual term without a VGG19
    progress.start(net)
    outcome = "done"
    for epoch in range(progress.epoch + 1, cfg.num_epochs + 1):
        blurred, sharp, target_maps = next(batches)
        if folder:  # one image keeps the original's constant lr
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch)
        # Forward in mixed precision: float16 or bfloat16 where it is safe, float32 where not
        with torch.autocast(processor.type, dtype=amp, enabled=amp != torch.float32):
            restored = net(blurred)
            mse = F.mse_loss(restored, sharp)
            perceptual = vgg(restored, target_maps) if vgg else no_vgg
            loss = cfg.mse_weight * mse + cfg.perceptual_weight * perceptual
        # Backward; under float16 the loss is scaled up so that small gradients survive
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        # Unscale first, so that clipping sees the true gradients
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm, foreach=True)
        # Step (the scaler skips it if a float16 gradient overflowed)
        scaler.step(optimizer)
        scaler.update()
        # Every log_every epochs: read the losses, log, checkpoint. Only then does the host wait.
        due = progress.due(epoch)
        if due:
            outcome = progress.record(epoch, due, net, optimizer, scaler, (loss, mse, perceptual))
            if outcome != "running":
                break
    return outcome


# ---- Results: the network against the blurred input and two classical deconvolutions

# Chosen per blur kind on the sample at 128 and 512 px (benchmarks/tune_baselines.py). Iterations
# are Richardson-Lucy's regulariser: on a kernel whose spectrum has zeros it first sharpens, then
# amplifies the noise.
WIENER_BALANCE = {"gaussian": 0.03, "motion": 0.1, "defocus": 0.1, "box": 0.3}
RL_ITERATIONS = {"gaussian": 100, "motion": 20, "defocus": 20, "box": 20}


def deconvolve(blurred, kind, kernel):
    """Non-blind Wiener and Richardson-Lucy deconvolution with the known kernel, per channel."""
    pad = kernel.shape[0]  # both assume what lies past the border: give them the edge, crop it
    padding = ((pad, pad), (pad, pad), (0, 0))
    image = np.pad(to_hwc(blurred).astype(np.float64), padding, mode="edge")
    methods = {
        "Wiener": partial(restoration.wiener, psf=kernel, balance=WIENER_BALANCE[kind]),
        "Richardson–Lucy": partial(
            restoration.richardson_lucy, psf=kernel, num_iter=RL_ITERATIONS[kind]
        ),
    }
    restored = {}
    for name, method in methods.items():
        channels = np.stack([method(image[..., c]) for c in range(3)])[:, pad:-pad, pad:-pad]
        restored[name] = torch.from_numpy(channels)[None].float().clamp(0, 1)
    return restored


def evaluate(net, blurred, sharp, kind, kernel):
    """{method: Result(image, PSNR, SSIM)} for the blurred input, the baselines and the network;
    the metrics leave out a border of the kernel's half-width."""
    with torch.no_grad():
        restored = net(blurred).float()
    images = {
        "Blurred": blurred.cpu(),
        **deconvolve(blurred, kind, kernel),
        "Network": restored.cpu(),
    }
    sharp = sharp.cpu()
    results = {}
    for name, image in images.items():
        psnr, ssim = image_quality(image, sharp, border=kernel.shape[0] // 2)
        results[name] = Result(image, psnr, ssim)
    return results


# ---- The job
UNSEEN_SAMPLE = "data/sample.jpg"  # a folder's network is tested on it, and on holdout_path
CHOICES = {
    "blur_kind": BLUR_KINDS,
    "amp_dtype": ("auto", "float16", "bfloat16", "float32"),
    "torch_compile": ("auto", "on", "off"),
}


def load_test_pairs(cfg, inputs, kernel, processor):
    """{setting: (blurred, sharp)} tensors of the images to test on; a folder's keep their size."""
    size = None if Path(cfg.image_path).is_dir() else cfg.image_size
    pairs = {}
    for setting, path in inputs.items():
        images = load_image_pair(
            path, size, cfg.blur_kind, cfg.blur_radius, cfg.blur_angle, setting
        )
        pairs[setting] = tuple(image_to_tensor(image, processor) for image in images)
        check_blur_fits(kernel, pairs[setting][1], setting)
    return pairs


def training_batches(cfg, photos, pairs, kernel, generator, vgg):
    """The batches train() learns from: a folder's random crops, or the one pair every epoch, its
    VGG19 targets computed once."""
    processor = next(iter(pairs.values()))[0].device
    amp = amp_dtype_of(cfg, processor)
    if photos:
        return folder_batches(photos, kernel, cfg, generator, vgg, amp, processor)
    blurred, sharp = pairs["image_path"]
    return repeat((blurred, sharp, vgg_targets(vgg, sharp, amp)))


def run(cfg, stop, vgg_weights):
    """Trains on the image, or on crops of a folder's images, then evaluates, reports and saves;
    returns the exit code."""
    processor = pick_device(cfg.device)
    out = Path(cfg.output_dir)
    inputs = input_paths(cfg, UNSEEN_SAMPLE)
    folder = Path(cfg.image_path).is_dir()
    kernel = blur_kernel(cfg.blur_kind, cfg.blur_radius, cfg.blur_angle)
    border = kernel.shape[0] // 2  # the metrics leave out the band the blur mixed past the edge
    checkpoint = read_checkpoint(cfg) if cfg.resume else None  # before anything is written
    pairs = load_test_pairs(cfg, inputs, kernel, processor)
    photos = None
    if folder:  # decoded once, as 8-bit (3, H, W): crops are cut from them, and turned to floats
        photos = read_image_folder(Path(cfg.image_path), cfg.crop_size + kernel.shape[0] - 1)
    net = make_network(cfg, processor)
    parameters = sum(parameter.numel() for parameter in net.parameters())
    with locked_output_dir(out, inputs, space_needed(parameters, cfg.image_size)):
        vgg, optimizer, scaler = make_training(cfg, net, vgg_weights)
        check_something_to_learn(cfg, vgg is not None)
        generator = torch.Generator().manual_seed(cfg.seed) if folder else None
        progress = Progress(cfg, stop, generator)
        batches = training_batches(cfg, photos, pairs, kernel, generator, vgg)
        if checkpoint:
            restore_training(cfg, *checkpoint, net, optimizer, scaler, progress)
        shown = "sample" if folder else "image_path"  # the first row of the figure
        blurred, sharp = pairs[shown]
        amp = amp_dtype_of(cfg, processor)
        baseline = image_quality(blurred, sharp, border)
        print_plan(cfg, processor, amp, vgg is not None, progress, baseline, WARM_UP)
        batches = compiled_on_first_batch(cfg, net, vgg, batches, amp)
        outcome = train(cfg, net, vgg, optimizer, scaler, batches, progress, folder)

        net.eval()
        rows = []
        for setting, (blurred, sharp) in pairs.items():
            results = evaluate(net, blurred, sharp, cfg.blur_kind, kernel)
            rows.append(Row(LABELS[setting], sharp.cpu(), results))
        print_summary(rows, border)
        save_results(out, rows, kernel, progress.history, folder)
    return report_outcome(outcome, progress, SETTINGS)


def apply_to_photo(cfg, stop):
    """--apply: the trained network on a photo at the photo's own size, as <name>_deblurred.png."""
    processor = pick_device(cfg.device)
    photo_path = input_paths(cfg)["apply"]
    image = image_to_tensor(read_rgb_image(photo_path, "apply"), processor)
    net = DeblurNet().to(processor, memory_format=torch.channels_last).eval()
    load_weights(net, *read_checkpoint(cfg))
    with photo_output(cfg, photo_path, image) as target:  # never a file the user already has
        starts = in_strips(range(0, image.shape[2], 64), stop, photo_path, image)
        restored = restore_in_strips(net, image, starts)
        save_image(tensor_to_image(restored), target, "PNG")
    return 0


def restore_in_strips(net, image, starts, rows=64):
    """The network on strips of `rows` rows, to bound the memory; a margin of REACH rows on each
    side makes every strip exactly what the whole image would give."""
    restored = torch.empty_like(image)
    with torch.no_grad():
        for top in starts:
            start = max(top - DeblurNet.REACH, 0)
            strip = net(image[:, :, start : top + rows + DeblurNet.REACH])
            restored[:, :, top : top + rows] = strip[:, :, top - start :][:, :, :rows]
    return restored


def main(argv=None, vgg_weights="IMAGENET1K_V1"):
    """Runs the job; returns the exit code. Tests pass vgg_weights=None for a random VGG19."""

    def job(cfg, stop):
        if cfg.apply:
            return apply_to_photo(cfg, stop)
        return run(cfg, stop, vgg_weights)

    return run_job(job, SETTINGS, CHOICES, __file__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
