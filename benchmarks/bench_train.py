"""Times Deblur's training step against a naive step written as the original README describes.

    python benchmarks/bench_train.py                       # 128, 256 and 512 px; updates RESULTS.md
    python benchmarks/bench_train.py --sizes 128 --repeats 3 --no-write
    python benchmarks/bench_train.py --ablation 512        # each optimisation on its own

Both steps run in one process, interleaved, on the device Deblur.py would pick. The VGG19 has
random weights (the speed is the same as with the pretrained ones, and no download is needed).
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import repeat
from pathlib import Path
from types import SimpleNamespace

# Compile time is measured cold, as a user's first run sees it.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import Deblur  # noqa: E402
from PerceptualLoss import VGG19Loss  # noqa: E402
from plumbing.command_line import parse_settings  # noqa: E402
from plumbing.device import amp_dtype_for, compiled_on_first_batch, pick_device  # noqa: E402
from plumbing.images import image_to_tensor, read_image_folder  # noqa: E402
from plumbing.progress import Progress  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
SCRATCH = Path(
    tempfile.mkdtemp(prefix="deblur-bench-")
)  # train() writes its history and checkpoint here
PEAK_WORK = {False: "bf16 3x3 conv, 256 ch", True: "8192^3 bf16 matmul"}
BEGIN, END = "<!-- results: written by bench_train.py -->", "<!-- end of results -->"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def setup(size, device, seed=0):
    """The sample image pair at `size` and freshly seeded models, as Deblur.py builds them."""
    blurred_image, sharp_image = Deblur.load_image_pair(
        ROOT / "data" / "sample.jpg", size, radius=Deblur.blur_radius
    )
    torch.manual_seed(seed)
    net, vgg = Deblur.DeblurNet().to(device), VGG19Loss(weights=None).to(device)
    to = [image_to_tensor(image, device).contiguous() for image in (sharp_image, blurred_image)]
    return net, vgg, *to


def naive_step(
    net, vgg, sharp, blurred, device, channels_last=False, target_once=False, fused=False
):
    """The original's step: NCHW, target features recomputed every step, autocast, a GradScaler.

    The flags switch on one optimisation at a time, for the ablation.
    """
    if channels_last:
        net, vgg = (
            net.to(memory_format=torch.channels_last),
            vgg.to(memory_format=torch.channels_last),
        )
        sharp, blurred = (t.contiguous(memory_format=torch.channels_last) for t in (sharp, blurred))
    optimizer = torch.optim.Adam(
        net.parameters(),
        lr=Deblur.lr,
        weight_decay=Deblur.weight_decay,
        fused=True if fused else None,
    )
    scaler = torch.amp.GradScaler(device.type)
    if target_once:
        with torch.no_grad(), torch.autocast(device.type):
            target_maps = vgg.feature_maps(sharp)

    def step():
        with torch.autocast(device.type):
            output = net(blurred)
            mse = F.mse_loss(output, sharp)
            perceptual = vgg(output, target_maps if target_once else sharp)
            loss = Deblur.mse_weight * mse + Deblur.perceptual_weight * perceptual
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=Deblur.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        return loss

    return step


def deblur_step(sharp, blurred, device, compiled):
    """Deblur.py's own training loop, one epoch per call, built by its own make_training from the
    settings lines' defaults. The time is the one train() measures itself (the history's seconds
    column), which leaves out the checkpoint it writes at each call's last epoch."""
    settings = ["--torch_compile", "on" if compiled else "off", "--output_dir", str(SCRATCH)]
    cfg = deblur_settings(settings)
    net = Deblur.make_network(cfg.model, cfg.seed, device)  # seeded as setup() seeds
    vgg, optimizer, scaler = Deblur.make_training(cfg, net, None)
    sharp, blurred = (t.contiguous(memory_format=torch.channels_last) for t in (sharp, blurred))
    progress = Progress(cfg, SimpleNamespace(signum=None))
    progress.ours = True
    amp = amp_dtype_for(cfg.amp_dtype, device)
    batches = repeat((blurred, sharp, Deblur.vgg_targets(vgg, sharp, amp)))
    batches = compiled_on_first_batch(cfg, net, vgg, batches, amp)
    return train_one_epoch(cfg, net, vgg, optimizer, scaler, batches, progress), net


