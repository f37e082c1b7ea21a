"""Helpers the test files share, one per job: a test photo, a PNG written by hand, the settings of a
run of seconds, running Deblur in-process or as real processes in the background, and the digests
of a user's files."""

import ast
import csv
import hashlib
import os
import re
import struct
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

# One core for this process, the other for the real processes that ProcessTable runs meanwhile:
# on 32-pixel images a second thread gains little, and two threads sharing a core with a process
# cost more than one (each waits, spinning, for the other).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plumbing.command_line import ORIGINAL  # noqa: E402

SCRIPT = [sys.executable, "-u", str(ROOT / "Deblur.py")]

SETTINGS_TABLE = ROOT / "docs" / "settings.md"  # each setting, its default and what it does


def settings_table():
    """docs/settings.md's table: {setting: (its default as written, what it does)}."""
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \| (.*) \|$", SETTINGS_TABLE.read_text(), re.M)
    return {name: (default, does) for name, default, does in rows}


# Each setting's default as shipped, as the table records it: the record the tests keep
SHIPPED = {name: ast.literal_eval(default) for name, (default, _) in settings_table().items()}
# Every setting a test run uses, given explicitly: a user who edits a settings line in Deblur.py
# changes what `python Deblur.py` does, never what these tests check. The shipped defaults, but
# a run of seconds: 32 px, 4 epochs, MSE only, on the CPU, no held-out image
TINY = {name: value for name, value in SHIPPED.items() if name not in ("image_path", "output_dir")}
TINY |= {"image_size": 32, "num_epochs": 4, "perceptual_weight": 0.0, "log_every": 2}
TINY |= {"device": "cpu", "torch_compile": "off", "holdout_path": ""}

# For float16 and bfloat16 on a CPU, which emulates them slowly (without bfloat16 in hardware):
# 16 px, and a blur that fits in them
HALF_PRECISION_SIZE = ("--image_size", "16", "--blur_radius", "2")


