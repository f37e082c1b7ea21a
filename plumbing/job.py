"""The job around a run: stop requests from signals, output that never fails the run, and the one
place where errors become exit codes. What the run does is Deblur.py's.
"""

import io
import os
import signal
import sys
from contextlib import contextmanager, suppress
from pathlib import Path
from types import SimpleNamespace

import torch

from plumbing.command_line import parse_settings, resume_command
from plumbing.device import autotuned_convolutions, fast_float32
from plumbing.errors import DeblurError, Stopped, first_line
from plumbing.files import CHECKPOINT, OUTPUTS
from plumbing.processes import finish_together, leave, under_torchrun
from plumbing.settings import defaults

STOP_SIGNALS = [
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
]


class StopRequest:
    """Set by the first Ctrl-C, SIGTERM or SIGHUP; read by the run at its next safe point."""

    def __init__(self):
        self.signum = None


def signal_name(signum):
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def stop_point(stop):
    """Where a job may stop on request, before it has written anything: raises Stopped if asked."""
    if stop.signum is not None:
        raise Stopped(f"{signal_name(stop.signum)}: stopped; nothing was written", stop.signum)


def stop_after_this_step(stop):
    """A signal handler: the first Ctrl-C, SIGTERM or SIGHUP asks the job to stop at the next safe
    point (after this training step, between two strips); a second one quits at once. Not under
    torchrun, which passes a Ctrl-C on to processes that have had it already from the terminal,
    and ends them itself 30 s later."""

    def request(signum, frame):
        if stop.signum is not None and under_torchrun():
            return
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum
        again = "torchrun ends it in 30 s" if under_torchrun() else "again: quit at once"
        print(f"\n{signal_name(signum)}: stopping safely ({again})", file=sys.stderr)

    return request


class Unfailing(io.TextIOBase):
    """stdout or stderr that never fails the run: when its reader goes away (a closed pipe, a
    full disk, a closed descriptor), the run goes on, saying so once on the other stream, and
    what it prints is dropped."""

    def __init__(self, stream, descriptor, other):
        self.stream, self.descriptor, self.other = stream, descriptor, other

    def write(self, text):
        self.guarded("write", text)
        if "\n" in text:  # progress shows at once, even through a pipe
            self.flush()
        return len(text)

    def flush(self):
        self.guarded("flush")

    def guarded(self, method, *args):
        if self.stream is None:
            return
        try:
            getattr(self.stream, method)(*args)
        except (OSError, ValueError) as e:  # ValueError: the stream was closed
            self.stream = None
            point_at_devnull(self.descriptor)
            with suppress(OSError, ValueError):
                print(f"Note: output lost ({e}); the run goes on and saves", file=self.other)


def point_at_devnull(descriptor):
    """A closed or broken descriptor 1 or 2 gets /dev/null, so that nothing else (a checkpoint
    opened later, say) takes its number and receives what was meant for the screen."""
    with suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        if null != descriptor:
            os.dup2(null, descriptor)
            os.close(null)


@contextmanager
def unfailing_output(silent=False):
    """stdout and stderr made Unfailing; `silent`: both dropped (torchrun's other processes,
    whose words would repeat the first one's)."""
    previous = sys.stdout, sys.stderr
    for descriptor, stream in ((1, sys.stdout), (2, sys.stderr)):
        if stream is None:  # started with the descriptor closed (>&-)
            point_at_devnull(descriptor)
    shown = (None, None) if silent else previous
    sys.stdout = Unfailing(shown[0], 1, shown[1])
    sys.stderr = Unfailing(shown[1], 2, shown[0])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = previous


