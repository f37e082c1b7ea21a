"""Deblur: remove blur from an image by training a small residual CNN on that very image.

It overfits one (blurred, sharp) pair on purpose: a demo of residual connections, mixed precision
and a VGG19 perceptual loss, measured against classical deconvolution and tried on an image it
never saw. Read it top to bottom: settings, data, model, loss, the training loop, results, the job.
The plumbing (command line, input checks, checkpoints, safe writes, signals) is in support.py.
"""

import math
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends import BackendFilter, backend_registry
from PIL import Image, ImageFilter
from skimage import restoration
from torch import nn
from torch.nn import functional as F

from PerceptualLoss import load_vgg19_loss, perceptual_distance
from support import (
    Progress,
    Result,
    Row,
    check_blur_fits,
    compile_or_not,
    in_strips,
    input_paths,
    load_weights,
    locked_output_dir,
    photo_output,
    pick_device,
    print_plan,
    print_summary,
    read_checkpoint,
    read_rgb_image,
    report_outcome,
    resized,
    restore_training,
    run_job,
    save_figure,
    save_image,
    settings_in,
    space_needed,
)

# ---- Settings: edit a line, or override it for one run: python Deblur.py --num_epochs 300
image_path = "data/sample.jpg"  # the training image; relative paths are also tried beside Deblur.py
image_size = 512  # the image is resized to image_size x image_size pixels (16 to 4096)
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
amp_dtype = "auto"  # auto (float16 on CUDA, bfloat16 on CPU, float32 on MPS) or one of those
compile = "auto"  # torch.compile the loss computation: auto (on CUDA only), on or off
holdout_path = "data/holdout.jpg"  # a second image, never trained on, to test on; '' skips it
output_dir = "."  # where results, history.csv and checkpoint.pt are written (created if missing)
resume = ""  # '' starts afresh; auto (or a bare --resume): output_dir/checkpoint.pt; or a path
apply = ""  # a photo to deblur with the network in --resume's checkpoint, instead of training
# ----
SETTINGS = settings_in(globals())


# ---- Data: a sharp image and its blurred copy
def load_image_pair(path, size, kind="gaussian", radius=5.0, angle=0.0, setting="image_path"):
    """The image resized to size x size and a copy blurred by `kind`, both as RGB PIL images."""
    image = read_rgb_image(path, setting)
    sharp = resized(image, size, path)  # the original's square, whatever the aspect ratio
    if kind == "gaussian":  # exactly the original's blur
        return sharp, sharp.filter(ImageFilter.GaussianBlur(radius=radius))
    blurred = blur(image_to_tensor(sharp, "cpu"), blur_kernel(kind, radius, angle))
    return sharp, tensor_to_image(blurred)


