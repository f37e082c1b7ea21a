"""Deblur: remove blur from an image by training a small residual CNN on that very image (or on
random crops of a folder's photos, blurred one way or any way), measured against classical
deconvolution and on images it never saw. Read it top to bottom: settings, data, model, loss, the
training loop, results, the job; the blur model is in blurs.py, the plumbing in plumbing/.
"""

import math
from contextlib import nullcontext
from copy import deepcopy
from functools import partial
from itertools import repeat
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import ImageFilter
from torch import nn
from torch.nn import functional as F

from blurs import BLUR_KINDS, Pair, blur, blur_kernel, described, drawn, kernel_width, photographed
from deconvolution import estimated_noise, wiener, wiener_balance, wiener_margin
from kernel_estimation import estimate_kernel
from networks import DeblurNet, PatchDiscriminator, ResNet, UNet
from PerceptualLoss import load_vgg19_loss
from plumbing.checkpoints import (
    blur_to_undo,
    check_same_images,
    load_weights,
    note_estimated_noise,
    read_checkpoint,
    restore_training,
)
from plumbing.command_line import check_something_to_learn, settings_in
from plumbing.device import (
    amp_dtype_for,
    compiled_on_first_batch,
    eager,
    mixed_precision,
    pick_device,
)
from plumbing.files import locked_output_dir, photo_output, save_image, space_needed
from plumbing.images import (
    as_image,
    check_blur_fits,
    image_to_tensor,
    input_paths,
    read_rgb_image,
    read_sharp,
)
from plumbing.job import report_outcome, run_job
from plumbing.kernel_file import blind_kernel, read_kernel
from plumbing.photo_folder import training_photos
from plumbing.processes import Team, itself, join, this_process, together
from plumbing.progress import Progress, print_plan
from plumbing.tiles import restored_in_tiles
from results import compared, image_quality, print_summary, save_results

# ---- Settings: edit a line, or override it for one run: python Deblur.py --num_epochs 300
image_path = "data/sample.jpg"  # the training image, or a folder of them (see crop_size)
image_size = 512  # the image is resized to image_size x image_size pixels (16 to 4096)
crop_size = 48  # a folder: each step trains on random crop_size x crop_size crops of its images
batch_size = 16  # a folder: crops per step
blur_kind = "gaussian"  # the blur: gaussian (Pillow's), motion, defocus, box, or random: any
blur_radius = 5.0  # blur size in pixels: Gaussian sigma, half the motion length, disk or box radius
blur_angle = 0.0  # direction of a motion blur, in degrees anticlockwise from horizontal
noise_level = 0.0  # noise added after the blur, its standard deviation in 8-bit steps (0 to 64)
num_epochs = 20000  # an epoch is one step: on the image pair, or on a folder's batch of crops
lr = 0.0001  # Adam learning rate
weight_decay = 1e-5  # Adam weight decay (L2 regularisation)
mse_weight = 1.0  # weight of the pixel-wise loss (MSE, or L1: see pixel_loss)
pixel_loss = "mse"  # the pixel-wise loss: mse (the original's) or l1, which sharpens less eagerly
perceptual_weight = 0.1  # weight of the VGG19 perceptual loss; 0 skips loading VGG19 at all
adversarial_weight = 0.0  # weight of the adversarial term (a PatchGAN discriminator); 0: none
max_grad_norm = 1.0  # gradients are clipped to this norm
log_every = 10  # print a progress line and a history.csv row every this many epochs (and the last)
checkpoint_every = 1000  # write output_dir/checkpoint.pt every this many epochs (and at the end)
seed = 0  # seeds the initialisation, crops and blurs: same seed and settings, same result on a CPU
device = "auto"  # auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps
amp_dtype = "auto"  # auto: float16 on CUDA, bfloat16 where fast, else float32 (or name one)
torch_compile = "auto"  # torch.compile the network and VGG19: auto (on CUDA only), on or off
model = "deblurnet"  # the network: deblurnet (the original's), unet or resnet (networks.py)
restore_from = "blurred"  # what the network restores: the blurred image, or wiener (deconvolved)
holdout_path = "data/holdout.jpg"  # a second image, never trained on, to test on; '' skips it
output_dir = "."  # where results, history.csv and checkpoint.pt are written (created if missing)
resume = ""  # '' starts afresh; auto (or a bare --resume): output_dir/checkpoint.pt; or a path
apply = ""  # a photo to deblur with the network in --resume's checkpoint, instead of training
kernel = ""  # --apply: the photo's measured blur kernel, a grayscale image or a .npy array
kernel_size = 31  # --apply without a kernel: the widest blur it estimates, in pixels (5 to 101)
# ----
SETTINGS = settings_in(globals())


