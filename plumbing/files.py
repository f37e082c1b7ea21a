"""Safe files: writes that replace a file only once complete, the output folder's lock, the room a
run needs, names that never overwrite a user's file, and what killed runs left behind.
"""

import errno
import hashlib
import os
import shutil
from contextlib import contextmanager, nullcontext, suppress
from itertools import count
from pathlib import Path

from plumbing.errors import DeblurError, first_line, note

CHECKPOINT = "checkpoint.pt"
RECORD = ".deblur-outputs"  # each file Deblur wrote in a folder and its SHA-256: it knows its own
OUTPUTS = (
    "comparison.png",
    "reconstructed_image.jpg",
    "progress.png",
    "progress.gif",
    "history.csv",
    "training_curves.png",
)


def name_checked(path, setting):
    """`path`, or a one-line refusal where the system cannot even look it up (a name over the
    file system's 255 bytes, say), instead of a traceback later."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        pass  # a missing file is each caller's to say
    except OSError as e:
        shown = str(path) if len(str(path)) <= 80 else f"{str(path)[:77]}..."
        raise DeblurError(
            f"--{setting} {shown}: {e.strerror}; rename it, or pass a shorter path"
        ) from None
    return path


def shortened(name, most_bytes):
    """`name` cut to at most `most_bytes` bytes of UTF-8, never inside a character: file systems
    count a name's bytes, and a CJK character takes three."""
    return name.encode("utf-8")[:most_bytes].decode("utf-8", errors="ignore")


def space_needed(net, image_size):
    """Bytes a run writes at most: two checkpoints (during a save) of the network's float32
    weights and Adam's two moments, and the outputs."""
    parameters = sum(parameter.numel() for parameter in net.parameters())
    return 2 * 3 * 4 * parameters + 16 * image_size**2 + 2**24


def run_output_dir(cfg, team, inputs, needed):
    """The run's output_dir: the first process's, locked (locked_output_dir); nothing for
    torchrun's other processes, which write nothing."""
    return locked_output_dir(Path(cfg.output_dir), inputs, needed) if team.main else nullcontext()


@contextmanager
def locked_output_dir(out, inputs, needed, outputs=OUTPUTS):
    """Checks that `out` can hold the results without replacing a file the user has (one of the
    `inputs`, the paths of the files read, or one of `outputs` that Deblur did not write), and
    has room: all before anything is created. Then creates it and holds an exclusive lock on it
    while the body runs: a second run in the same folder is refused, naming this one's PID.
    Temporary files that killed runs left behind are removed."""
    check_room(out, needed)
    check_nothing_replaced(out, inputs, outputs)
    lock_path = out / ".deblur.lock"
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Never through a symbolic link: that would truncate whatever file it points to
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        descriptor = os.open(lock_path, flags, 0o644)  # a file of text, not a program
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DeblurError(
                f"{lock_path} is a symbolic link; remove it (Deblur writes its PID there)"
            ) from None
        raise DeblurError(
            f"cannot create files in output_dir {out} ({e.strerror}); use another --output_dir"
        ) from None
    with open(descriptor, "r+", encoding="utf-8") as lock:
        take_lock(lock, out)
        remove_stale_partials(out)
        yield


def check_room(out, needed):
    """The free space on the disk output_dir is on (or will be: its nearest existing folder)."""
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        usage = shutil.disk_usage(existing)
    except OSError:  # not a folder: mkdir says so, by name
        return
    free = usage.free
    if usage.total and free < needed:  # no size at all: no disk (/proc), which mkdir says
        raise DeblurError(
            f"output_dir {out} has only {free // 2**20} MB free; this run needs about "
            f"{needed // 2**20 + 1} MB (free some space or pass another --output_dir)"
        )


def check_nothing_replaced(out, inputs, outputs):
    """An input named as an output, or an output's name taken by a file Deblur did not write (a
    user's own progress.png, say), would be replaced by the results: refused, naming it."""
    names = {(out / name).resolve(): name for name in (*outputs, CHECKPOINT)}
    for path in inputs:
        if path.resolve() in names:
            raise DeblurError(
                f"{path} has the name of an output in output_dir {out} and would be "
                f"overwritten; rename or move it, or pass another --output_dir"
            )
    own = recorded(out)
    for name in outputs:
        path = out / name
        if os.path.lexists(path) and own.get(name) != digest_or_none(path):
            raise DeblurError(
                f"output_dir {out} holds {name}, which Deblur did not write, and a run would "
                f"replace it; move it, or pass another --output_dir"
            )


