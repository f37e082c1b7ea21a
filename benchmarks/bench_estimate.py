"""Times the blind kernel estimate alone (kernel_estimation.estimate_kernel) against the photo's
size: data/train/astronaut.jpg scaled to each size, blurred by a 21-pixel camera shake, noise of 2
8-bit steps. A photo larger than kernel_estimation.REGION a side is estimated on its window of
most edges, so the time stops growing there.

    python benchmarks/bench_estimate.py                 # kernel_size 31
    python benchmarks/bench_estimate.py --width 51
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blurs import blur, camera_shake, photographed  # noqa: E402
from kernel_estimation import estimate_kernel  # noqa: E402
from plumbing.images import image_to_tensor  # noqa: E402

SIDES = ((255, 255), (512, 512), (1024, 768), (2000, 1500), (4000, 3000))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=31, help="the kernel's width (kernel_size)")
    args = parser.parse_args()
    astronaut = Image.open(ROOT / "data" / "train" / "astronaut.jpg").convert("RGB")
    generator = torch.Generator().manual_seed(1)
    shake = camera_shake(10.0, args.width // 2, generator)
    print(f"threads: {torch.get_num_threads()}; kernel {args.width} px")
    for width, height in SIDES:
        sharp = image_to_tensor(astronaut.resize((width, height), Image.BICUBIC), "cpu")
        blurred = photographed(blur(sharp, shake), 2.0, generator).half()  # as --apply keeps it
        del sharp
        began = time.perf_counter()
        estimate_kernel(blurred, args.width, 2.0, say=lambda line: None)
        seconds = time.perf_counter() - began
        print(f"{width}x{height} ({width * height / 1e6:.1f} MP): {seconds:.1f} s")


if __name__ == "__main__":
    main()
