"""The GPU suite: per-step times, peak memory and FLOPs of both diffusion stages, stage 2 in ComfyUI's own
KSampler path beside diffusers' pipelines, the bundled workflows end to end through a server, and stage 0,
in one command (issue 16). Rows are written to --out as they finish (results.jsonl, results.json, results.md).

    python bench/gpu_suite.py --out RESULTS                      # real sizes, random weights, fp16, CUDA
    python bench/gpu_suite.py --out RESULTS --profile 12gb       # + the 12 GB profile's workflow rows
    python bench/gpu_suite.py --device cpu --size 128 --networks tiny --out TMP   # the CI test (small)

The per-step networks are built in memory on the device (testing/realsize/networks.py: the real-size fixture
factory's values; --networks tiny: testing/tiny). The server rows, the 12 GB profile and stage 0 load files
through the pack's and ComfyUI's loaders: the real-size models folder (built once by the same factory, cached
under ~/.cache/comfyui-diffbody/realsize; --models-dir another, real weights for instance), or the tests'
tiny models folder with --networks tiny.

--size S scales every canvas: stage 1 at S/2 x S (512x1024 at S=1024), stage 2 at S x S, SwinIR at 2S x 2S, the
workflows on an S/2 x S photo, the 12 GB profile at S x S and 3000x2000 * S/1024.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback

import suite_rows
from suite_server import FAST_STEPS
from suite_report import Report

GROUPS = suite_rows.GROUPS  # group -> its rows, in order


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results.jsonl / .json / .md")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--size", type=int, default=1024, help="the canvas scale S in px (default 1024, real)")
    parser.add_argument("--networks", default="real", choices=("real", "tiny"))
    parser.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                        help="network dtype (default float16 on CUDA, float32 on the CPU)")
    parser.add_argument("--profile", default="full", choices=("full", "12gb"),
                        help="12gb: cap this process and the server at 12 GiB of VRAM and run the 12 GB rows")
    parser.add_argument("--only", default="", help="comma-separated row or group names (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 8 CUDA, 2 CPU)")
    parser.add_argument("--workflow-steps", type=int, default=FAST_STEPS,
                        help=f"steps of each sampler in the workflow rows (default {FAST_STEPS}: the fast mode's bound)")
    parser.add_argument("--comfyui", default=os.environ.get("DIFFBODY_COMFYUI_DIR"),
                        help="the ComfyUI folder (default $DIFFBODY_COMFYUI_DIR)")
    parser.add_argument("--models-dir", default=None, help="models folder for the server and stage-0 rows")
    args = parser.parse_args(argv)
    if not args.comfyui:
        parser.error("no ComfyUI: pass --comfyui or set DIFFBODY_COMFYUI_DIR")
    if args.size % 64:
        parser.error("--size must be a multiple of 64 (stage 1 runs at S/2 x S)")
    args.dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    args.steps = args.steps or (8 if args.device == "cuda" else 2)
    if args.steps < 2 or args.workflow_steps < 1:
        parser.error("--steps must be at least 2 (a step is timed between two step callbacks), --workflow-steps 1")
    rows = [row for group in GROUPS.values() for row in group]
    args.only = [name for name in args.only.split(",") if name]
    unknown = [name for name in args.only if name not in rows and name not in GROUPS]
    if unknown:
        parser.error(f"unknown rows {unknown}; rows: {', '.join(rows)}; groups: {', '.join(GROUPS)}")
    return args


def selected(args, group: str) -> list[str]:
    if not args.only or group in args.only:
        return list(GROUPS[group])
    return [row for row in GROUPS[group] if row in args.only]


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from comfy_stage2 import import_comfy

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU (use --device cpu --size 128 --networks tiny)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated run still stops its ComfyUI server
    if args.device == "cpu":
        torch.set_num_threads(1)  # the CPU run is the CI check: one thread keeps it steady on shared cores
    import_comfy(args.comfyui, args.device)
    ctx = suite_rows.Context(args)
    report = Report(args.out, ctx.header())
    started = time.monotonic()
    for group, run in suite_rows.RUNNERS.items():
        rows = selected(args, group)
        if not rows:
            continue
        group_started = time.monotonic()
        try:
            run(ctx, report, rows)
        except Exception as error:  # the group's unfinished rows say why; the run goes on and exits 1
            traceback.print_exc()
            reason = f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
            for row in rows:
                if report.row(row) is None:
                    report.add(row, reason)
        finally:
            ctx.release()
        print(f"[suite] group {group}: {time.monotonic() - group_started:.1f} s", flush=True)
    report.header["total seconds"] = round(time.monotonic() - started, 1)
    report.add("suite_total", round(time.monotonic() - started, 1), "s",
               note="the whole run, fixtures included", target="<= 300 s on one GPU")
    missing = [row for group in GROUPS for row in selected(args, group) if report.row(row) is None]
    for row in missing:
        report.add(row, "failed: the row's group ended without it")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