def digest_or_none(path):
    try:
        return file_digest([path])
    except OSError:  # a folder, a link to nowhere: not a file Deblur wrote
        return None


def take_lock(lock, out):
    try:
        if os.name == "nt":
            import msvcrt

            lock.seek(2**30)  # a byte far past the PID, which another run must still read
            msvcrt.locking(lock.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        raise DeblurError(
            f"another Deblur run (PID {lock.read().strip() or '?'}) is using output_dir {out}; "
            f"wait for it to end, or pass another --output_dir"
        ) from None
    lock.seek(0)
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()


def remove_stale_partials(out):
    """With the lock held no other run writes here: a .NAME.PID.partial file of a process that
    is gone is what a killed run left half-written."""
    removed = 0
    for path in out.glob(".*.partial"):
        pid = path.name.split(".")[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            removed += path.stat().st_size
            path.unlink()
    if removed:
        note(f"removed the temporary files of killed runs from {out} ({removed / 2**20:.1f} MB)")


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, under another user
        return True
    return True


@contextmanager
def atomic_path(path):
    """Yields a temporary path, unique to this process, that replaces `path` only once fully
    written. Its name is cut short enough for any file system."""
    temporary = path.with_name(f".{shortened(path.name, 200)}.{os.getpid()}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(e, "strerror", None) or first_line(e)
        if "unexpected pos" in reason:  # how PyTorch's writer says that the disk is full
            reason = f"the disk is probably full (PyTorch: {reason})"
        raise DeblurError(f"could not write {path}: {reason}; nothing was replaced", 1) from None
    finally:
        with suppress(OSError):  # never hide the error above under one about the cleanup
            temporary.unlink(missing_ok=True)


def save_image(image, path, format, **options):
    with atomic_path(path) as temporary:
        image.save(temporary, format=format, quality=95, **options)
    remember(path)


def save_figure(figure, path):
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    remember(path)


def save_text(text, path):
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    remember(path)


def file_digest(paths):
    """The SHA-256 of the files' bytes, one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def recorded(folder):
    """{name: SHA-256} of the files Deblur wrote in `folder` (none, if it cannot tell)."""
    try:
        lines = (folder / RECORD).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    found = {}
    for line in lines:
        digest, _, name = line.partition(" ")
        found[name] = digest
    return found


def remember(path):
    """Adds `path` to its folder's record of what Deblur wrote; a record it cannot write only
    means a later run there does not know its own files."""
    own = recorded(path.parent)
    own[path.name] = file_digest([path])
    lines = [f"{digest} {name}" for name, digest in own.items()]
    with suppress(DeblurError), atomic_path(path.parent / RECORD) as temporary:
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")


def first_free_name(path):
    """path itself if free, else the first free name among path.1.suffix, path.2.suffix, ...; a
    symbolic link takes its name, even one that points nowhere."""
    candidate = path
    for number in count(1):
        if not os.path.lexists(candidate):
            return candidate
        candidate = path.with_name(f"{path.stem}.{number}{path.suffix}")


@contextmanager
def photo_output(cfg, photo_path, size):
    """--apply's output: yields output_dir/<name>_deblurred.png, or the first free
    <name>_deblurred.N.png (a file the user has is never replaced), with output_dir locked and
    room for a PNG of the photo's raw size, (height, width), and a kernel's; says where it went."""
    out = Path(cfg.output_dir)
    height, width = size
    with locked_output_dir(out, [], 4 * width * height + 2**20, outputs=()):
        target = free_output_name(out, photo_path, "deblurred")
        yield target
    print(f"Deblurred {photo_path} at its own size, {width}x{height}: {target}")


def free_output_name(out, photo_path, what):
    """out/<the photo's name>_<what>.png, or the first free <name>_<what>.N.png, said."""
    wanted = out / f"{shortened(photo_path.stem, 200)}_{what}.png"
    target = first_free_name(wanted)
    if target != wanted:
        note(f"{wanted.name} exists already and is kept; writing {target.name}")
    return target
