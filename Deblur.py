"""Deblur: remove blur from an image by training a small residual CNN on that very image (or on
random crops of a folder's photos, blurred one way or any way), measured against classical
deconvolution and on images it never saw. Read it top to bottom: settings, data, model, loss, the
training loop, results, the job; the blur model is in blurs.py, the plumbing in plumbing/.
"""

import math
from copy import deepcopy
from functools import partial
from itertools import repeat
from typing import NamedTuple

import torch
from PIL import ImageFilter
from torch import nn
from torch.nn import functional as F

from blurs import NO_BLUR, Pair, blur, blur_kernel, described, drawn, kernel_width, photographed
from deconvolution import data_step, estimated_noise, prior_levels, wiener_by_rule, wiener_margin
from kernel_estimation import estimate_kernel
from networks import NETWORKS, PatchDiscriminator
from PerceptualLoss import load_vgg19_loss
from plumbing.checkpoints import (
    Keeper,
    blur_to_undo,
    check_same_images,
    checkpoint_to_resume,
    load_weights,
    read_checkpoint,
    restore_training,
)
from plumbing.command_line import check_something_to_learn
from plumbing.device import (
    amp_dtype_for,
    compiled_on_first_batch,
    eager,
    mixed_precision,
    on_device,
    pick_device,
)
from plumbing.files import photo_output, run_output_dir, save_image, space_needed
from plumbing.images import (
    as_image,
    check_blur_fits,
    image_to_tensor,
    input_paths,
    is_jpeg,
    read_rgb_image,
    read_sharp,
)
from plumbing.job import report_outcome, run_job
from plumbing.kernel_file import blind_kernel, note_noise, read_kernel
from plumbing.photo_folder import random_views, training_photos
from plumbing.processes import Team, itself, join, this_process, together
from plumbing.progress import Progress, print_plan
from plumbing.settings import declared
from plumbing.tiles import network_in_tiles
from results import Frames, compared, image_quality, print_summary, psnr_from_mse, save_results

# ---- Settings: edit a line, or override it for one run: python Deblur.py --num_epochs 300
# A comment's [brackets] say what the setting may be (read by plumbing/settings.py)
# -- The problem the network learns to undo: a checkpoint resumes only with these unchanged
image_path = "data/sample.jpg"  # the training image, or a folder of them (see crop_size)
image_size = 512  # the image is resized to image_size x image_size pixels [16 to 4096]
blur_kind = "gaussian"  # the blur; gaussian is Pillow's, random any of them [blurs.BLUR_KINDS]
blur_radius = 5.0  # Gaussian sigma, half a motion's length, disk or box radius, in px [0 to 682]
blur_angle = 0.0  # direction of a motion blur, in degrees anticlockwise from horizontal
noise_level = 0.0  # noise added after the blur, its standard deviation in 8-bit steps [0 to 64]
model = "deblurnet"  # the network; deblurnet is the original's [networks.NETWORKS]
restore_from = "blurred"  # the network mends the blurred image, or Wiener's [blurred or wiener]
# -- How it learns
crop_size = 48  # a folder: each step trains on random crop_size x crop_size crops [1 to 4096]
batch_size = 16  # a folder: crops per step [1 to 4096]
num_epochs = 20000  # an epoch is one step: on the image pair, or on a folder's batch [1 to 1e9]
lr = 0.0001  # Adam learning rate [above 0]
weight_decay = 1e-5  # Adam weight decay (L2 regularisation) [at least 0]
mse_weight = 1.0  # weight of the pixel-wise loss (MSE, or L1: see pixel_loss) [at least 0]
pixel_loss = "mse"  # the pixel-wise loss: mse (the original's) or l1, sharpening less [mse or l1]
perceptual_weight = 0.1  # weight of the VGG19 perceptual loss; 0 never loads VGG19 [at least 0]
adversarial_weight = 0.0  # weight of the adversarial term (a PatchGAN discriminator) [at least 0]
max_grad_norm = 1.0  # gradients are clipped to this norm [above 0]
seed = 0  # seeds weights, crops and blurs: same seed, same result on a CPU [0 to 4294967295]
# -- The run: what it writes, where, and on what
log_every = 10  # a progress line and a history.csv row every this many epochs [1 to 1e9]
checkpoint_every = 1000  # output_dir/checkpoint.pt every this many epochs and at the end [1 to 1e9]
device = "auto"  # auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps
amp_dtype = "auto"  # auto: float16 on CUDA, bfloat16 if fast [auto, float16, bfloat16, float32]
torch_compile = "auto"  # torch.compile the network and VGG19 (auto: on CUDA) [auto, on or off]
holdout_path = "data/holdout.jpg"  # a second image, never trained on, to test on; '' skips it
output_dir = "."  # where results, history.csv and checkpoint.pt are written (created if missing)
resume = ""  # '' starts afresh; auto (or a bare --resume): output_dir/checkpoint.pt; or a path
apply = ""  # a photo to deblur with the network in --resume's checkpoint, instead of training
kernel = ""  # --apply: the photo's measured blur kernel, a grayscale image or a .npy array
kernel_size = 31  # --apply without a kernel: the widest blur it estimates, in pixels [5 to 101]
prior_rounds = 3  # --apply, any-blur networks: rounds of the kernel's data step [0 to 20]
# ----
SETTINGS = declared(globals(), __file__)


