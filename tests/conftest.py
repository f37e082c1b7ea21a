import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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
    "perceptual_weight": 0.0,
    "max_grad_norm": 1.0,
    "log_every": 2,
    "checkpoint_every": 1000,
    "seed": 0,
    "device": "cpu",
    "amp_dtype": "auto",
    "compile": "off",
    "holdout_path": "",
    "resume": "",
    "apply": "",
}


@pytest.fixture(autouse=True)
def headless_and_offline(monkeypatch, tmp_path):
    """No window can open, and with an empty TORCH_HOME no test finds (or fetches) VGG weights."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


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


@pytest.fixture
def photo_path(tmp_path):
    path = tmp_path / "photo.png"
    make_photo().save(path)
    return path


def tiny_run_args(image, out, *extra):
    """A run of seconds: 32 px, 4 epochs, MSE only, no held-out image, unless `extra` says else."""
    settings = [arg for name, value in TINY.items() for arg in (f"--{name}", str(value))]
    return ["--image_path", str(image), "--output_dir", str(out), *settings, *extra]


def run_script(*args, cwd=None, timeout=120, **popen):
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "Deblur.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


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
            results = list(pool.map(self.execute, cases, prepared))
        for case, result, folder, ready in zip(cases, results, folders, prepared, strict=True):
            self[case[0]] = (result, folder, *ready)

    def __missing__(self, name):
        self.run([case for case in self.cases if case[0] == name])
        return self[name]


def start_a_long_run(image, out, until):
    """`python Deblur.py` training for 100,000 epochs (a line every 5), read up to the line that
    starts with `until`; the caller stops it."""
    args = tiny_run_args(image, out, "--num_epochs", "100000", "--log_every", "5")
    process = subprocess.Popen(
        [sys.executable, "-u", str(ROOT / "Deblur.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if line.startswith(until):
            break
    return process


@pytest.fixture
def figure_titles(monkeypatch):
    """{file name: its axes' titles, then its insets' titles} of every figure Deblur.py saves."""
    import Deblur

    titles = {}
    real_save = Deblur.save_figure

    def recording_save(figure, path):
        axes = figure.axes
        insets = [inset for ax in axes for inset in ax.child_axes]
        titles[path.name] = [ax.get_title() for ax in [*axes, *insets]]
        real_save(figure, path)

    monkeypatch.setattr(Deblur, "save_figure", recording_save)
    return titles


def signal_after(prefix, number):
    """A way to run a command: send it signal `number` once it prints a line starting with
    `prefix`; it gives (exit code, stdout, stderr)."""

    def run(command, env):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        seen = []
        for raw in process.stdout:
            line = raw.decode()
            seen.append(line)
            if line.startswith(prefix):
                process.send_signal(number)
                break
        out, err = process.communicate(timeout=120)
        return process.returncode, "".join(seen) + out.decode(), err.decode()

    return run
