"""Times Deblur's training step, the very function train() runs (training_step), against a naive
step written as the original README describes; or, with --folder, a folder's step for each folder
quick look, and the share of it spent making its batch (crops, blur, noise, the Wiener step).

    python benchmarks/bench_train.py                    # one image at 128 and 256 px
    python benchmarks/bench_train.py --compile          # Deblur's step compiled too
    python benchmarks/bench_train.py --folder           # the three folder quick looks

On the device Deblur picks, its AMP dtype; VGG19 with random weights (as fast as the pretrained
ones); the median of --repeats steps after --warmup, the variants interleaved.
"""

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import Deblur  # noqa: E402
from blurs import drawn  # noqa: E402
from PerceptualLoss import VGG19Loss  # noqa: E402
from plumbing.command_line import (  # noqa: E402
    ANY_BLUR_QUICK_LOOK,
    BLIND_QUICK_LOOK,
    FOLDER_QUICK_LOOK,
    parse_settings,  # noqa: E402
)
from plumbing.device import fast_float32, mixed_precision  # noqa: E402
from plumbing.job import flush_denormals  # noqa: E402
from plumbing.photo_folder import read_image_folder  # noqa: E402


def settings(argv):
    """Deblur's settings with `argv`, and the Facts a run would work out from them."""
    cfg = parse_settings(Deblur.SETTINGS, argv)[0]
    return cfg, Deblur.facts_of(cfg)


def deblur_step(cfg, facts, batches, vgg):
    """One call: one step of Deblur's training_step, on the next of `batches`."""
    net = Deblur.make_network(cfg.model, cfg.restore_from, cfg.seed, facts.device)
    _, optimizer, scaler, discriminator = Deblur.make_training(cfg, net, None, facts)
    if cfg.torch_compile == "on":  # the network only: VGG19 is shared with the naive step
        net.forward = torch.compile(net.forward)
    batch = partial(next, batches)
    step = Deblur.training_step
    return lambda: step(cfg, net, vgg, optimizer, scaler, batch(), facts, discriminator)


def naive_step(cfg, facts, pair, vgg):
    """The original's step: NCHW tensors, the target's VGG19 features every step, autocast, a
    GradScaler, the gradients clipped; the same network, data and loss."""
    net = Deblur.make_network(cfg.model, cfg.restore_from, cfg.seed, facts.device)
    net = net.to(memory_format=torch.contiguous_format)
    optimizer = torch.optim.Adam(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(facts.device.type, enabled=facts.amp == torch.float16)
    blurred, sharp = pair.blurred.contiguous(), pair.sharp.contiguous()

    def step():
        with mixed_precision(facts):
            restored = net(blurred)
            loss = cfg.mse_weight * F.mse_loss(restored, sharp)
            loss = loss + cfg.perceptual_weight * vgg(restored, sharp)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        return loss

    return step


def timed(steps, warmup, repeats, device):
    """{name: median seconds a call} of the callables, interleaved."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            synchronised(device)
            start = time.perf_counter()
            step()
            synchronised(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def synchronised(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def image_benchmark(args):
    for size in args.sizes:
        cfg, facts = settings(["--image_size", str(size), "--torch_compile", "off"])
        pair = Deblur.load_image_pair(ROOT / cfg.image_path, size, cfg, None, facts.device)
        vgg = VGG19Loss(weights=None).to(facts.device, memory_format=torch.channels_last)
        steps = {"naive": naive_step(cfg, facts, pair, vgg)}
        batches = Deblur.image_batches(pair, cfg, facts, None, vgg)
        steps["deblur"] = deblur_step(cfg, facts, batches, vgg)
        if args.compile:
            compiled = settings(["--image_size", str(size), "--torch_compile", "on"])[0]
            steps["deblur compiled"] = deblur_step(compiled, facts, batches, vgg)
        seconds = timed(steps, args.warmup, args.repeats, facts.device)
        print(f"{size} px, {facts.device}, {str(facts.amp)[6:]}:")
        for name, step_seconds in seconds.items():
            speedup = seconds["naive"] / step_seconds
            print(f"  {name:16} {step_seconds * 1000:8.0f} ms/step  {speedup:.2f}x", flush=True)


def folder_benchmark(args):
    for name, quick_look in (
        ("one blur", FOLDER_QUICK_LOOK),
        ("any blur", ANY_BLUR_QUICK_LOOK),
        ("any blur, a GPU's batch", f"{ANY_BLUR_QUICK_LOOK} --batch_size 32 --crop_size 128"),
        ("blind", BLIND_QUICK_LOOK),
    ):
        cfg, facts = settings(["--image_path", "data/train", *quick_look.split()])
        photos = read_image_folder(ROOT / "data/train", cfg.crop_size, facts.around_crop)
        mapped = [photo.pixels for photo in photos]  # as Deblur trains: read through the cache
        in_memory = [pixels.clone() for pixels in mapped]  # as it did: decoded into memory
        steps = {}
        for where, pixels in (("cache", mapped), ("memory", in_memory)):
            generator = torch.Generator().manual_seed(0)
            batches = Deblur.folder_batches(pixels, cfg, facts, generator, None)
            steps[f"step, {where}"] = deblur_step(cfg, facts, batches, None)
            steps[f"batch, {where}"] = lambda b=batches: next(b)
        drawing = torch.Generator().manual_seed(0)
        steps["kernels"] = lambda c=cfg, g=drawing: drawn(c, c.batch_size, g)  # on the host
        seconds = timed(steps, args.warmup, args.repeats, facts.device)
        print(f"{name}: {cfg.batch_size} crops of {cfg.crop_size} px, {str(facts.amp)[6:]}:")
        for where in ("cache", "memory"):
            step, batch = seconds[f"step, {where}"], seconds[f"batch, {where}"]
            print(
                f"  photos in {where:6}: {step * 1000:.0f} ms a step, of which making the batch "
                f"{batch * 1000:.1f} ms ({batch / step:.0%})",
                flush=True,
            )
        drawing_ms = seconds["kernels"] * 1000
        print(f"  drawing its kernels and noise levels: {drawing_ms:.2f} ms", flush=True)


def main():
    flush_denormals()  # as every run does, before torch's first parallel operation
    fast_float32()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also Deblur's step compiled")
    parser.add_argument("--folder", action="store_true", help="the folder quick looks instead")
    args = parser.parse_args()
    if args.folder:
        folder_benchmark(args)
    else:
        image_benchmark(args)


if __name__ == "__main__":
    main()