# ---- Data: a blurred image and its sharp original, always in that order (a Pair, blurs.py)
def load_image_pair(path, size, cfg, generator, torch_device="cpu", setting="image_path"):
    """A Pair of (1, 3, H, W) tensors: the image blurred as the settings say (gaussian: Pillow's
    GaussianBlur, as the original), with noise, in 8 bits; random draws come from `generator`."""
    sharp_image = read_sharp(path, size, setting)
    sharp = image_to_tensor(sharp_image, torch_device)
    kernels, noise = drawn(cfg, 1, generator)
    if cfg.blur_kind == "gaussian":  # exactly the original's blur
        blurred = sharp_image.filter(ImageFilter.GaussianBlur(radius=cfg.blur_radius))
        blurred = image_to_tensor(blurred, torch_device)
    else:
        blurred = blur(sharp, kernels)
    blurred = photographed(blurred, noise, generator)
    return Pair(blurred, sharp, kernels.reshape(kernels.shape[-2:]), float(noise))


# ---- Model: the original's DeblurNet, the U-Net or the ResNet (NETWORKS), and what it is given
def make_network(name, restore_from, seed, torch_device):
    """NETWORKS[name] for restore_from's input (network_input), initialised from `seed`."""
    torch.manual_seed(seed)  # the same seed, the same initial weights
    inputs = 5 if restore_from == "wiener" else 3
    return NETWORKS[name](inputs).to(torch_device, memory_format=torch.channels_last)


def network_input(blurred, kernels, noise, cfg, pad=None):
    """What the network restores: the blurred image, as in the original; or Wiener's deconvolution
    with its kernel (one each), whose ringing and noise it mends, told the noise and the spread."""
    if cfg.restore_from == "wiener":
        restored = wiener_by_rule(blurred, kernels, noise, pad)
        return described(restored, kernels, noise)
    return blurred


# ---- Loss: mse_weight x MSE (or L1) + perceptual_weight x VGG19 distance
def losses(cfg, vgg, restored, sharp, target_maps):
    """The loss terms by name, each logged and kept in history.csv: the total trained on, the MSE
    (logged as PSNR too, whatever the pixel loss) and the perceptual term."""
    mse = F.mse_loss(restored, sharp)
    pixel = F.l1_loss(restored, sharp) if cfg.pixel_loss == "l1" else mse
    perceptual = vgg(restored, target_maps) if vgg else torch.zeros((), device=restored.device)
    total = cfg.mse_weight * pixel + cfg.perceptual_weight * perceptual
    return {"total": total, "mse": mse, "perceptual": perceptual}


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

    device: torch.device
    amp: torch.dtype  # the autocast dtype
    width: int  # the blur kernel's width (the random family's largest)
    input_margin: int  # the real pixels around a crop its network input needs (Wiener's margin)
    around_crop: int  # the real pixels cut around a folder's crop: the blur's, then input_margin
    multi_tensor: bool  # PyTorch's fused and foreach kernels: on CUDA and the CPU, not Apple's MPS
    team: Team = Team()  # this process's place among torchrun's (Team(): alone)