# ---- Data: a blurred image and its sharp original, always in that order (a Pair, blurs.py)
def load_image_pair(path, size, cfg, generator, processor="cpu", setting="image_path"):
    """A Pair of (1, 3, H, W) tensors: the image blurred as the settings say (gaussian: Pillow's
    GaussianBlur, as the original), with noise, in 8 bits; random draws come from `generator`."""
    sharp_image = read_sharp(path, size, setting)
    sharp = image_to_tensor(sharp_image, processor)
    kernels, noise = drawn(cfg, 1, generator)
    if cfg.blur_kind == "gaussian":  # exactly the original's blur
        blurred = sharp_image.filter(ImageFilter.GaussianBlur(radius=cfg.blur_radius))
        blurred = image_to_tensor(blurred, processor)
    else:
        blurred = blur(sharp, kernels)
    blurred = photographed(blurred, noise, generator)
    return Pair(blurred, sharp, kernels.reshape(kernels.shape[-2:]), float(noise))


# ---- Model: the original's DeblurNet, the U-Net or the ResNet (networks.py), and what it is given
MODELS = {"deblurnet": DeblurNet, "unet": UNet, "resnet": ResNet}


def make_network(name, restore_from, seed, processor):
    """MODELS[name] for restore_from's input (network_input), initialised from `seed`."""
    torch.manual_seed(seed)  # the same seed, the same initial weights
    inputs = 5 if restore_from == "wiener" else 3
    return MODELS[name](inputs).to(processor, memory_format=torch.channels_last)


def network_input(blurred, kernels, noise, cfg, pad=None):
    """What the network restores: the blurred image, as in the original; or Wiener's deconvolution
    with its kernel (one each), whose ringing and noise it mends, told the noise and the spread."""
    if cfg.restore_from == "wiener":
        restored = wiener(blurred, kernels, wiener_balance(kernels, noise), pad)
        return described(restored, kernels, noise)
    return blurred


# ---- Loss: mse_weight x MSE (or L1) + perceptual_weight x VGG19 distance
def losses(cfg, vgg, restored, sharp, target_maps):
    """(the loss trained on, the MSE (logged, as PSNR, whatever the loss), the perceptual term)."""
    mse = F.mse_loss(restored, sharp)
    pixel = F.l1_loss(restored, sharp) if cfg.pixel_loss == "l1" else mse
    perceptual = vgg(restored, target_maps) if vgg else torch.zeros((), device=restored.device)
    return cfg.mse_weight * pixel + cfg.perceptual_weight * perceptual, mse, perceptual


def adversarial_loss(scores, target):
    """Least squares (LSGAN): the scores' squared distance to `target` (1: sharp, 0: restored),
    whose gradient grows with it (a log loss flattens) and cannot overflow in float16."""
    return ((scores - target) ** 2).mean()


def vgg_targets(vgg, sharp, facts):
    """The sharp images' VGG19 features: the fixed side of the perceptual loss (None: no VGG)."""
    if vgg is None:
        return None
    with torch.no_grad(), mixed_precision(facts):
        return vgg.feature_maps(sharp)


# ---- Training: one step per epoch, on the image pair or on a batch of a folder's crops
class Facts(NamedTuple):
    """What the settings decide for a run, worked out once and passed down."""

    processor: torch.device
    amp: torch.dtype  # the autocast dtype
    width: int  # the blur kernel's width (the random family's largest)
    margin: int  # the real pixels a crop's network input needs around it (input_margin)
    around_crop: int  # the real pixels cut around a folder's crop: the blur's, then the margin
    multi_tensor: bool  # PyTorch's fused and foreach kernels: on CUDA and the CPU, not Apple's MPS
    team: Team = Team()  # this process's place among torchrun's (Team(): alone)