def run_job(train, apply, settings, argv):
    """Parses the settings and runs train(cfg, stop), or apply(cfg, given, stop) for --apply (given:
    the settings the command line named), with stop requests caught; returns the exit code. Every
    failure the user can act on ends in one line on stderr, without a traceback."""
    flush_denormals()
    fast_float32()
    stop = StopRequest()
    cfg = None
    handler = stop_after_this_step(stop)
    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    with unfailing_output(silent=os.environ.get("RANK", "0") != "0"):
        try:
            cfg, given = parse_settings(settings, argv)
            if cfg.apply:
                return apply(cfg, given, stop)
            autotuned_convolutions()  # on CUDA: a training step's shapes are fixed
            exit_code = train(cfg, stop)
            finish_together()  # torchrun's processes, when the first has written its results
            return exit_code
        except DeblurError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        except Stopped as e:
            print(e, file=sys.stderr)
            return 128 + e.signum
        except KeyboardInterrupt:
            print("Interrupted.", file=sys.stderr)
            return 128 + (stop.signum or signal.SIGINT)
        except (MemoryError, RuntimeError, torch.distributed.DistError) as e:
            if another_process_ended(e):
                print(
                    f"error: another of torchrun's processes has ended ({first_line(e)}); the "
                    f"checkpoint of the last completed save is intact: continue with --resume",
                    file=sys.stderr,
                )
                return 1
            if not is_out_of_memory(e):
                raise
            read = cfg or SimpleNamespace(
                **defaults(settings), folder=False
            )  # or before they were read
            print(f"error: out of memory {smaller_run(read)}", file=sys.stderr)
            return 1
        finally:
            leave()
            for number, handler in previous.items():
                signal.signal(number, handler)


def report_outcome(outcome, progress, settings):
    """Says how training ended and where the results are; returns the exit code."""
    cfg, stop = progress.cfg, progress.stop
    if outcome == "diverged":
        kept = "the last good checkpoint was kept" if progress.keeper.owns else "none was saved"
        cause = f"lr {cfg.lr} is probably too high: try --lr {cfg.lr / 10:g}"
        if cfg.adversarial_weight:  # the discriminator's push can throw the network off too
            weight = cfg.adversarial_weight
            cause = f"try --adversarial_weight {weight / 10:g}, or --lr {cfg.lr / 10:g}"
        print(
            f"error: the loss became NaN or infinite by epoch {progress.diverged_at}, so training "
            f"stopped; results are from epoch {progress.epoch}'s weights, the last good ones "
            f"({kept}). {cause}",
            file=sys.stderr,
        )
        return 1
    out = Path(cfg.output_dir).resolve()
    written = [name for name in (*OUTPUTS, CHECKPOINT) if (out / name).exists()]
    print(f"Results are in {out}: {', '.join(written)}")
    if outcome == "stopped":
        print(
            f"Training stopped early at epoch {progress.epoch} of {cfg.num_epochs}. "
            f"To continue: {resume_command(cfg, settings)}"
        )
    if stop.signum is None:
        return 0
    if outcome == "done":  # the signal came after training: the results were finished first
        print(f"{signal_name(stop.signum)} came after training had finished: all is saved")
    return 128 + stop.signum


def flush_denormals():
    """Numbers below float32's smallest normal one (1e-38) computed as zero, in every thread: a
    trained network holds such numbers (the shipped U-Net's run: 15% of its weights, 96% of Adam's
    running mean), and on some CPUs (Intel's, in AVX-512) each costs a slow microcode path, which
    made a trained U-Net's step 4x a fresh one's. The threads of torch's intra-op pool inherit
    this setting only if it is made before the pool exists (its first parallel operation):
    set later, it reaches the calling thread alone (docs/experiments.md)."""
    torch.set_flush_denormal(True)


def another_process_ended(error):
    # gloo's lost connection reaches DistributedDataParallel's backward as a plain RuntimeError
    if isinstance(error, torch.distributed.DistError):
        return True
    return isinstance(error, RuntimeError) and "by peer" in str(error)


def is_out_of_memory(error):
    # PyTorch's CPU allocator says so only in its message: a plain RuntimeError
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return "can't allocate memory" in str(error)


def smaller_run(cfg):
    """What to make smaller after running out of memory, for one image or a folder."""
    if cfg.folder:
        return f"with --batch_size {cfg.batch_size}; try a smaller --batch_size"
    return f"at image_size {cfg.image_size}; try --image_size {cfg.image_size // 2}"