def facts_of(cfg):
    """The run's Facts, from its settings."""
    team = this_process(cfg)
    torch_device = pick_device(cfg.device, team)
    amp = amp_dtype_for(cfg.amp_dtype, torch_device)
    width = kernel_width(cfg)
    margin = wiener_margin(width) if cfg.restore_from == "wiener" else 0
    multi_tensor = torch_device.type != "mps"
    return Facts(torch_device, amp, width, margin, width // 2 + margin, multi_tensor, team)


class Discriminator(NamedTuple):
    """The adversarial term's PatchDiscriminator (under torchrun, in DDP), its Adam and scaler."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def make_training(cfg, net, vgg_weights, facts):
    """The perceptual loss (None for MSE only), Adam and the gradient scaler for `net`, and the
    Discriminator of the adversarial term (None at adversarial_weight 0)."""
    vgg = load_vgg19_loss(vgg_weights, facts.device) if cfg.perceptual_weight else None
    discriminator = None
    if cfg.adversarial_weight:
        torch.manual_seed(cfg.seed)  # the same seed, the same discriminator
        patches = PatchDiscriminator().to(facts.device, memory_format=torch.channels_last)
        shared = together(patches, facts.team, facts.device)  # torchrun: DDP
        discriminator = Discriminator(shared, *adam_and_scaler(patches, cfg, facts))
    return vgg, *adam_and_scaler(net, cfg, facts), discriminator


def adam_and_scaler(net, cfg, facts):
    """Adam for `net`, fused (one kernel for all tensors, and no host sync for a GradScaler's
    skipped steps); and, under float16, a scaler that scales losses up so gradients survive."""
    fused = facts.multi_tensor
    adam = torch.optim.Adam(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return adam, torch.amp.GradScaler(facts.device.type, enabled=facts.amp == torch.float16)


def folder_batches(images, cfg, facts, generator, vgg):
    """Every step, batch_size random crops of the folder's images, turned by a multiple of 90
    degrees and maybe mirrored (8 views of each), as (network input, sharp, VGG19 targets); each
    cut with margins (no made-up edge for the blur or Wiener), blurred with its own kernel."""
    around = facts.around_crop
    size = cfg.crop_size + 2 * around
    while True:
        # Only 8-bit crops cross over to the device (photo_folder.py, device.py): blurred there
        sharp = on_device(random_views(images, cfg.batch_size, size, generator), facts.device) / 255
        kernels, noise = drawn(cfg, cfg.batch_size, generator)
        blurred = photographed(blur(sharp, kernels, pad=False), noise, generator)
        inputs = network_input(blurred, kernels, noise, cfg, pad=facts.width)
        inner = facts.input_margin  # the blur took its half-width off each side
        inputs = inputs[:, :, inner : inner + cfg.crop_size, inner : inner + cfg.crop_size]
        sharp = sharp[:, :, around : around + cfg.crop_size, around : around + cfg.crop_size]
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


LR_RISING_STEPS = 100  # a folder's learning rate rises over this many steps


def learning_rate(cfg, epoch):
    """A folder's (one image keeps the original's constant lr): rising over LR_RISING_STEPS, then
    a cosine decay to 0 at num_epochs; without the rise the loss jumps at lr 5e-4 and up."""
    risen = min(epoch / LR_RISING_STEPS, 1)
    return cfg.lr * risen * (1 + math.cos(math.pi * min(epoch / cfg.num_epochs, 1))) / 2


def training_step(cfg, net, vgg, optimizer, scaler, batch, facts, discriminator=None):
    """One step on a batch of (network input, sharp, VGG19 targets), after the discriminator's if
    any; the loss terms by name, left on the device (reading them makes the host wait)."""
    inputs, sharp, target_maps = batch  # inputs: the blurred images, or Wiener's
    # Forward in mixed precision: float16 or bfloat16 where it is safe, float32 where not
    with mixed_precision(facts):
        restored = net(inputs)
    # The discriminator's step first: it learns to score sharp patches 1 and restored ones 0
    if discriminator:
        with mixed_precision(facts):
            both = discriminator.net(torch.cat([sharp, restored.detach()]))  # one call
            scores_sharp, scores_restored = both.chunk(2)
            told_apart = adversarial_loss(scores_sharp, 1) + adversarial_loss(scores_restored, 0)
        descend(told_apart, *discriminator, cfg, facts)
    # The network's loss: pixels and VGG19 features, and its patches' scores pushed towards 1
    with mixed_precision(facts):
        terms = losses(cfg, vgg, restored, sharp, target_maps)
        if discriminator:  # its weights are not this step's to change: no gradient for them
            frozen = itself(discriminator.net).requires_grad_(False)
            terms["adversarial"] = adversarial_loss(frozen(restored), 1)
            terms["total"] = terms["total"] + cfg.adversarial_weight * terms["adversarial"]
    descend(terms["total"], net, optimizer, scaler, cfg, facts)
    if discriminator:
        frozen.requires_grad_(True)
        terms["discriminator"] = told_apart  # its loss, logged beside the network's
    return terms


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


def forward_and_backward(cfg, net, vgg, facts, batch):
    """The step's forward and backward alone, for torch.compile to compile on the first batch."""
    inputs, sharp, target_maps = batch
    with mixed_precision(facts):
        losses(cfg, vgg, net(inputs), sharp, target_maps)["total"].backward()


