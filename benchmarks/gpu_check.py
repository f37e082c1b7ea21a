"""The checks that need a GPU, in one go, for a machine lent for minutes: the CUDA tests, the step
benchmark (float16 with a GradScaler, TF32, torch.compile), torchrun on every GPU, and a short
folder quick look; one report, benchmarks/gpu_report.md (or --report), in under 8 minutes.

    python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --report "$OUT/gpu_report.md"

Each part runs as its own process with a time limit of its own (a part that hangs is cut off and
reported as such, and the others still run); the report keeps each part's last lines.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plumbing.command_line import ANY_BLUR_QUICK_LOOK, FOLDER_QUICK_LOOK  # noqa: E402

BUDGET_S = 8 * 60 - 20  # the whole check, with a margin for starting and writing the report


def parts(work):
    """(name, command, seconds it may take) of each check, in the order they run."""
    python = [sys.executable]
    gpus = torch.cuda.device_count()
    folder = ["--image_path", str(ROOT / "data/train"), "--log_every", "50"]
    quick = [*FOLDER_QUICK_LOOK.split(), "--output_dir", str(work / "quick")]
    spread = [*ANY_BLUR_QUICK_LOOK.split(), "--num_epochs", "200"]
    torchrun = [*python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    deblur = str(ROOT / "Deblur.py")
    return [
        ("CUDA tests", [*python, "-m", "pytest", "-q", str(ROOT / "tests/test_cuda.py")], 150),
        ("step, float16 + GradScaler, TF32", [*python, "benchmarks/bench_train.py"], 60),
        (
            "step, compiled",
            [*python, "benchmarks/bench_train.py", "--compile", "--sizes", "256"],
            120,
        ),
        ("folder steps", [*python, "benchmarks/bench_train.py", "--folder"], 45),
        (
            f"torchrun on {gpus} GPUs, any blur, 200 steps",
            [*torchrun, deblur, *folder, *spread, "--output_dir", str(work / "torchrun")],
            90,
        ),
        ("folder quick look, one GPU", [*python, deblur, *folder, *quick], 90),
    ]


def run_part(command, limit):
    """(exit code or 'timed out', seconds, its last 25 lines of output)."""
    began = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=limit, check=False
        )
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        code = "timed out"
        output = (e.stdout or b"").decode() + (e.stderr or b"").decode()
    lines = [line for line in output.splitlines() if not line.startswith("W1")]  # torchrun's
    return code, time.perf_counter() - began, "\n".join(lines[-25:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", default=str(ROOT / "benchmarks" / "gpu_report.md"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA GPU; this machine has none")
    began = time.perf_counter()
    name = torch.cuda.get_device_name()
    report = [
        f"# GPU check: {torch.cuda.device_count()} x {name}",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, {time.strftime('%Y-%m-%d %H:%M')}",
    ]
    with tempfile.TemporaryDirectory() as work:
        os.environ["XDG_CACHE_HOME"] = str(Path(work) / "cache")  # the photos' cache, gone after
        for title, command, limit in parts(Path(work)):
            left = BUDGET_S - (time.perf_counter() - began)
            if left < 10:
                report.append(f"\n## {title}: not run, the 8 minutes were spent")
                continue
            code, seconds, tail = run_part(command, min(limit, left))
            report += [f"\n## {title}: exit {code}, {seconds:.0f} s", "```", tail, "```"]
            print(report[-3], flush=True)
    report.append(f"\nIn all {time.perf_counter() - began:.0f} s.")
    Path(args.report).write_text("\n".join(report) + "\n")
    print(f"report: {args.report}")


if __name__ == "__main__":
    main()