def facts_of(cfg):
    """The run's Facts, from its settings."""
    team = this_process(cfg)
    processor = pick_device(cfg.device, team)
    amp = amp_dtype_for(cfg.amp_dtype, processor)
    width = kernel_width(cfg)
    margin = wiener_margin(width) if cfg.restore_from == "wiener" else 0
    multi_tensor = processor.type != "mps"
    return Facts(processor, amp, width, margin, width // 2 + margin, multi_tensor, team)


class Critic(NamedTuple):
    """The adversarial term's discriminator (under torchrun, in DDP), its Adam and its scaler."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def make_training(cfg, net, vgg_weights, facts):
    """The perceptual loss (None for MSE only), Adam and the gradient scaler for `net`, and the
    Critic of the adversarial term (None at adversarial_weight 0)."""
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA (convolutions already are)
    vgg = load_vgg19_loss(vgg_weights, facts.processor) if cfg.perceptual_weight else None
    critic = None
    if cfg.adversarial_weight:
        torch.manual_seed(cfg.seed)  # the same seed, the same discriminator
        discriminator = PatchDiscriminator().to(facts.processor, memory_format=torch.channels_last)
        shared = together(discriminator, facts.team, facts.processor)  # torchrun: DDP
        critic = Critic(shared, *adam_and_scaler(discriminator, cfg, facts))
    return vgg, *adam_and_scaler(net, cfg, facts), critic


def adam_and_scaler(net, cfg, facts):
    """Adam for `net`, fused (one kernel for all tensors, and no host sync for a GradScaler's
    skipped steps); and, under float16, a scaler that scales losses up so gradients survive."""
    fused = facts.multi_tensor
    adam = torch.optim.Adam(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return adam, torch.amp.GradScaler(facts.processor.type, enabled=facts.amp == torch.float16)


def folder_batches(images, cfg, facts, generator, vgg):
    """Every step, batch_size random crops of the folder's images, turned by a multiple of 90
    degrees and maybe mirrored (8 views of each), as (network input, sharp, VGG19 targets); each
    cut with margins (no made-up edge for the blur or Wiener), blurred with its own kernel."""
    margin = facts.around_crop
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
        # Pinned, the copy to a GPU does not make the host wait (unpinned, it must: MPS copies
        # them wrong); and only 8-bit crops cross over, to be blurred on the device
        pinned = facts.processor.type == "cuda"
        crops = crops.pin_memory() if pinned else crops
        crops = crops.to(facts.processor, non_blocking=pinned, memory_format=torch.channels_last)
        sharp = crops / 255
        kernels, noise = drawn(cfg, cfg.batch_size, generator)
        blurred = photographed(blur(sharp, kernels, pad=False), noise, generator)
        inputs = network_input(blurred, kernels, noise, cfg, pad=facts.width)
        inner = facts.margin  # the blur took its half-width off each side
        inputs = inputs[:, :, inner : inner + cfg.crop_size, inner : inner + cfg.crop_size]
        sharp = sharp[:, :, margin : margin + cfg.crop_size, margin : margin + cfg.crop_size]
        yield inputs, sharp, vgg_targets(vgg, sharp, facts)


def image_batches(pair, cfg, facts, generator, vgg):
    """The one image every epoch, as (network input, sharp, VGG19 targets): its blurred version
    made once, as in the original; or for random blur, blurred afresh every epoch."""
    targets = vgg_targets(vgg, pair.sharp, facts)
    if cfg.blur_kind != "random":
        made_once = network_input(pair.blurred, pair.kernel, pair.noise, cfg)
        yield from repeat((made_once, pair.sharp, targets))
    while True:
        kernels, noise = drawn(cfg, 1, generator)
        blurred = photographed(blur(pair.sharp, kernels), noise, generator)
        yield network_input(blurred, kernels, noise, cfg), pair.sharp, targets


WARM_UP = 100  # a folder's learning rate rises over this many steps


def learning_rate(cfg, epoch):
    """For a folder (one image keeps the original's constant lr): a warm-up over the first WARM_UP
    steps, then a cosine decay to 0 at num_epochs; without it the loss jumps at lr 5e-4 and up."""
    warm_up = min(epoch / WARM_UP, 1)
    return cfg.lr * warm_up * (1 + math.cos(math.pi * min(epoch / cfg.num_epochs, 1))) / 2


def training_step(cfg, net, vgg, optimizer, scaler, batch, facts, critic=None):
    """One step on a batch of (network input, sharp, VGG19 targets), after the critic's if any; the
    loss terms, left on the device (reading them makes the host wait), as Progress.record takes."""
    inputs, sharp, target_maps = batch  # inputs: the blurred images, or Wiener's
    # Forward in mixed precision: float16 or bfloat16 where it is safe, float32 where not
    with mixed_precision(facts):
        restored = net(inputs)
    # The discriminator's step first: it learns to score sharp patches 1 and restored ones 0
    if critic:
        with mixed_precision(facts):
            both = critic.net(torch.cat([sharp, restored.detach()]))  # one call, one backward
            scores_sharp, scores_restored = both.chunk(2)
            told_apart = adversarial_loss(scores_sharp, 1) + adversarial_loss(scores_restored, 0)
        descend(told_apart, critic.net, critic.optimizer, critic.scaler, cfg, facts)
    # The network's loss: pixels and VGG19 features, and its patches' scores pushed towards 1
    with mixed_precision(facts):
        loss, mse, perceptual = losses(cfg, vgg, restored, sharp, target_maps)
        if critic:  # the judge's weights are not this step's to change: no gradient for them
            judge = itself(critic.net).requires_grad_(False)
            adversarial = adversarial_loss(judge(restored), 1)
            loss = loss + cfg.adversarial_weight * adversarial
    descend(loss, net, optimizer, scaler, cfg, facts)
    if critic:
        judge.requires_grad_(True)
    return (loss, mse, perceptual, adversarial, told_apart) if critic else (loss, mse, perceptual)


def descend(loss, net, optimizer, scaler, cfg, facts):
    """Backward from `loss`, then one step of `net`'s optimizer."""
    # Backward; under float16 the loss is scaled up so that small gradients survive
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    # Unscale first, so that clipping sees the true gradients
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm, foreach=facts.multi_tensor)
    # Step (the scaler skips it if a float16 gradient overflowed)
    scaler.step(optimizer)
    scaler.update()


def train(cfg, net, vgg, optimizer, scaler, batches, progress, facts, critic=None):
    """Trains epochs progress.epoch + 1 .. num_epochs; returns 'done', 'stopped' or 'diverged'."""
    progress.start()
    last_good = deepcopy(net.state_dict())  # a diverged run's results: the last finite weights
    outcome = "done"
    adams = [optimizer, critic.optimizer] if critic else [optimizer]
    for epoch in range(progress.epoch + 1, cfg.num_epochs + 1):
        batch = next(batches)
        if cfg.folder:  # one image keeps the original's constant lr
            for group in (group for adam in adams for group in adam.param_groups):
                group["lr"] = learning_rate(cfg, epoch)
        terms = training_step(cfg, net, vgg, optimizer, scaler, batch, facts, critic)
        # Every log_every epochs: read the losses, log, checkpoint. Only then does the host wait.
        due = progress.due(epoch)
        if not due:
            continue
        outcome = progress.record(epoch, due, net, optimizer, scaler, terms)
        if outcome == "diverged":
            net.load_state_dict(last_good)
        if outcome != "running":
            break
        last_good = deepcopy(net.state_dict())
    return outcome


# ---- Results: the network against the blurred input and the classical deconvolutions
def evaluate(net, setting, pair, cfg):
    """The Row of the test image of `setting`: the network beside the baselines (results.py)."""
    with torch.no_grad():
        restored = net(network_input(pair.blurred, pair.kernel, pair.noise, cfg)).float()
    return compared(setting, pair, restored)


# ---- The job
UNSEEN_SAMPLE = "data/sample.jpg"  # a folder's network is tested on it, and on holdout_path
# Test images' blurs and noise come from a generator seeded past every seed a run can have
TEST_DRAWS = 2**32 + 2026
CHOICES = {
    "model": tuple(MODELS),
    "pixel_loss": ("mse", "l1"),
    "restore_from": ("blurred", "wiener"),
    "blur_kind": BLUR_KINDS,
    "amp_dtype": ("auto", "float16", "bfloat16", "float32"),
    "torch_compile": ("auto", "on", "off"),
}


def load_test_pairs(cfg, test_paths, facts):
    """{setting: Pair} of the images to test on, on the device; a folder's keep their size."""
    size = None if cfg.folder else cfg.image_size
    draws = torch.Generator().manual_seed(TEST_DRAWS)
    pairs = {}
    for setting, path in test_paths.items():
        pairs[setting] = load_image_pair(path, size, cfg, draws, facts.processor, setting)
        check_blur_fits(pairs[setting].kernel, pairs[setting].sharp, setting)
    return pairs


def run(cfg, stop, vgg_weights):
    """Trains on the image or a folder's crops, then evaluates, reports, saves; the exit code."""
    facts = facts_of(cfg)
    join(facts.team, facts.processor)  # torchrun's other processes (none without torchrun)
    out = Path(cfg.output_dir)
    test_paths = input_paths(cfg, UNSEEN_SAMPLE)
    checkpoint = read_checkpoint(cfg, CHOICES)[:2] if cfg.resume else None  # nothing written yet
    pairs = load_test_pairs(cfg, test_paths, facts)
    photos = training_photos(cfg, facts.around_crop, test_paths, facts.team)  # (photo_folder.py)
    if checkpoint:
        check_same_images(cfg, *checkpoint, photos)
    net = make_network(cfg.model, cfg.restore_from, cfg.seed, facts.processor)
    read = [*test_paths.values(), *(photo.path for photo in photos)]  # none may be overwritten
    room = space_needed(net, cfg.image_size)
    with locked_output_dir(out, read, room) if facts.team.main else nullcontext():  # one writes
        vgg, optimizer, scaler, critic = make_training(cfg, net, vgg_weights, facts)
        check_something_to_learn(cfg, vgg is not None)
        # Crops, kernels and noise: under torchrun, each process its own
        generator = torch.Generator().manual_seed(cfg.seed + facts.team.rank)
        progress = Progress(cfg, stop, generator, photos, facts.team, critic)
        if cfg.folder:
            pixels = [photo.pixels for photo in photos]
            batches = folder_batches(pixels, cfg, facts, generator, vgg)
        else:
            batches = image_batches(pairs["image_path"], cfg, facts, generator, vgg)
        if checkpoint:
            restore_training(cfg, *checkpoint, net, optimizer, scaler, progress, critic)
        shown = pairs["sample" if cfg.folder else "image_path"]  # the first row of the figure
        baseline = image_quality(shown.blurred, shown.sharp, shown.border)
        print_plan(cfg, facts, vgg is not None, progress, baseline, WARM_UP)
        watched = network_input(shown.blurred, shown.kernel, shown.noise, cfg)
        progress.watch(watched, shown.sharp, shown.border)  # for progress.png

        def warm_up(batch):  # the step's forward and backward, for torch.compile
            inputs, sharp, target_maps = batch
            with mixed_precision(facts):
                losses(cfg, vgg, net(inputs), sharp, target_maps)[0].backward()

        modules = [net, vgg] if vgg else [net]
        batches = compiled_on_first_batch(cfg, modules, facts.processor, batches, warm_up)
        model = together(net, facts.team, facts.processor)  # torchrun: DistributedDataParallel
        outcome = train(cfg, model, vgg, optimizer, scaler, batches, progress, facts, critic)

        eager(modules)  # at the test images' sizes, torch.compile would compile again
        net.eval()
        if facts.team.main:  # the first process alone evaluates and writes the results
            rows = [evaluate(net, setting, pair, cfg) for setting, pair in pairs.items()]
            print_summary(rows, cfg.folder)
            save_results(out, rows, progress, not cfg.folder and cfg.blur_kind != "random")
    return report_outcome(outcome, progress, SETTINGS)


def apply_to_photo(cfg, given, stop):
    """--apply: the trained network, after its first step, on a photo at the photo's own size, in
    tiles (memory stays small), as output_dir/<name>_deblurred.png."""
    facts = facts_of(cfg)
    photo_path = input_paths(cfg)["apply"]
    blurred = image_to_tensor(read_rgb_image(photo_path, "apply"), facts.processor, torch.float16)
    measured = read_kernel(cfg.kernel) if cfg.kernel else None
    path, checkpoint, trained = read_checkpoint(cfg, CHOICES)
    net = make_network(trained.model, trained.restore_from, 0, facts.processor).eval()
    load_weights(net, path, checkpoint)
    undone = blur_to_undo(cfg, given, trained, path)  # trained for, named, measured or estimated
    kernel = measured if undone == "measured" else None
    kernel = blur_kernel(*undone) if isinstance(undone, tuple) else kernel  # (kind, radius, angle)
    if kernel is not None:
        check_blur_fits(kernel, blurred, "apply", trained)
    noise = cfg.noise_level  # given, or needed by no Wiener step
    if trained.restore_from == "wiener" and "noise_level" not in given:
        noise = estimated_noise(blurred)
        note_estimated_noise(noise, trained)
    with photo_output(cfg, photo_path, blurred.shape[-2:]) as target:  # never a user's file
        if undone == "estimated":  # from the photo itself, saved beside the result
            kernel = blind_kernel(estimate_kernel, blurred, noise, cfg, stop, photo_path)
        # Wiener on the whole photo at once, kept in half precision (within 1/16 of an 8-bit
        # step); then the network, a tile at a time (tiles.py): memory for a few copies of it
        described_photo = network_input(blurred, kernel, noise, trained).half()
        del blurred
        with torch.no_grad(), mixed_precision(facts):
            restored = restored_in_tiles(net, described_photo, stop, photo_path)
        save_image(as_image(restored), target, "PNG", compress_level=1)
    return 0


def main(argv=None, vgg_weights="IMAGENET1K_V1"):
    """Runs the job; returns the exit code. Tests pass vgg_weights=None for a random VGG19."""
    training = partial(run, vgg_weights=vgg_weights)
    return run_job(training, apply_to_photo, SETTINGS, CHOICES, __file__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