def train(cfg, net, vgg, optimizer, scaler, batches, progress, facts, discriminator=None):
    """Trains epochs progress.epoch + 1 .. num_epochs; returns 'done', 'stopped' or 'diverged'."""
    progress.start()
    last_good = deepcopy(net.state_dict())  # a diverged run's results: the last finite weights
    outcome = "done"
    adams = [optimizer, discriminator.optimizer] if discriminator else [optimizer]
    for epoch in range(progress.epoch + 1, cfg.num_epochs + 1):
        batch = next(batches)
        if cfg.folder:  # one image keeps the original's constant lr
            for group in (group for adam in adams for group in adam.param_groups):
                group["lr"] = learning_rate(cfg, epoch)
        terms = training_step(cfg, net, vgg, optimizer, scaler, batch, facts, discriminator)
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
def plug_and_play(restore, blurred, kernel, noise, trained, rounds):
    """`restore` (the network, whole or in tiles) on its input; then, for an any-blur network and a
    blur, `rounds` of DPIR's plug and play: the kernel's data step, then the network told no blur,
    at a noise level falling to the photo's (docs/experiments.md, Plug and play)."""
    restored = restore(network_input(blurred, kernel, noise, trained))
    any_blur = trained.blur_kind == "random" and trained.restore_from == "wiener"
    if not any_blur or (kernel > 0).sum() == 1:  # a point: no blur for the data step to undo
        return restored
    for level, weight in prior_levels(noise, trained.noise_level, rounds):
        sharper = data_step(blurred, kernel, restored, weight)
        restored = restore(network_input(sharper, NO_BLUR, level, trained))
    return restored


def evaluate(net, setting, pair, cfg):
    """The Row of the test image of `setting`: the network beside the baselines (results.py)."""
    with torch.no_grad():
        restored = net(network_input(pair.blurred, pair.kernel, pair.noise, cfg)).float()
    return compared(setting, pair, restored)


# ---- The job
UNSEEN_SAMPLE = "data/sample.jpg"  # a folder's network is tested on it, and on holdout_path
TEST_DRAWS = 2**32 + 2026  # seeds the test images' blurs and noise: past every run's seed


def load_test_pairs(cfg, test_paths, facts):
    """{setting: Pair} of the images to test on, on the device; a folder's keep their size."""
    size = None if cfg.folder else cfg.image_size
    draws = torch.Generator().manual_seed(TEST_DRAWS)
    pairs = {}
    for setting, path in test_paths.items():
        pairs[setting] = load_image_pair(path, size, cfg, draws, facts.device, setting)
        check_blur_fits(pairs[setting].kernel, pairs[setting].sharp, setting)
    return pairs


def training_batches(cfg, pairs, photos, facts, generator, vgg):
    """What train() steps on: a folder's crops, or the one image."""
    if cfg.folder:
        return folder_batches([photo.pixels for photo in photos], cfg, facts, generator, vgg)
    return image_batches(pairs["image_path"], cfg, facts, generator, vgg)


