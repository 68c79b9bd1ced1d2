"""How much importing the pack costs ComfyUI's start-up.

Each run is a fresh process (nothing cached in memory), timing `import comfyui_diffbody` inside it;
the figure is the median. The wall-clock difference against an empty process is printed beside it.

    python bench/import_time.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TIMED_IMPORT = ("import time; t = time.perf_counter(); import comfyui_diffbody; "
                "print(time.perf_counter() - t)")


def wall_seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="Time importing the pack in fresh processes.")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    inside = [float(subprocess.run([sys.executable, "-c", TIMED_IMPORT], check=True, capture_output=True,
                                   text=True).stdout) for _ in range(args.runs)]
    bare = statistics.median(wall_seconds("pass") for _ in range(args.runs))
    whole = statistics.median(wall_seconds("import comfyui_diffbody") for _ in range(args.runs))
    print(f"import comfyui_diffbody: median {statistics.median(inside) * 1000:.1f} ms "
          f"(min {min(inside) * 1000:.1f}, max {max(inside) * 1000:.1f}; {args.runs} fresh processes)")
    print(f"process wall time: {bare * 1000:.1f} ms empty, {whole * 1000:.1f} ms with the import "
          f"(+{(whole - bare) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