def deblur_settings(argv):
    return parse_settings(Deblur.SETTINGS, Deblur.CHOICES, Deblur.__file__, argv)


def train_one_epoch(cfg, net, vgg, optimizer, scaler, batches, progress, folder=False):
    """A step function: one more epoch of Deblur's train(), timed by train() itself."""

    def step():
        cfg.num_epochs = progress.epoch + 1
        before = progress.elapsed
        Deblur.train(cfg, net, vgg, optimizer, scaler, batches, progress, folder)
        step.seconds = progress.elapsed - before
        return torch.tensor(progress.history[-1][1])

    return step


FOLDER_VARIANTS = {
    "DeblurNet": ["--model", "deblurnet"],
    "U-Net": ["--model", "unet"],
    "U-Net after Wiener": ["--model", "unet", "--restore_from", "wiener"],
}


def folder_benchmark(args, device):
    """Folder mode's step (batch_size crops of crop_size, from data/train) for each network, and
    after the Wiener step, through Deblur's own train(), MSE only: pixels a second, and the share
    of the step spent making its batch (cropping, turning, moving, blurring, deconvolving). With
    --folder_batch and --folder_crop, the recipe's batches instead of the settings' defaults."""
    rows = {}
    for name, choice in FOLDER_VARIANTS.items():
        extra = ["--batch_size", str(args.folder_batch), "--crop_size", str(args.folder_crop)]
        settings = ["--torch_compile", "off", "--perceptual_weight", "0", *extra, *choice]
        cfg = deblur_settings([*settings, "--output_dir", str(SCRATCH)])
        kernel = Deblur.blur_kernel(cfg.blur_kind, cfg.blur_radius)
        amp = amp_dtype_for(cfg.amp_dtype, device)
        smallest = cfg.crop_size + 2 * (kernel.shape[0] // 2 + Deblur.input_margin(cfg, kernel))
        photos = list(read_image_folder(ROOT / "data" / "train", smallest).values())
        net = Deblur.make_network(cfg.model, cfg.seed, device)
        _, optimizer, scaler = Deblur.make_training(cfg, net, None)
        generator = torch.Generator().manual_seed(0)
        progress = Progress(cfg, SimpleNamespace(signum=None), generator)
        progress.ours = True
        batches = Deblur.folder_batches(photos, kernel, cfg, generator, None, amp, device)
        step = train_one_epoch(cfg, net, None, optimizer, scaler, batches, progress, folder=True)
        for _ in range(args.warmup):
            step()
        times = []
        for _ in range(args.repeats):
            step()
            times.append(step.seconds)
        making = Deblur.folder_batches(photos, kernel, cfg, generator, None, amp, device)
        next(making)
        sync(device)
        start = time.perf_counter()
        for _ in range(10):
            next(making)
        sync(device)
        rows[name] = (statistics.median(times), (time.perf_counter() - start) / 10)
    pixels = args.folder_batch * args.folder_crop**2
    print(f"{machine(device)}; {args.folder_batch} crops of {args.folder_crop}x{args.folder_crop}")
    for name, (seconds, batch_seconds) in rows.items():
        print(
            f"  {name}: {seconds * 1000:.0f} ms/step, {pixels / seconds / 1e3:.0f} kpixels/s, "
            f"making the batch {batch_seconds * 1000:.1f} ms ({batch_seconds / seconds:.1%})"
        )
    wiener = rows["U-Net after Wiener"][1] - rows["U-Net"][1]
    print(
        f"  the Wiener step: {wiener * 1000:.1f} ms, {wiener / rows['U-Net after Wiener'][0]:.1%}"
    )


def build(variant, size, device):
    """A step function for `variant` at `size`, and the network it trains."""
    net, vgg, sharp, blurred = setup(size, device)
    if variant.startswith("deblur"):
        return deblur_step(sharp, blurred, device, compiled=variant.endswith("compile"))
    flags = {
        "channels_last": "channels_last" in variant,
        "target_once": "target_once" in variant,
        "fused": "fused_adam" in variant,
    }
    return naive_step(net, vgg, sharp, blurred, device, **flags), net


def check_same_computation(size, device, variants):
    """One step of each from the same weights: losses within 1e-2 relative, updates aligned."""
    reference, reference_net = build(variants[0], size, device)
    start = [p.detach().clone() for p in reference_net.parameters()]
    ref_loss = reference().item()
    ref_update = torch.cat(
        [(p.detach() - s).flatten() for p, s in zip(reference_net.parameters(), start, strict=True)]
    )
    for variant in variants[1:]:
        step, net = build(variant, size, device)
        loss = step().item()
        update = torch.cat(
            [(p.detach() - s).flatten() for p, s in zip(net.parameters(), start, strict=True)]
        )
        cosine = F.cosine_similarity(update, ref_update, dim=0).item()
        relative = abs(loss - ref_loss) / abs(ref_loss)
        print(
            f"  check {variant} vs {variants[0]}: loss {loss:.6f} vs {ref_loss:.6f} "
            f"(relative {relative:.1e}), "
            f"update cosine {cosine:.4f}"
        )
        if relative > 1e-2 or cosine < 0.99:
            sys.exit(f"{variant} does not compute what {variants[0]} does")


def flops_per_step(variant, size, device):
    """FLOPs of one step. Deblur's step is counted as naive+target_once's, the same computation,
    since a
    one-epoch call of its train() also computes the target's VGG features, once per call."""
    step, _ = build("naive+target_once" if variant.startswith("deblur") else variant, size, device)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def peak_tflops(device):
    """The device's practical peak, measured: a bf16 3x3 conv on a CPU, an 8192^3 bf16 matmul on
    CUDA."""
    if device.type == "cuda":
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        work, flops = (lambda: a @ a), 2 * 8192**3
    else:
        x = torch.randn(1, 256, 128, 128, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last
        )
        w = torch.randn(256, 256, 3, 3, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last
        )
        work, flops = (lambda: F.conv2d(x, w, padding=1)), 2 * 256 * 256 * 9 * 128 * 128
    for _ in range(3):
        work()
    sync(device)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        work()
        sync(device)
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times) / 1e12