def run(cfg, stop, vgg_weights):
    """Trains on the image or a folder's crops, then evaluates, reports, saves; the exit code."""
    facts = facts_of(cfg)
    join(facts.team, facts.device)  # torchrun's other processes (none without torchrun)
    test_paths = input_paths(cfg, UNSEEN_SAMPLE)
    checkpoint = checkpoint_to_resume(cfg, SETTINGS) if cfg.resume else None  # nothing written yet
    pairs = load_test_pairs(cfg, test_paths, facts)
    photos = training_photos(cfg, facts.around_crop, test_paths, facts.team)  # (photo_folder.py)
    if checkpoint:
        check_same_images(cfg, *checkpoint, photos)
    net = make_network(cfg.model, cfg.restore_from, cfg.seed, facts.device)
    read = [*test_paths.values(), *(photo.path for photo in photos)]  # none may be overwritten
    with run_output_dir(cfg, facts.team, read, space_needed(net, cfg.image_size)):
        vgg, optimizer, scaler, discriminator = make_training(cfg, net, vgg_weights, facts)
        check_something_to_learn(cfg, vgg is not None)
        # Crops, kernels and noise: under torchrun, each process its own
        generator = torch.Generator().manual_seed(cfg.seed + facts.team.rank)
        keeper = Keeper(cfg, facts.team, discriminator)  # output_dir/checkpoint.pt
        progress = Progress(cfg, stop, psnr_from_mse, keeper, generator, photos, facts.team)
        shown = pairs["sample" if cfg.folder else "image_path"]  # the first row of the figure
        watched = network_input(shown.blurred, shown.kernel, shown.noise, cfg)
        progress.frames = Frames(watched, shown.sharp, shown.border)  # progress.png's
        if checkpoint:
            restore_training(cfg, *checkpoint, net, optimizer, scaler, progress, discriminator)
        baseline = image_quality(shown.blurred, shown.sharp, shown.border)
        print_plan(cfg, facts, net, vgg is not None, progress, baseline, LR_RISING_STEPS)
        batches = training_batches(cfg, pairs, photos, facts, generator, vgg)
        first_step = partial(forward_and_backward, cfg, net, vgg, facts)
        batches = compiled_on_first_batch(cfg, [net, vgg], facts.device, batches, first_step)
        ddp_net = together(net, facts.team, facts.device)  # torchrun: DistributedDataParallel
        outcome = train(
            cfg, ddp_net, vgg, optimizer, scaler, batches, progress, facts, discriminator
        )
        eager([net, vgg])  # at the test images' sizes, torch.compile would compile again
        net.eval()
        if facts.team.main:  # the first process alone evaluates and writes the results
            rows = [evaluate(net, setting, pair, cfg) for setting, pair in pairs.items()]
            print_summary(rows, cfg.folder)
            save_results(cfg, rows, progress)
    return report_outcome(outcome, progress, SETTINGS)


def apply_to_photo(cfg, given, stop):
    """--apply: the trained network, after its first step, on a photo at the photo's own size, in
    tiles (memory stays small), as output_dir/<name>_deblurred.png."""
    facts = facts_of(cfg)
    photo_path = input_paths(cfg)["apply"]
    blurred = image_to_tensor(read_rgb_image(photo_path, "apply"), facts.device, torch.float16)
    measured = read_kernel(cfg.kernel) if cfg.kernel else None
    path, checkpoint, trained = read_checkpoint(cfg, SETTINGS)
    net = make_network(trained.model, trained.restore_from, 0, facts.device).eval()
    load_weights(net, path, checkpoint)
    undone = blur_to_undo(cfg, given, trained, path)  # trained for, named, measured or estimated
    kernel = measured if undone == "measured" else None
    kernel = blur_kernel(*undone) if isinstance(undone, tuple) else kernel  # (kind, radius, angle)
    if kernel is not None:
        check_blur_fits(kernel, blurred, "apply", trained)
    noise = cfg.noise_level  # given, or needed by no Wiener step
    if trained.restore_from == "wiener":
        noise = noise if "noise_level" in given else estimated_noise(blurred, is_jpeg(photo_path))
        note_noise(noise, trained, given="noise_level" in given)
    with photo_output(cfg, photo_path, blurred.shape[-2:]) as target:  # never a user's file
        if undone == "estimated":  # from the photo itself, saved beside the result
            kernel = blind_kernel(estimate_kernel, blurred, noise, cfg, stop, photo_path)
            check_blur_fits(kernel, blurred, "apply", trained)  # wider than it learned: said
        # Wiener on the whole photo, the network in tiles (tiles.py): a few copies' memory
        tiled = network_in_tiles(net, stop, photo_path, facts)
        with torch.no_grad():  # the network under autocast, Wiener and the data step in float32
            restored = plug_and_play(tiled, blurred, kernel, noise, trained, cfg.prior_rounds)
        save_image(as_image(restored), target, "PNG", compress_level=1)
    return 0


def main(argv=None, vgg_weights="IMAGENET1K_V1"):
    """Runs the job; returns the exit code. Tests pass vgg_weights=None for a random VGG19."""
    training = partial(run, vgg_weights=vgg_weights)
    return run_job(training, apply_to_photo, SETTINGS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
