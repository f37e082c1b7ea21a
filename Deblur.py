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
from scipy.fft import next_fast_len
from torch import nn
from torch.nn import functional as F

from PerceptualLoss import load_vgg19_loss
from plumbing.checkpoints import load_weights, read_checkpoint, restore_training, trained_settings
from plumbing.command_line import check_something_to_learn, settings_in
from plumbing.device import amp_dtype_for, compiled_on_first_batch, pick_device
from plumbing.files import locked_output_dir, photo_output, save_image, space_needed
from plumbing.images import (
    check_blur_fits,
    image_to_tensor,
    input_paths,
    read_image_folder,
    read_rgb_image,
    resized,
    tensor_to_image,
)
from plumbing.job import run_job
from plumbing.progress import Progress, in_strips, print_plan, report_outcome
from results import (
    WIENER_BALANCE,
    image_quality,
    print_summary,
    richardson_lucy,
    row_of,
    save_results,
    transfer_function,
    wiener,
    wiener_reach,
)
from UNet import UNet

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
mse_weight = 1.0  # weight of the pixel-wise loss (MSE, or L1: see pixel_loss)
pixel_loss = "mse"  # the pixel-wise loss: mse (the original's) or l1, which sharpens less eagerly
perceptual_weight = 0.1  # weight of the VGG19 perceptual loss; 0 skips loading VGG19 at all
max_grad_norm = 1.0  # gradients are clipped to this norm
log_every = 10  # print a progress line and a history.csv row every this many epochs (and the last)
checkpoint_every = 1000  # write output_dir/checkpoint.pt every this many epochs (and at the end)
seed = 0  # seeds the network's initialisation: same seed and settings, same result on a CPU
device = "auto"  # auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps
amp_dtype = "auto"  # auto (float16 on CUDA, bfloat16 on a CPU with AVX-512, else float32) or one
torch_compile = "auto"  # torch.compile the network and VGG19: auto (on CUDA only), on or off
model = "deblurnet"  # the network: deblurnet (the original's) or unet (UNet.py, sees 105x105 px)
restore_from = "blurred"  # what the network restores: the blurred image, or wiener (deconvolved)
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
    """Each channel convolved with the kernel (by FFT, on the images' device), the edges replicated
    as Pillow's filters do, or with pad=False none: the result is then smaller by the kernel's
    width - 1, all of it from real pixels. Rounded to 8 bits, as a saved image is."""
    half = kernel.shape[0] // 2
    if pad:
        images = F.pad(images, [half] * 4, mode="replicate")
    height, width = images.shape[-2:]
    size = (next_fast_len(height), next_fast_len(width))  # zeros past the end: a faster FFT
    transfer = transfer_function(kernel, size, images.device)
    blurred = torch.fft.irfft2(torch.fft.rfft2(images.float(), s=size) * transfer, s=size)
    blurred = blurred[..., half : height - half, half : width - half]  # none of it wrapped
    return (blurred * 255).round().contiguous(memory_format=torch.channels_last) / 255


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


# ---- Model: the original's DeblurNet, or the U-Net in UNet.py (model = "unet"), and its input
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


MODELS = {"deblurnet": DeblurNet, "unet": UNet}


def make_network(name, seed, processor):
    torch.manual_seed(seed)  # the same seed, the same initial weights
    return MODELS[name]().to(processor, memory_format=torch.channels_last)


# What the network is given. The first step's regulariser is a tenth of Wiener's own best
# (results.py): sharper and noisier, and the network removes noise better than it restores detail
# (docs/quick-look.md: a tenth beat a third on both unseen photos)
FIRST_STEP_BALANCE = {kind: balance / 10 for kind, balance in WIENER_BALANCE.items()}


def first_step(blurred, kernel, cfg, pad=True):
    """What the network restores (its input): the blurred image, as in the original, or Wiener's
    deconvolution of it, whose leftovers (ringing, lost fine detail) the network learns to mend."""
    if cfg.restore_from == "wiener":
        return wiener(blurred, kernel, FIRST_STEP_BALANCE[cfg.blur_kind], pad)
    return blurred


