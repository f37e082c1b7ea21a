"""Trains on a folder far larger than memory would hold decoded as floats, and measures a run's
peak memory: its photos are read through the decoded cache (plumbing/photo_folder.py).

    python benchmarks/bench_folder.py                       # 500 megapixels, in 50 photos
    python benchmarks/bench_folder.py --megapixels 2200     # DIV2K's training set's size

The photos are made up (smooth random shapes, JPEG, 10 megapixels each) in a temporary folder,
with a cache of their own. Two runs of the any-blur quick look's settings, --num_epochs steps
each, in fresh processes: the first decodes the photos into the cache, the second reads them
from it. For each: the wall time, the peak resident memory (os.wait4's) and its two parts, and
the training rate. `--folder data/train` measures a small folder the same way, for comparison.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plumbing.command_line import ANY_BLUR_QUICK_LOOK  # noqa: E402

WIDTH, HEIGHT = 3872, 2592  # 10 megapixels, a camera's


def made_up_photos(folder, count):
    rng = np.random.default_rng(0)
    for number in range(count):
        coarse = rng.integers(0, 256, (HEIGHT // 32, WIDTH // 32, 3), dtype=np.uint8)
        photo = Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
        photo.save(folder / f"photo{number:04}.jpg", quality=90)


def run(command, env):
    """Wall seconds, peak resident MB, the peaks of its two parts (Linux's RssAnon: memory of the
    process's own; RssFile: pages of files it maps, the cache's, which the system may drop) and
    what it printed, of `command` in a fresh process."""
    began = time.perf_counter()
    with tempfile.TemporaryFile("w+") as printed:
        child = subprocess.Popen(command, env=env, stdout=printed, text=True)
        peaks = {"RssAnon": 0, "RssFile": 0}
        ended = 0
        while not ended:
            for name, kilobytes in resident(child.pid).items():
                peaks[name] = max(peaks[name], kilobytes / 1024)
            time.sleep(0.1)
            ended, status, usage = os.wait4(child.pid, os.WNOHANG)
        printed.seek(0)
        printed = printed.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed:\n{printed}")
    return time.perf_counter() - began, usage.ru_maxrss / 1024, peaks, printed


def resident(pid):
    """{RssAnon, RssFile: kB} of a running process (none once it has ended)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        line.split(":")[0]: int(line.split()[1])
        for line in lines
        if line.startswith(("RssAnon", "RssFile"))
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", type=int, default=500)
    parser.add_argument("--num_epochs", type=int, default=50)
    parser.add_argument("--folder", help="an existing folder of photos instead of made-up ones")
    args = parser.parse_args()
    count = -(-args.megapixels * 10**6 // (WIDTH * HEIGHT))
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        photos = Path(args.folder or work / "photos").resolve()
        if not args.folder:
            photos.mkdir()
            made_up_photos(photos, count)
        env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
        command = [sys.executable, str(ROOT / "Deblur.py"), "--image_path", str(photos)]
        command += [*ANY_BLUR_QUICK_LOOK.split(), "--num_epochs", str(args.num_epochs)]
        command += ["--log_every", str(args.num_epochs)]
        if not args.folder:
            print(f"{count} photos of {WIDTH}x{HEIGHT}: {count * WIDTH * HEIGHT / 1e6:.0f} MP")
        for number, name in enumerate(("decoding into the cache", "read from the cache")):
            out = str(work / f"out{number}")
            seconds, peak, parts, printed = run([*command, "--output_dir", out], env)
            rate = re.findall(r"([\d.]+) epochs/s", printed)[-1]
            print(
                f"{name}: {seconds:.0f} s in all, peak memory {peak:.0f} MB (its own at most "
                f"{parts['RssAnon']:.0f} MB, mapped files {parts['RssFile']:.0f} MB), "
                f"{rate} steps/s"
            )


if __name__ == "__main__":
    main()