def peak_memory_mb(variant, size, device):
    """Peak memory of two steps: CUDA's allocator peak, or a fresh process's max RSS on the CPU."""
    if device.type == "cuda":
        step, _ = build(variant, size, device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step(), step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    probe = subprocess.run(
        [sys.executable, __file__, "--memory-probe", variant, str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(probe.stdout.strip().splitlines()[-1])


def memory_probe(variant, size):
    step, _ = build(variant, size, torch.device("cpu"))
    step(), step()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent.
    peak_kb = re.search(r"VmHWM:\s*(\d+) kB", Path("/proc/self/status").read_text()).group(1)
    print(int(peak_kb) / 1024)


def time_steps(variants, size, device, warmup, repeats):
    """Median seconds per step of each variant, timed interleaved; and each one's first step."""
    torch._dynamo.reset()  # forget earlier compilations, so that the first step pays for its own
    steps = {v: build(v, size, device)[0] for v in variants}
    first = {}
    for variant, step in steps.items():
        start = time.perf_counter()
        step()
        sync(device)
        first[variant] = time.perf_counter() - start
        for _ in range(warmup - 1):
            step()
    times = {v: [] for v in variants}
    for _ in range(repeats):
        for variant, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[variant].append(getattr(step, "seconds", time.perf_counter() - start))
    return {v: statistics.median(t) for v, t in times.items()}, first


def machine(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = re.search(r"model name\s*:\s*(.*)", cpuinfo.read_text()).group(1)
    return f"{model}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def benchmark(args, device):
    variants = ["naive", "deblur"] + (["deblur+compile"] if args.compile else [])
    peak = peak_tflops(device)
    print(f"{machine(device)}: measured peak {peak:.3f} TFLOP/s")
    rows = []
    for size in args.sizes:
        print(f"{size} px", flush=True)
        check_same_computation(size, device, variants)
        seconds, first = time_steps(variants, size, device, args.warmup, args.repeats)
        flops = {v: flops_per_step(v, size, device) for v in variants}
        memory = {v: peak_memory_mb(v, size, device) for v in variants}
        for v in variants:
            achieved = flops[v] / seconds[v] / 1e12
            compile_s = first[v] - seconds[v] if v.endswith("compile") else None
            row = {
                "size": size,
                "variant": v,
                "ms": seconds[v] * 1000,
                "speedup": seconds["naive"] / seconds[v],
                "tflop": flops[v] / 1e12,
                "tflops": achieved,
                "peak_pct": 100 * achieved / peak,
                "memory_mb": memory[v],
                "compile_s": compile_s,
            }
            rows.append(row)
            print(
                "  "
                + json.dumps(
                    {k: round(x, 3) if isinstance(x, float) else x for k, x in row.items()}
                ),
                flush=True,
            )
    return rows, peak


def markdown(rows, peak, device, args):
    today = datetime.date.today().isoformat()
    lines = [
        BEGIN,
        "",
        f"Measured {today} on {machine(device)}; peak (measured in the same run): "
        f"{peak:.3f} TFLOP/s ({PEAK_WORK[device.type == 'cuda']}).",
        f"Median of {args.repeats} interleaved repeats after {args.warmup} warm-up steps. "
        f"Command: `python benchmarks/bench_train.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "| size | step | ms/step | speedup | TFLOP/step | TFLOP/s | % of peak "
        "| peak memory (MB) | compile (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else ""
        lines.append(
            f"| {r['size']} | {r['variant']} | {r['ms']:.0f} | {r['speedup']:.2f}x "
            f"| {r['tflop']:.3f} | "
            f"{r['tflops']:.3f} | {r['peak_pct']:.0f}% | {r['memory_mb']:.0f} | {compile_s} |"
        )
    memory_kind = (
        "allocator peak"
        if device.type == "cuda"
        else "max RSS of a fresh process running two steps; "
        "about 750 MB of it is torch, matplotlib and the models, before any step"
    )
    lines += ["", f"Peak memory is the {memory_kind}.", "", END]
    return "\n".join(lines)


def write_results(table, device):
    text = RESULTS.read_text() if RESULTS.exists() else "# Training-step benchmark\n"
    section = f"## {'CUDA' if device.type == 'cuda' else 'CPU'}\n\n"
    if section in text:
        head, rest = text.split(section, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + table + tail
    else:
        text = text.rstrip() + "\n\n" + section + table + "\n"
    RESULTS.write_text(text)
    print(f"wrote {RESULTS}")


def ablation(size, device, args):
    variants = [
        "naive",
        "naive+channels_last",
        "naive+target_once",
        "naive+fused_adam",
        "deblur",
        "deblur+compile",
    ]
    seconds, first = time_steps(variants, size, device, args.warmup, args.repeats)
    for v in variants:
        print(
            f"{size} px {v:22s} {seconds[v] * 1000:8.0f} ms/step  "
            f"{seconds['naive'] / seconds[v]:.2f}x  "
            f"first step {first[v]:.1f} s"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time Deblur's step under torch.compile",
    )
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the table into benchmarks/RESULTS.md",
    )
    parser.add_argument(
        "--ablation", type=int, metavar="SIZE", help="time each optimisation on its own"
    )
    parser.add_argument(
        "--memory-probe", nargs=2, metavar=("VARIANT", "SIZE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--folder", action="store_true", help="folder mode, for each network")
    parser.add_argument("--folder_batch", type=int, default=Deblur.batch_size)
    parser.add_argument("--folder_crop", type=int, default=Deblur.crop_size)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args.memory_probe[0], int(args.memory_probe[1]))
    device = pick_device("auto")
    if args.folder:
        return folder_benchmark(args, device)
    if args.ablation:
        return ablation(args.ablation, device, args)
    rows, peak = benchmark(args, device)
    table = markdown(rows, peak, device, args)
    print(table)
    if args.write:
        write_results(table, device)


if __name__ == "__main__":
    main()