@pytest.fixture(autouse=True)
def headless_and_offline(monkeypatch, tmp_path):
    """No window can open, and with an empty TORCH_HOME no test finds (or fetches) VGG weights;
    a folder's decoded photos are cached in the test's own folder, never the user's."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def figures_rendered_only_where_looked_at(request, monkeypatch):
    """Rasterising comparison.png and training_curves.png is half of a tiny run's time. Deblur
    still builds every figure and writes it through its own safe path; only matplotlib's drawing
    of the pixels is left out, and a 1x1 PNG written instead, except in the tests marked
    real_figures (and in every test that runs Deblur as a process)."""
    if request.node.get_closest_marker("real_figures"):
        return
    import matplotlib.figure

    def tiny_png(figure, path, **options):
        Image.new("RGB", (1, 1)).save(path, format="png")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", tiny_png)


def make_photo(size=(48, 40), seed=0):
    """A small RGB test picture with edges, gradients and noise, so that blur visibly changes it."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack(
        [
            (x * 255 // max(width - 1, 1)),
            ((x // 6 + y // 6) % 2) * 255,
            (y * 255 // max(height - 1, 1)),
        ],
        axis=-1,
    ).astype(np.float64)
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def save_photo(folder, name="photo.png", size=(48, 40), seed=0, image=None, **options):
    """`image` (by default a make_photo of `size`) saved as folder/name; returns its path."""
    path = Path(folder) / name
    (image or make_photo(size, seed)).save(path, **options)
    return path


def training_folder(path):
    """A folder of three test photos at `path`, the last large enough for a Wiener step's margin."""
    path.mkdir()
    for seed, size in enumerate(((64, 48), (56, 72), (130, 130))):
        save_photo(path, f"photo{seed}.png", size, seed)
    return path


@pytest.fixture
def photo_path(tmp_path):
    return save_photo(tmp_path)


def png_bytes(width, height, bit_depth=8, rows=b"\0" * 64):
    """An RGB PNG written by hand: its header says width x height at bit_depth, whatever `rows`
    (filter byte and pixels, uncompressed) really hold."""

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def digests(folder):
    """{path below folder: SHA-256} of the files a user has there (the lock is Deblur's)."""
    found = {}
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != ".deblur.lock":
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def image_pair(path, size, kind="gaussian", radius=5.0, angle=0.0, noise=0.0, seed=0):
    """Deblur.load_image_pair (tensors on the CPU) of one blur, as settings would ask for it."""
    import Deblur

    cfg = SimpleNamespace(blur_kind=kind, blur_radius=radius, blur_angle=angle, noise_level=noise)
    return Deblur.load_image_pair(path, size, cfg, torch.Generator().manual_seed(seed))


def tiny_run_args(image, out, *extra):
    """A run of seconds: 32 px, 4 epochs, MSE only, no held-out image, unless `extra` says else."""
    settings = [arg for name, value in TINY.items() for arg in (f"--{name}", str(value))]
    return ["--image_path", str(image), "--output_dir", str(out), *settings, *extra]


def run_deblur(image, out, *extra, vgg_weights=None):
    """Deblur.main in this process, as tiny_run_args says; returns the exit code."""
    import Deblur

    return Deblur.main(tiny_run_args(image, out, *extra), vgg_weights=vgg_weights)


def apply_deblur(photo, out, checkpoint, *extra):
    """Deblur.main --apply in this process, with only the settings --apply reads: the blur and
    the noise it is told are `extra`'s alone, as a user's command line."""
    import Deblur

    args = ["--apply", str(photo), "--resume", str(checkpoint), "--output_dir", str(out)]
    with blur_lines_as_shipped():
        return Deblur.main([*args, "--device", "cpu", "--kernel", "", *extra], vgg_weights=None)


@contextmanager
def blur_lines_as_shipped():
    """Deblur.py's blur and noise lines as shipped, whatever a user edited them to: edited, they
    name the photo's blur for --apply as the command line does."""
    import Deblur

    with pytest.MonkeyPatch.context() as patch:
        for name, value in ORIGINAL.items():
            patch.setitem(Deblur.SETTINGS, name, Deblur.SETTINGS[name]._replace(default=value))
        yield


class ProcessTable(dict):
    """{case name: (result, folder, *what prepare returned)} for a table of cases, each a real
    process in a folder of its own. A process spends seconds importing torch on one core: so the
    cases the session selected start as soon as it knows its tests (pytest_collection_finish,
    below), one at a time in the background, while the tests in this process use the other core.
    A test that asks for a case waits for it; any other case runs when first asked for."""

    made = []  # every table a test module made, to start and to close

    def __init__(self, cases, prepare, execute):
        super().__init__()
        self.cases = {case[0]: case for case in cases}
        self.prepare = prepare
        self.execute = execute
        self.pending = {}
        self.folders = tempfile.TemporaryDirectory(prefix="deblur-cases-")
        self.pool = ThreadPoolExecutor(max_workers=1)
        ProcessTable.made.append(self)

    def start(self, names):
        environ = dict(os.environ)  # as the session began, before any test changes it
        for name in self.cases:
            if name in names:
                self.pending[name] = self.pool.submit(self.run, name, environ)

    def run(self, name, environ):
        folder = Path(tempfile.mkdtemp(dir=self.folders.name))
        ready = self.prepare(self.cases[name], folder, environ)
        return (self.execute(self.cases[name], folder, ready), folder, *ready)

    def __missing__(self, name):
        pending = self.pending.pop(name, None)
        self[name] = pending.result() if pending else self.run(name, dict(os.environ))
        return self[name]

    def close(self):
        self.pool.shutdown(cancel_futures=True)
        self.folders.cleanup()


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    ids = {item.callspec.id for item in session.items if hasattr(item, "callspec")}
    for table in ProcessTable.made:
        table.start(ids)


def pytest_sessionfinish(session):
    for table in ProcessTable.made:
        table.close()


@pytest.fixture
def figure_titles(monkeypatch):
    """{file name: its axes' titles, then its insets' titles} of every figure Deblur saves."""
    import results

    titles = {}
    real_save = results.save_figure

    def recording_save(figure, path):
        axes = figure.axes
        insets = [inset for ax in axes for inset in ax.child_axes]
        titles[path.name] = [ax.get_title() for ax in [*axes, *insets]]
        real_save(figure, path)

    monkeypatch.setattr(results, "save_figure", recording_save)
    return titles


class Labelled(dict):
    label = None


@pytest.fixture
def first_clip_norms(monkeypatch):
    """{label: the gradient norm the first clip of a run saw}; set `.label` before each run."""
    norms = Labelled()
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, **kwargs):
        parameters = list(parameters)
        grads = torch.stack([p.grad.float().norm() for p in parameters])
        norms.setdefault(norms.label, torch.linalg.vector_norm(grads).item())
        return real_clip(parameters, max_norm, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    return norms


@pytest.fixture
def host_waits(monkeypatch):
    """{device type: the steps after which the host read a value of a tensor there (0: before
    the first)}: on a GPU, each such read makes the host wait for the device."""
    steps, waits = [0], {}
    real_step = torch.amp.GradScaler.step
    real_item, real_bool = torch.Tensor.item, torch.Tensor.__bool__

    def counted_step(scaler, optimizer):
        steps[0] += 1
        return real_step(scaler, optimizer)

    def reading(real):
        def read(tensor):
            waits.setdefault(tensor.device.type, set()).add(steps[0])
            return real(tensor)

        return read

    monkeypatch.setattr(torch.amp.GradScaler, "step", counted_step)
    monkeypatch.setattr(torch.Tensor, "item", reading(real_item))
    monkeypatch.setattr(torch.Tensor, "__bool__", reading(real_bool))
    return waits


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A real checkpoint of a 2-epoch run, as --apply and --resume read them, made once; copy it
    before changing it."""
    folder = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLBACKEND", "Agg")
        assert run_deblur(save_photo(folder, "train.png"), folder, "--num_epochs", "2") == 0
    return folder / "checkpoint.pt"


def checkpoint_of(path):
    """The checkpoint at `path`, or in the folder `path`, read as a user's script would."""
    path = Path(path)
    return torch.load(path / "checkpoint.pt" if path.is_dir() else path, weights_only=True)


def assert_resumed_as_uninterrupted(whole, split):
    """The checkpoints of an uninterrupted run and of one stopped and resumed hold one training:
    each logged epoch's losses (all but its time), the network's weights, and the adversarial
    term's discriminator with its Adam's state, bit for bit."""

    def untimed(row):  # a row: {column: value}, the seconds among them
        return {name: value for name, value in row.items() if name != "seconds"}

    assert split["epoch"] == whole["epoch"]
    logged = {row["epoch"]: untimed(row) for row in split["history"]}  # the split logged more
    assert [logged[row["epoch"]] for row in whole["history"]] == list(
        map(untimed, whole["history"])
    )
    torch.testing.assert_close(split["model"], whole["model"], rtol=0, atol=0)
    assert (split["discriminator"] is None) == (whole["discriminator"] is None)
    if whole["discriminator"]:
        both = split["discriminator"], whole["discriminator"]
        torch.testing.assert_close(*(each["model"] for each in both), rtol=0, atol=0)
        adams = (each["optimizer"]["state"] for each in both)
        torch.testing.assert_close(*adams, rtol=0, atol=0)


def history(out):
    """history.csv in `out`: a dict of strings per logged epoch."""
    with open(Path(out) / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def offline(monkeypatch):
    """No VGG19 weights can be downloaded: as on a machine without a network."""

    def no_network(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", no_network)
