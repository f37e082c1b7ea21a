"""Helpers the test files share, one per job: a test photo, a PNG written by hand, the settings of a
run of seconds, running Deblur in-process or as a process, and the digests of a user's files."""

import hashlib
import struct
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCRIPT = [sys.executable, "-u", str(ROOT / "Deblur.py")]

# Every setting a test run uses, given explicitly: a user who edits a settings line in Deblur.py
# changes what `python Deblur.py` does, never what these tests check.
TINY = {
    "image_size": 32,
    "crop_size": 48,
    "batch_size": 16,
    "blur_kind": "gaussian",
    "blur_radius": 5.0,
    "blur_angle": 0.0,
    "num_epochs": 4,
    "lr": 0.0001,
    "weight_decay": 1e-5,
    "mse_weight": 1.0,
    "pixel_loss": "mse",
    "perceptual_weight": 0.0,
    "max_grad_norm": 1.0,
    "log_every": 2,
    "checkpoint_every": 1000,
    "seed": 0,
    "device": "cpu",
    "amp_dtype": "auto",
    "torch_compile": "off",
    "model": "deblurnet",
    "restore_from": "blurred",
    "holdout_path": "",
    "resume": "",
    "apply": "",
}


@pytest.fixture(autouse=True)
def headless_and_offline(monkeypatch, tmp_path):
    """No window can open, and with an empty TORCH_HOME no test finds (or fetches) VGG weights."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


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


def tiny_run_args(image, out, *extra):
    """A run of seconds: 32 px, 4 epochs, MSE only, no held-out image, unless `extra` says else."""
    settings = [arg for name, value in TINY.items() for arg in (f"--{name}", str(value))]
    return ["--image_path", str(image), "--output_dir", str(out), *settings, *extra]


def run_deblur(image, out, *extra, vgg_weights=None):
    """Deblur.main in this process, as tiny_run_args says; returns the exit code."""
    import Deblur

    return Deblur.main(tiny_run_args(image, out, *extra), vgg_weights=vgg_weights)


class ParallelRuns(dict):
    """{case name: (result, folder, *what prepare returned)} for a table of cases, each a real
    process in a folder of its own. The cases the session selected run at once, three at a time
    (each process spends seconds importing torch); any other case runs when first asked for."""

    def __init__(self, request, tmp_path_factory, cases, prepare, execute):
        super().__init__()
        self.factory, self.cases = tmp_path_factory, cases
        self.prepare, self.execute = prepare, execute
        ids = {item.callspec.id for item in request.session.items if hasattr(item, "callspec")}
        self.run([case for case in cases if case[0] in ids])

    def run(self, cases):
        folders = [self.factory.mktemp("case") for _ in cases]
        prepared = [self.prepare(case, folder) for case, folder in zip(cases, folders, strict=True)]
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(self.execute, cases, folders, prepared))
        for case, result, folder, ready in zip(cases, results, folders, prepared, strict=True):
            self[case[0]] = (result, folder, *ready)

    def __missing__(self, name):
        self.run([case for case in self.cases if case[0] == name])
        return self[name]


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


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A real checkpoint of a 2-epoch run, as --apply and --resume read them, made once; copy it
    before changing it."""
    folder = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLBACKEND", "Agg")
        assert run_deblur(save_photo(folder, "train.png"), folder, "--num_epochs", "2") == 0
    return folder / "checkpoint.pt"
