"""What runs where: the --device setting as a torch.device, whether a CPU computes bfloat16 fast,
and torch.compile with its fallback. Nothing here knows what is being trained.
"""

from itertools import chain

import torch

from plumbing.errors import DeblurError, first_line, note


def fast_float32():
    """TF32 matmuls on CUDA (its convolutions already are): process-wide, set once by the job."""
    torch.set_float32_matmul_precision("high")


def autotuned_convolutions():
    """cuDNN's autotuner: at each shape it first meets, it times its convolution algorithms and
    keeps the fastest. A training step's shapes never change, so that is paid once; not for
    --apply, whose tiles at a photo's edges each have a shape of their own."""
    torch.backends.cudnn.benchmark = True


def on_device(batch, torch_device):
    """A batch made on the host, on `torch_device` in channels_last. Pinned first for a GPU, its
    copy does not make the host wait (unpinned, it must; and MPS copies it wrong)."""
    pinned = torch_device.type == "cuda"
    batch = batch.pin_memory() if pinned else batch
    return batch.to(torch_device, non_blocking=pinned, memory_format=torch.channels_last)


def pick_device(name, team=None):
    """The --device setting's torch.device; under torchrun (`team`), this process's own GPU."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        name = next(kind for kind, ok in available.items() if ok)
    if team and team.size > 1:  # torchrun: one GPU each (the CPU, where Macs have no DDP)
        name = f"cuda:{team.local_rank}" if name.startswith("cuda") else "cpu"
    no_such_device = DeblurError(
        f"--device {name!r}: no such device on this machine; use auto, cpu, cuda, cuda:N or mps"
    )
    if not available.get(name.split(":")[0]):
        raise no_such_device
    try:
        device = torch.device(name)
    except RuntimeError:  # cpu:abc, cpu:0:0, cuda:x
        raise no_such_device from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise no_such_device
    return device


def cpu_has_fast_bfloat16():
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), as oneDNN's bfloat16
    convolutions need. Elsewhere they are emulated: on a 2-core AMD EPYC with AVX2 only a DeblurNet
    step took 22.9 s in bfloat16 against 1.09 s in float32; on an Intel Xeon with AVX-512 but
    neither, a U-Net tile 0.87 s against 0.44 s. (torch names these checks with an underscore.)"""
    bfloat16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return bfloat16() or amx()


def amp_dtype_for(setting, device):
    """The amp_dtype setting's dtype. auto: float16 on CUDA (with a GradScaler), bfloat16 on a CPU
    that computes it natively (no scaler needed), else float32, faster than emulated bfloat16."""
    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_fast_bfloat16():
        return torch.bfloat16
    return torch.float32


def compiled_on_first_batch(cfg, modules, device, batches, first_step):
    """With torch_compile on (auto: on CUDA), the modules' forwards (None: no module) compiled on
    the first batch: `first_step(batch)` runs the training step's own forward and backward on it
    once (its gradients are then dropped, and the batch trains as any other); returns the
    batches, that one first. Compiling the forward leaves each module, and so its state_dict's
    names, as they were."""
    if cfg.torch_compile == "off" or (cfg.torch_compile == "auto" and device.type != "cuda"):
        return batches
    modules = [module for module in modules if module is not None]
    first = next(batches)
    for module in modules:
        module.forward = torch.compile(module.forward)
    try:  # where compiling fails (no C++ compiler, no Triton, an unsupported platform): eager
        first_step(first)
    except RuntimeError as e:
        note(f"torch.compile failed ({first_line(e)}); training without it")
        eager(modules)
    finally:
        for module in modules:
            module.zero_grad(set_to_none=True)
    return chain([first], batches)


def eager(modules):
    """The modules' own forwards again, uncompiled (compiled_on_first_batch's undone)."""
    for module in modules:
        if module is not None:
            module.__dict__.pop("forward", None)


def mixed_precision(facts):
    """Autocast to the run's AMP dtype (facts.amp): float16 or bfloat16 where safe, else float32."""
    return torch.autocast(facts.device.type, facts.amp, enabled=facts.amp != torch.float32)
