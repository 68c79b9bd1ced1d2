"""The GPU suite's end-to-end rows: the bundled `diffbody_full` and `diffbody_public` workflows through a real
ComfyUI server (tests/comfy_harness.py) on the models folder, per-node times from the server's websocket, the
server's peak memory from the probe node (bench/comfy_probe). Each workflow runs twice on two photos of the same
size: the first run loads the models (its time is kept as `cold_s`); the second, with every model loaded,
is the figure. With --networks tiny the stock loaders are swapped for the tests' stand-ins (tests/workflow_tools.py).

Fast settings: the bundled fast variants (`diffbody_full_fast`, `diffbody_public_fast`: pipelines/presets.py's
FAST profile, DPM++ 2M Karras at 25 + 25 steps, p reused for stage 2), --workflow-steps overriding both samplers'
steps (the CPU test runs 2), everything else as bundled. The paper's settings (200 + 200 DDPM) are extrapolated from the fast run and the per-step rows.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from comfy_stage2 import TESTS_DIR
from suite_report import na

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
from comfy_harness import ComfyServer, execution_error, make_base_dir  # noqa: E402
from workflow_tools import load_workflow, with_test_stand_ins  # noqa: E402

from comfyui_diffbody.pipelines.presets import FAST  # noqa: E402

FAST_STEPS = FAST.stage2_steps
PAPER_STEPS = 200
PROBE = Path(__file__).resolve().parent / "comfy_probe"
CAPTION_NODES = ("DiffBodyLlavaCaption",)
SAMPLER_NODES = {"DiffBodyStage1Sampler": "stage1", "KSampler": "stage2"}
CAP_GIB = 12


def prompt_for(ctx, name: str, image: str) -> dict:
    """The bundled API workflow `name` on `image` with --workflow-steps per sampler. Tiny networks: the stock loaders'
    test stand-ins, and stage 1 at the photo's own size (its bucket is 512x1024 whatever S; at S = 1024 the
    photo is that bucket, so both modes run the same)."""
    prompt = load_workflow(f"{name}_api.json")
    if not ctx.real:
        prompt = with_test_stand_ins(prompt)
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = image
        if node["class_type"] in SAMPLER_NODES:
            node["inputs"]["steps"] = ctx.args.workflow_steps
        if node["class_type"] == "DiffBodyStage1Sampler" and not ctx.real:
            node["inputs"]["size_mode"] = "native"
    return prompt


def write_photos(folder: Path, width: int, height: int) -> list[str]:
    """Two photos of a person (scikit-image's astronaut, and mirrored) at width x height in the input folder."""
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((width, height), Image.BICUBIC)
    names = [f"suite_{width}x{height}_{i}.png" for i in range(2)]
    photo.save(folder / names[0])
    Image.fromarray(np.asarray(photo)[:, ::-1].copy()).save(folder / names[1])
    return names


class SuiteServer:
    """A ComfyUI server on the models folder, the probe linked in; --cpu only for the CPU suite."""

    def __init__(self, ctx, cap_gib: float | None = None):
        import torch

        self.work = Path(tempfile.mkdtemp(prefix="diffbody-suite-", dir=ctx.args.out))
        base = make_base_dir(self.work / "comfy", "ComfyUI-DiffBody", Path(ctx.models_dir()))
        (base / "custom_nodes" / "diffbody_bench_probe").symlink_to(PROBE, target_is_directory=True)
        self.input = base / "input"
        extra: tuple[str, ...] = ()
        env = {}
        if cap_gib is not None and ctx.device.type == "cuda":
            total_gib = torch.cuda.get_device_properties(ctx.device).total_memory / 2 ** 30
            extra = ("--reserve-vram", f"{max(total_gib - cap_gib, 0):.2f}")
            env = {"DIFFBODY_BENCH_VRAM_GIB": str(cap_gib)}
        if ctx.device.type == "cpu":  # as the suite's own process: one thread keeps the CI check steady
            env["OMP_NUM_THREADS"] = "1"
        self.server = ComfyServer(base, cpu=ctx.device.type == "cpu", extra_args=extra)
        self.env = env

    def __enter__(self) -> "SuiteServer":
        import os

        saved = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)
        try:
            self.server.start()
        finally:
            for key, value in saved.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    def memory(self, reset: bool = True) -> dict:
        response = requests.get(f"{self.server.url}/diffbody_bench/memory", params={"reset": "1"} if reset else {},
                                timeout=30)
        response.raise_for_status()
        return response.json()

    def run(self, prompt: dict) -> dict:
        """Run a prompt; its per-node seconds by class, total, caption, loaders and samplers, and the peak."""
        self.memory()
        entry, seconds = self.server.run_timed(prompt, timeout=1800)
        if entry["status"]["status_str"] != "success":
            error = execution_error(entry) or {}
            raise RuntimeError(f"workflow failed in {error.get('node_type')}: {error.get('exception_message')}")
        memory = self.memory()
        by_class: dict[str, float] = {}
        for node_id, took in seconds.items():
            kind = prompt[node_id]["class_type"]
            by_class[kind] = round(by_class.get(kind, 0.0) + took, 3)
        total = sum(seconds.values())
        caption = sum(v for k, v in by_class.items() if k in CAPTION_NODES)
        loading = sum(v for k, v in by_class.items() if "Loader" in k)
        return {"total_s": total, "caption_s": caption, "loading_s": loading,
                "work_s": total - caption - loading, "nodes_s": by_class,
                "peak_mb": memory.get("cuda_peak_mb", memory["rss_peak_mb"]),
                "peak_scope": "server VRAM (max_memory_allocated)" if "cuda_peak_mb" in memory
                else "server peak RSS" + (" (whole server run)" if memory.get("rss_peak_scope") else "")}