def blur(images, kernel):
    """Each channel convolved with the kernel, edges replicated as Pillow's filters do, and rounded
    to 8 bits as a saved image is."""
    weight = torch.as_tensor(kernel, dtype=images.dtype).expand(3, 1, -1, -1)
    padded = F.pad(images, [kernel.shape[0] // 2] * 4, mode="replicate")
    return (F.conv2d(padded, weight, groups=3) * 255).round() / 255


def blur_width(kind, radius):
    """The kernel's width in pixels, known before the kernel is built."""
    if kind == "gaussian":
        return len(pillow_gaussian_1d(radius))
    return 2 * math.ceil(radius) + 1


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
    else:  # motion: a line 2 * radius + 1 pixels long through the centre, anti-aliased
        along = np.cos(np.radians(angle)) * x - np.sin(np.radians(angle)) * y  # rows grow downwards
        across = np.sin(np.radians(angle)) * x + np.cos(np.radians(angle)) * y
        kernel = np.clip(1 - np.abs(across), 0, 1) * (np.abs(along) <= radius)
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


def image_to_tensor(image, device):
    """(1, 3, H, W) float32 in [0, 1], channels_last: the layout oneDNN and cuDNN convolve best."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    return pixels.to(device, memory_format=torch.channels_last)


def to_hwc(image):
    """(1, 3, H, W) tensor to an (H, W, 3) array in [0, 1], for matplotlib and scikit-image."""
    return image[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def tensor_to_image(image):
    return Image.fromarray((to_hwc(image) * 255).round().astype(np.uint8))


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


# ---- Loss: mse_weight x MSE + perceptual_weight x VGG19 distance, summed in the training loop
def compute_losses(net, vgg, blurred, sharp, target_maps):
    """The loss's two terms: pixel-wise MSE, and the VGG19 feature distance (0 without a VGG)."""
    restored = net(blurred)
    mse = F.mse_loss(restored, sharp)
    if vgg is None:
        return mse, torch.zeros_like(mse)
    return mse, perceptual_distance(vgg.feature_maps(restored), target_maps)


# ---- Training: one step per epoch on the single pair
def amp_dtype_of(cfg, device):
    """float16 on CUDA (with a GradScaler), bfloat16 on a CPU (no scaler needed), else float32."""
    if cfg.amp_dtype != "auto":
        return getattr(torch, cfg.amp_dtype)
    return {"cuda": torch.float16, "cpu": torch.bfloat16}.get(device.type, torch.float32)


def make_training(cfg, device, vgg_weights):
    """The seeded network, the perceptual loss (None for MSE only), Adam and the gradient scaler."""
    torch.manual_seed(cfg.seed)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA (convolutions already are)
    net = DeblurNet().to(device, memory_format=torch.channels_last)
    vgg = load_vgg19_loss(vgg_weights, device) if cfg.perceptual_weight else None
    # Fused Adam: one kernel for all tensors, and no host sync for a GradScaler's skipped steps
    fused = device.type in ("cuda", "cpu")
    optimizer = torch.optim.Adam(
        net.parameters(), cfg.lr, weight_decay=cfg.weight_decay, fused=fused
    )
    float16 = amp_dtype_of(cfg, device) == torch.float16
    return net, vgg, optimizer, torch.amp.GradScaler(device.type, enabled=float16)


def train(cfg, net, vgg, optimizer, scaler, sharp, blurred, progress):
    """Trains epochs progress.epoch + 1 .. num_epochs; returns 'done', 'stopped' or 'diverged'."""
    device = blurred.device
    amp = amp_dtype_of(cfg, device)
    mixed = amp != torch.float32
    target_maps = None
    if vgg is not None:  # the target never changes: its VGG19 features are computed once
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=mixed):
            target_maps = vgg.feature_maps(sharp)
    losses = compute_losses
    if cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda"):
        losses = compile_or_not(compute_losses, net, (vgg, blurred, sharp, target_maps), amp)
    progress.start(net)
    outcome = "done"
    for epoch in range(progress.epoch + 1, cfg.num_epochs + 1):
        # Forward in mixed precision: float16 or bfloat16 where it is safe, float32 where not
        with torch.autocast(device.type, dtype=amp, enabled=mixed):
            mse, perceptual = losses(net, vgg, blurred, sharp, target_maps)
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
        if progress.is_due(epoch):
            outcome = progress.record(epoch, net, optimizer, scaler, (loss, mse, perceptual))
            if outcome != "running":
                break
    return outcome


# ---- Results: the network against the blurred input and two classical deconvolutions

# Chosen per blur kind on the sample at 128 and 512 px (benchmarks/tune_baselines.py). Iterations
# are Richardson-Lucy's regulariser: on a kernel whose spectrum has zeros it first sharpens, then
# amplifies the noise.
WIENER_BALANCE = {"gaussian": 0.03, "motion": 0.1, "defocus": 0.1, "box": 0.3}
RL_ITERATIONS = {"gaussian": 100, "motion": 20, "defocus": 20, "box": 20}


def psnr_from_mse(mse):
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def image_quality(image, reference):
    """(PSNR in dB, SSIM) of an image in [0, 1] against the reference."""
    # torchmetrics takes a second to import: only when needed
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    image, reference = image.float(), reference.float()
    similarity = ssim(image, reference, data_range=1.0).item()
    return psnr_from_mse(F.mse_loss(image, reference).item()), similarity


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


def evaluate(net, sharp, blurred, kind, kernel):
    """{method: (image, PSNR, SSIM)} for the blurred input, the baselines and the network."""
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
        psnr, ssim = image_quality(image, sharp)
        results[name] = Result(image, psnr, ssim)
    return results


def save_results(out, rows, kernel, progress):
    """comparison.png and reconstructed_image.jpg; history.csv and training_curves.png."""
    figure, axes = plt.subplots(len(rows), 4, figsize=(20, 5.6 * len(rows)), squeeze=False)
    for row_axes, row in zip(axes, rows, strict=True):
        draw_row(row_axes, row, kernel)
    save_figure(figure, out / "comparison.png")
    save_image(
        tensor_to_image(rows[0].results["Network"].image), out / "reconstructed_image.jpg", "JPEG"
    )
    progress.save_history(rows[0].results)
    if plt.get_backend() in backend_registry.list_builtin(BackendFilter.INTERACTIVE):
        plt.show()
    plt.close("all")


def draw_row(row_axes, row, kernel):
    """The seed's panels (original, blurred, reconstructed) with Richardson-Lucy before the last."""
    panels = {
        "Original Image": None,
        "Blurred Image": row.results["Blurred"],
        "Richardson–Lucy": row.results["Richardson–Lucy"],
        "Reconstructed Image": row.results["Network"],
    }
    for ax, (title, result) in zip(row_axes, panels.items(), strict=True):
        ax.axis("off")
        if result is None:
            ax.imshow(to_hwc(row.sharp))
            ax.set_title(row.label + title)
            continue
        ax.imshow(to_hwc(result.image))
        ax.set_title(f"{row.label}{title}\nPSNR {result.psnr:.2f} dB, SSIM {result.ssim:.3f}")
    inset = row_axes[1].inset_axes([0.72, 0.02, 0.26, 0.26], xticks=[], yticks=[])
    inset.imshow(kernel, cmap="magma")
    inset.set_title(f"kernel {kernel.shape[0]}x{kernel.shape[1]}", fontsize=8)


# ---- The job
def run(cfg, stop, vgg_weights):
    """Trains on the image pair, then evaluates, reports and saves; returns the exit code."""
    device = pick_device(cfg.device)
    out = Path(cfg.output_dir)
    inputs = input_paths(cfg)
    check_blur_fits(blur_width(cfg.blur_kind, cfg.blur_radius), cfg.image_size, "image_size")
    checkpoint = read_checkpoint(cfg) if cfg.resume else None  # before anything is written
    pairs = {}
    for setting, path in inputs.items():
        images = load_image_pair(
            path, cfg.image_size, cfg.blur_kind, cfg.blur_radius, cfg.blur_angle, setting
        )
        pairs[setting] = [image_to_tensor(image, device) for image in images]
    with locked_output_dir(out, inputs, space_needed(cfg.image_size)):
        net, vgg, optimizer, scaler = make_training(cfg, device, vgg_weights)
        progress = Progress(cfg, stop)
        if checkpoint:
            restore_training(cfg, *checkpoint, net, optimizer, scaler, progress)
        sharp, blurred = pairs["image_path"]
        amp = amp_dtype_of(cfg, device)
        print_plan(cfg, device, amp, vgg is not None, progress, image_quality(blurred, sharp))
        outcome = train(cfg, net, vgg, optimizer, scaler, sharp, blurred, progress)

        net.eval()
        kernel = blur_kernel(cfg.blur_kind, cfg.blur_radius, cfg.blur_angle)
        rows = [Row("", sharp.cpu(), evaluate(net, sharp, blurred, cfg.blur_kind, kernel))]
        if "holdout_path" in pairs:
            held_sharp, held_blurred = pairs["holdout_path"]
            results = evaluate(net, held_sharp, held_blurred, cfg.blur_kind, kernel)
            rows.append(Row("Held out: ", held_sharp.cpu(), results))
        print_summary(rows)
        save_results(out, rows, kernel, progress)
    return report_outcome(cfg, outcome, progress, stop, SETTINGS)


def apply_to_photo(cfg, stop):
    """--apply: the trained network on a photo at the photo's own size, as <name>_deblurred.png."""
    device = pick_device(cfg.device)
    photo_path = input_paths(cfg)["apply"]
    image = image_to_tensor(read_rgb_image(photo_path, "apply"), device)
    net = DeblurNet().to(device, memory_format=torch.channels_last).eval()
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
    reach = DeblurNet.REACH
    with torch.no_grad():
        for top in starts:
            start = max(top - reach, 0)
            strip = net(image[:, :, start : top + rows + reach])
            restored[:, :, top : top + rows] = strip[:, :, top - start :][:, :, :rows]
    return restored


def main(argv=None, vgg_weights="IMAGENET1K_V1"):
    """Runs the job; returns the exit code. Tests pass vgg_weights=None for a random VGG19."""
    return run_job(partial(run, vgg_weights=vgg_weights), apply_to_photo, SETTINGS, __file__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