def input_margin(cfg, kernel):
    """The margin the network's input needs around the pixels it restores: wiener_reach, rounded
    up to a multiple of 16, so that a crop with it is a size the FFT computes fast."""
    return -(-wiener_reach(kernel) // 16) * 16 if cfg.restore_from == "wiener" else 0


# ---- Loss: mse_weight x MSE (or L1) + perceptual_weight x VGG19 distance, in the training loop
def vgg_targets(vgg, sharp, amp):
    """The sharp images' VGG19 features: the fixed side of the perceptual loss (None: no VGG)."""
    if vgg is None:
        return None
    mixed = amp != torch.float32
    with torch.no_grad(), torch.autocast(sharp.device.type, dtype=amp, enabled=mixed):
        return vgg.feature_maps(sharp)


# ---- Training: one step per epoch, on the image pair or on a batch of a folder's crops
def make_training(cfg, net, vgg_weights):
    """The perceptual loss (None for MSE only), Adam and the gradient scaler for `net`."""
    processor = next(net.parameters()).device
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA (convolutions already are)
    vgg = load_vgg19_loss(vgg_weights, processor) if cfg.perceptual_weight else None
    # Fused Adam: one kernel for all tensors, and no host sync for a GradScaler's skipped steps
    fused = processor.type in ("cuda", "cpu")
    adam = torch.optim.Adam(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    float16 = amp_dtype_for(cfg.amp_dtype, processor) == torch.float16
    return vgg, adam, torch.amp.GradScaler(processor.type, enabled=float16)


def folder_batches(images, kernel, cfg, generator, vgg, amp, processor):
    """Every step, batch_size random crops of the folder's images, each turned by a random multiple
    of 90 degrees and maybe mirrored (augmentation: 8 views of every crop), as (network input,
    sharp, VGG19 targets). Each is cut with margins, so that neither the blur nor the Wiener step
    sees a made-up edge: the blur needs the kernel's half-width, Wiener its input_margin."""
    blur_margin = kernel.shape[0] // 2
    margin = blur_margin + input_margin(cfg, kernel)
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
        inputs = first_step(blur(sharp, kernel, pad=False), kernel, cfg, pad=False)
        inner = margin - blur_margin  # the blur took blur_margin off each side
        inputs = inputs[:, :, inner : inner + cfg.crop_size, inner : inner + cfg.crop_size]
        sharp = sharp[:, :, margin : margin + cfg.crop_size, margin : margin + cfg.crop_size]
        yield inputs, sharp, vgg_targets(vgg, sharp, amp)


WARM_UP = 100  # a folder's learning rate rises over this many steps


def learning_rate(cfg, epoch):
    """For a folder (one image keeps the original's constant lr): a warm-up over the first WARM_UP
    steps, then a cosine decay to 0 at num_epochs; without it the loss jumps at lr 5e-4 and up."""
    warm_up = min(epoch / WARM_UP, 1)
    return cfg.lr * warm_up * (1 + math.cos(math.pi * min(epoch / cfg.num_epochs, 1))) / 2


def train(cfg, net, vgg, optimizer, scaler, batches, progress, folder=False):
    """Trains epochs progress.epoch + 1 .. num_epochs on (network input, sharp, VGG19 targets)
    batches; returns 'done', 'stopped' or 'diverged'."""
    processor = next(net.parameters()).device
    amp = amp_dtype_for(cfg.amp_dtype, processor)
    no_vgg = torch.zeros((), device=processor)  # the perceptual term without a VGG19
    progress.start(net)
    outcome = "done"
    for epoch in range(progress.epoch + 1, cfg.num_epochs + 1):
        inputs, sharp, target_maps = next(batches)  # inputs: the blurred crops, or Wiener's
        if folder:  # one image keeps the original's constant lr
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch)
        # Forward in mixed precision: float16 or bfloat16 where it is safe, float32 where not
        with torch.autocast(processor.type, dtype=amp, enabled=amp != torch.float32):
            restored = net(inputs)
            mse = F.mse_loss(restored, sharp)  # logged, as its PSNR, whatever the pixel loss
            pixel = F.l1_loss(restored, sharp) if cfg.pixel_loss == "l1" else mse
            perceptual = vgg(restored, target_maps) if vgg else no_vgg
            loss = cfg.mse_weight * pixel + cfg.perceptual_weight * perceptual
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


def evaluate(net, setting, blurred, sharp, cfg, kernel):
    """The comparison's Row for the test image of `setting`: the blurred input, the classical
    deconvolutions with the known kernel and the network, each with its PSNR and SSIM (leaving out
    a border of the kernel's half-width)."""
    with torch.no_grad():
        restored = net(first_step(blurred, kernel, cfg)).float()
    images = {
        "Blurred": blurred,
        "Wiener": wiener(blurred, kernel, WIENER_BALANCE[cfg.blur_kind]),
        "Richardson–Lucy": richardson_lucy(blurred, kernel, cfg.blur_kind),
        "Network": restored,
    }
    return row_of(setting, images, sharp, border=kernel.shape[0] // 2)


# ---- The job
UNSEEN_SAMPLE = "data/sample.jpg"  # a folder's network is tested on it, and on holdout_path
CHOICES = {
    "model": tuple(MODELS),
    "pixel_loss": ("mse", "l1"),
    "restore_from": ("blurred", "wiener"),
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
    first step and VGG19 targets computed once."""
    processor = next(iter(pairs.values()))[0].device
    amp = amp_dtype_for(cfg.amp_dtype, processor)
    if generator:  # a folder's
        return folder_batches(photos, kernel, cfg, generator, vgg, amp, processor)
    blurred, sharp = pairs["image_path"]
    return repeat((first_step(blurred, kernel, cfg), sharp, vgg_targets(vgg, sharp, amp)))


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
    photos = {Path(cfg.image_path): None}  # the one training image, or a folder's, decoded once
    if folder:  # as 8-bit (3, H, W): crops are cut from them, and turned to floats
        smallest = cfg.crop_size + 2 * (kernel.shape[0] // 2 + input_margin(cfg, kernel))
        photos = read_image_folder(Path(cfg.image_path), smallest, inputs)
    net = make_network(cfg.model, cfg.seed, processor)
    parameters = sum(parameter.numel() for parameter in net.parameters())
    read = [*inputs.values(), *photos]  # none of them may be overwritten by a result
    with locked_output_dir(out, read, space_needed(parameters, cfg.image_size)):
        vgg, optimizer, scaler = make_training(cfg, net, vgg_weights)
        check_something_to_learn(cfg, vgg is not None)
        generator = torch.Generator().manual_seed(cfg.seed) if folder else None
        progress = Progress(cfg, stop, generator, trained_on=list(photos))
        batches = training_batches(cfg, list(photos.values()), pairs, kernel, generator, vgg)
        if checkpoint:
            restore_training(cfg, *checkpoint, net, optimizer, scaler, progress)
        shown = "sample" if folder else "image_path"  # the first row of the figure
        blurred, sharp = pairs[shown]
        amp = amp_dtype_for(cfg.amp_dtype, processor)
        baseline = image_quality(blurred, sharp, border)
        print_plan(cfg, processor, amp, vgg is not None, progress, baseline, WARM_UP)
        progress.watch(first_step(blurred, kernel, cfg), sharp, border)  # for progress.png
        batches = compiled_on_first_batch(cfg, net, vgg, batches, amp)
        outcome = train(cfg, net, vgg, optimizer, scaler, batches, progress, folder)

        net.eval()
        rows = [evaluate(net, setting, *pair, cfg, kernel) for setting, pair in pairs.items()]
        print_summary(rows, border)
        beside = "Wiener" if cfg.restore_from == "wiener" else "Richardson–Lucy"
        save_results(out, rows, kernel, progress, folder, beside)
    return report_outcome(outcome, progress, SETTINGS)


def apply_to_photo(cfg, stop):
    """--apply: the trained network, after its first step, on a photo at the photo's own size, in
    strips of rows (memory stays small), as output_dir/<name>_deblurred.png."""
    processor = pick_device(cfg.device)
    photo_path = input_paths(cfg)["apply"]
    blurred = image_to_tensor(read_rgb_image(photo_path, "apply"), processor)
    path, checkpoint = read_checkpoint(cfg)
    trained = trained_settings(checkpoint)  # its network, its first step and the blur it undoes
    net = make_network(trained.model, 0, processor).eval()
    load_weights(net, path, checkpoint)
    kernel = blur_kernel(trained.blur_kind, trained.blur_radius, trained.blur_angle)
    margin = net.REACH + input_margin(trained, kernel)  # what a strip's rows depend on
    with photo_output(cfg, photo_path, blurred) as target:  # never a file the user already has
        restored = torch.empty_like(blurred)
        with torch.no_grad():
            for rows, strip, inside in in_strips(blurred, margin, stop, photo_path):
                restored[:, :, rows] = net(first_step(strip, kernel, trained))[:, :, inside]
        save_image(tensor_to_image(restored), target, "PNG")
    return 0


def main(argv=None, vgg_weights="IMAGENET1K_V1"):
    """Runs the job; returns the exit code. Tests pass vgg_weights=None for a random VGG19."""
    train = partial(run, vgg_weights=vgg_weights)
    return run_job(train, apply_to_photo, SETTINGS, CHOICES, __file__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