def run_workflows(ctx, report, rows: list[str]) -> None:
    width, height = ctx.size // 2, ctx.size
    with SuiteServer(ctx) as server:
        photos = write_photos(server.input, width, height)
        for row, name in (("workflow_full_fast", "diffbody_full_fast"),
                          ("workflow_public_fast", "diffbody_public_fast")):
            if row not in rows and not (row == "workflow_full_fast" and "paper_settings_extrapolated" in rows):
                continue
            cold = server.run(prompt_for(ctx, name, photos[0]))
            warm = server.run(prompt_for(ctx, name, photos[1]))
            steps = ctx.args.workflow_steps
            target = "<= 3 s (diffusion stages + priors, captions apart)" if ctx.real and steps <= FAST_STEPS else ""
            report.add(row, warm["work_s"], "s", peak_mb=warm["peak_mb"], target=target, cold_s=cold["total_s"],
                       note=f"{name}, {width}x{height} photo, {steps}+{steps} steps, second run (models "
                            f"loaded): {warm['total_s']:.2f} s in nodes = captions {warm['caption_s']:.2f} + loaders "
                            f"{warm['loading_s']:.2f} + the rest (the figure); first run {cold['total_s']:.2f} s "
                            f"[peak: {warm['peak_scope']}]", **{k: warm[k] for k in ("total_s", "caption_s",
                                                                                     "loading_s", "nodes_s")})
    if "paper_settings_extrapolated" in rows:
        add_paper_row(report, ctx.args.workflow_steps)


def add_paper_row(report, fast_steps: int) -> None:
    """The full workflow at the paper's 200 + 200 DDPM steps, from the fast run: its work time plus
    (200 - fast_steps) more steps of each stage at the per-step rows' rates (stage 1 with CFG at S/2 x S, stage 2 with
    both of ours at the photo's size)."""
    fast = report.row("workflow_full_fast")
    stage1, stage2 = report.value("stage1_cfg"), report.value("stage2_both_photo")
    if not fast or not isinstance(fast["value"], float) or stage1 is None or stage2 is None:
        report.add("paper_settings_extrapolated", na("needs workflow_full_fast, stage1_cfg and stage2_both_photo"))
        return
    extra = PAPER_STEPS - fast_steps
    value = fast["value"] + extra * (stage1 + stage2)
    report.add("paper_settings_extrapolated", value, "s", target="<= 10 s for one 512x1024 photo",
               note=f"EXTRAPOLATED, not measured: workflow_full_fast {fast['value']:.2f} s + {extra} x (stage1_cfg "
                    f"{stage1:.4g} + stage2_both_photo {stage2:.4g} s/step); captions apart")


def run_profile_12gb(ctx, report, rows: list[str]) -> None:
    """The 12 GB profile: the server capped at CAP_GIB of VRAM, both workflows at S x S and on a 3000x2000 photo
    scaled by S/1024, fast settings (the peak does not depend on the number of steps)."""
    scale = ctx.size / 1024
    sizes = {"1024": (ctx.size, ctx.size), "3000x2000": (round(3000 * scale), round(2000 * scale))}
    with SuiteServer(ctx, cap_gib=CAP_GIB) as server:
        for size_name, (width, height) in sizes.items():
            photos = write_photos(server.input, width, height)
            for workflow in ("full", "public"):
                row = f"12gb_{workflow}_{size_name}"
                if row not in rows:
                    continue
                result = server.run(prompt_for(ctx, f"diffbody_{workflow}", photos[0]))
                cap = f"capped at {CAP_GIB} GiB" if ctx.device.type == "cuda" else "no VRAM cap on the CPU"
                report.add(row, result["total_s"], "s", peak_mb=result["peak_mb"],
                           target=f"peak <= {CAP_GIB} GiB" if ctx.device.type == "cuda" else "",
                           note=f"diffbody_{workflow} on a {width}x{height} photo, {ctx.args.workflow_steps} steps "
                                f"per sampler, "
                                f"{cap}, first run (loading included) [peak: {result['peak_scope']}]",
                           **{k: result[k] for k in ("caption_s", "loading_s", "nodes_s")})
