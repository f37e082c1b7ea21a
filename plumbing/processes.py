"""Training one model in several processes, as torchrun starts them (on one machine or many):
PyTorch's DistributedDataParallel averages the gradients; each process draws its own crops; the
first process alone prints and writes. torchrun tells each process its place (RANK, WORLD_SIZE,
LOCAL_RANK, the rendezvous); without it a run is one process and nothing here does anything.
"""

import os
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import distributed
from torch.nn.parallel import DistributedDataParallel

from plumbing.errors import DeblurError


class Team(NamedTuple):
    """This process's place among torchrun's: its rank (0 prints and writes), how many there are,
    and its number on its own machine (which GPU it takes)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self):
        return self.rank == 0


def under_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def this_process(cfg):
    """The Team torchrun made this process part of; Team() without torchrun. torchrun trains a
    folder (each process its own crops); one image, or an --apply, is refused under it."""
    if not under_torchrun():
        return Team()
    team = Team(*(int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")))
    if cfg.apply:
        raise DeblurError("--apply runs in one process: python Deblur.py --apply ..., not torchrun")
    if not cfg.folder:
        raise DeblurError(
            f"--image_path {cfg.image_path} is one image: torchrun's processes each train on their "
            f"own random crops, which takes a folder of photos (--image_path FOLDER); train one "
            f"image with python Deblur.py"
        )
    if cfg.device not in ("auto", "cuda", "cpu"):
        raise DeblurError(
            f"--device {cfg.device}: under torchrun each process takes its own GPU (cuda) or the "
            f"CPU; use --device auto, cuda or cpu"
        )
    return team


def join(team, device):
    """Joins torchrun's other processes: NCCL between GPUs, gloo between CPUs; and, on GPUs, a
    gloo group too, for the few numbers the processes agree on (stops, losses) without making a
    GPU wait."""
    global CONTROL
    if team.size == 1:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    distributed.init_process_group(backend, device_id=device if backend == "nccl" else None)
    CONTROL = distributed.new_group(backend="gloo") if backend == "nccl" else None


CONTROL = None  # the gloo group that join makes beside NCCL (None: the default group is gloo)


def finish_together():
    """torchrun's processes end together, when the first has evaluated and written: a process that
    ends in an error (a stopped run's exit code is one) makes torchrun end the others at once."""
    if distributed.is_initialized():
        distributed.barrier(group=CONTROL)


def leave():
    if distributed.is_initialized():
        distributed.destroy_process_group()


def together(net, team, device):
    """The network as training calls it: DistributedDataParallel, whose backward averages the
    gradients of all the processes, or the network itself when it trains alone."""
    if team.size == 1:
        return net
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=device_ids)


def itself(net):
    """The network inside DistributedDataParallel (its module), whose weights a checkpoint keeps."""
    return net.module if isinstance(net, DistributedDataParallel) else net


@contextmanager
def one_process_first(team):
    """The first process on each machine does the body first (decoding the photos into the cache
    there), the others after it (finding them decoded)."""
    if team.local_rank != 0:
        distributed.barrier()
    yield
    if team.size > 1 and team.local_rank == 0:
        distributed.barrier()


def anyone(team, flag):
    """Whether `flag` is true in any process (all of them get the same answer)."""
    if team.size == 1:
        return flag
    agreed = torch.tensor([float(flag)])
    distributed.all_reduce(agreed, distributed.ReduceOp.MAX, group=CONTROL)
    return bool(agreed)


def averaged(team, values):
    """The processes' mean of each of `values` (Python numbers), the same in all of them."""
    if team.size == 1:
        return values
    total = torch.tensor(values, dtype=torch.float64)
    distributed.all_reduce(total, group=CONTROL)
    return (total / team.size).tolist()


def gathered(team, tensor):
    """[every process's `tensor`] (a CPU tensor of one shape), in rank order."""
    if team.size == 1:
        return [tensor]
    every = [torch.empty_like(tensor) for _ in range(team.size)]
    distributed.all_gather(every, tensor, group=CONTROL)
    return every


def check_replicas_agree(team, net):
    """DistributedDataParallel keeps every process's copy of the weights equal: checked before each
    checkpoint, since a checkpoint holds the first process's copy for all of them."""
    if team.size == 1:
        return
    weights = torch.cat([weight.detach().float().flatten() for weight in net.parameters()])
    first = weights.clone()
    distributed.broadcast(first, 0)
    if anyone(team, not torch.equal(first, weights)):
        raise DeblurError(
            "the processes' copies of the network differ, which DistributedDataParallel should "
            "never let happen; the last checkpoint is intact: resume from it",
            1,
        )
