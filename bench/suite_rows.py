"""The GPU suite's rows, by group (bench/gpu_suite.py runs them): what each measures and how."""

from __future__ import annotations

import gc
import os
import statistics
import time

import torch

from suite_report import PeakMemory, count_flops, na, of_peak, peak_tflops

# The stage-2 setups of ComfyUI's KSampler path, in the order they run.
COMFY_SETUPS = ("stage2_sdxl", "stage2_stock_controlnet", "stage2_multiprior", "stage2_colour_adapter", "stage2_both")
GROUPS = {
    "stage1": ("stage1_cfg", "stage1_no_cfg"),
    "stage2": (*COMFY_SETUPS, "stage2_both_photo", "stage2_overhead_vs_stock", "diffusers_sdxl",
               "diffusers_sdxl_controlnet"),
    "stage0": ("swinir_tiles", "dwpose", "depth_anything", "marigold"),
    "workflows": ("workflow_full_fast", "workflow_public_fast", "paper_settings_extrapolated"),
    "profile_12gb": ("12gb_full_1024", "12gb_public_1024", "12gb_full_3000x2000", "12gb_public_3000x2000"),
}
DESCRIPTIONS = {
    "stage1_cfg": "stage-1 step (joint UNet + ControlNet, CFG 7.5: batch 2) at S/2 x S",
    "stage1_no_cfg": "stage-1 step without CFG (cfg 1) at S/2 x S",
    "stage2_sdxl": "KSampler step, plain SDXL (CFG 5), S x S",
    "stage2_stock_controlnet": "KSampler step, SDXL + one stock SDXL ControlNet (diffusers from_unet layout)",
    "stage2_multiprior": "KSampler step, SDXL + our multi-prior ControlNet (4 priors)",
    "stage2_colour_adapter": "KSampler step, SDXL + the colour adapter",
    "stage2_both": "KSampler step, SDXL + multi-prior ControlNet + colour adapter",
    "stage2_both_photo": "as stage2_both, at the photo's S/2 x S (for the extrapolation)",
    "diffusers_sdxl": "diffusers StableDiffusionXLPipeline step, same UNet weights",
    "diffusers_sdxl_controlnet": "diffusers StableDiffusionXLControlNetPipeline step, same ControlNet",
}
PHYSICAL_FLOOR = ("SDXL UNet 3.22 TFLOP per forward at 512x1024, SD 2.1-base 1.85 (issue 16); a CFG step is "
                  "two forwards")


class Context:
    """What the groups share: the parsed arguments, device, dtype, the GPU's peak, the models folder."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = getattr(torch, args.dtype)
        self.size = args.size
        self.real = args.networks == "real"
        self.steps = args.steps
        self.warmup = 2 if self.device.type == "cuda" else 1
        self.peak, self.peak_name = peak_tflops(self.device)
        self._models_dir = args.models_dir

    def header(self) -> dict:
        import diffusers

        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else \
            f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
        return {"device": device, "peak TFLOP/s (fp16/bf16 dense)": self.peak or na(self.peak_name),
                "dtype": self.args.dtype, "size S": self.size, "networks": self.args.networks,
                "profile": self.args.profile, "timed steps per row": self.steps,
                "torch": torch.__version__, "diffusers": diffusers.__version__, "ComfyUI": self.args.comfyui,
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "physical floor": PHYSICAL_FLOOR,
                "figures": f"per-step rows: median seconds between consecutive step callbacks after a "
                           f"{self.warmup}-step warm-up; TFLOP/step from torch's FlopCounterMode over one step; 'of peak' = "
                           "TFLOP/step / s/step / the GPU's peak"}

    def models_dir(self) -> str:
        """The folder the server and stage-0 rows load from (built on first use)."""
        if self._models_dir is None:
            if self.real:
                from comfyui_diffbody.testing.realsize import cached_realsize_models_dir

                cache = os.environ.get("DIFFBODY_REALSIZE_CACHE") or os.path.expanduser(
                    "~/.cache/comfyui-diffbody/realsize")
                self._models_dir = str(cached_realsize_models_dir(cache, self.args.comfyui))
            else:
                from comfyui_diffbody.testing.tiny import build_models_dir

                self._models_dir = os.path.join(os.path.abspath(self.args.out), "tiny-models")
                build_models_dir(self._models_dir)
        return self._models_dir

    def release(self) -> None:
        from comfy_stage2 import unload_all

        unload_all()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def add_step_row(ctx: Context, report, name: str, seconds: list[float], peak_mb, scope: str, flops: float,
                 note: str = "", target: str = "", **extra) -> dict:
    """A per-step row: median s/step beside min/max, the peak, TFLOP/step and the fraction of the GPU's peak."""
    step = statistics.median(seconds)
    fraction = of_peak(ctx, flops, step)
    if ctx.device.type == "cpu":
        note = (note + "; " if note else "") + "CPU FLOPs leave attention out"
    return report.add(name, step, "s/step", peak_mb=peak_mb, tflop_per_step=flops / 1e12, fraction_of_peak=fraction,
                      target=target, note=f"{DESCRIPTIONS.get(name, '')}. {note} [peak: {scope}]".strip(),
                      min=min(seconds), max=max(seconds), flops=flops, **extra)


# -- stage 1 ---------------------------------------------------------------------------------------------------

def run_stage1(ctx: Context, report, rows: list[str]) -> None:
    import stage1_step

    from comfyui_diffbody.pipelines.presets import MODE_DEFAULTS
    from comfyui_diffbody.pipelines.stage1 import sample_joint

    unet, controlnet, build_s = stage1_step.build_networks(real=ctx.real, device=ctx.device, dtype=ctx.dtype)
    latent = (ctx.size // 8, ctx.size // 16)  # (H, W): S tall, S/2 wide
    paper = MODE_DEFAULTS["diffbody"]
    for name, cfg in (("stage1_cfg", paper.stage1_cfg), ("stage1_no_cfg", 1.0)):
        if name not in rows:
            continue
        inputs = stage1_step.make_inputs(unet, controlnet, batch=1, latent=latent, device=ctx.device)
        flops = count_flops(lambda: sample_joint(unet, **inputs, steps=1, scheduler=paper.stage1_scheduler, cfg=cfg,
                                                 dtype=ctx.dtype))
        result = stage1_step.measure(unet, controlnet, cfg=cfg, steps=ctx.steps, batch=1, latent=latent,
                                     scheduler=paper.stage1_scheduler, device=ctx.device, dtype=ctx.dtype)
        durations = [result["min"], result["median"], result["max"]]
        scope = "weights + sampling" + result["scope"]
        add_step_row(ctx, report, name, durations, result["peak_mb"], scope, flops,
                     note=f"bench/stage1_step.py's measure; networks built in {build_s:.1f} s")


# -- stage 2: ComfyUI's KSampler path and diffusers' pipelines ---------------------------------------------------

def run_stage2(ctx: Context, report, rows: list[str]) -> None:
    import comfy_stage2 as cs
    import stage2_step
    import suite_networks as sn

    size = (ctx.size, ctx.size)
    nets = sn.stage2_networks(ctx.args.networks, ctx.args.comfyui, ctx.device, ctx.dtype)
    inputs = stage2_step.make_inputs(nets.unet.config, size, ctx.device, ctx.dtype)
    images = {name: image.movedim(1, -1).float().cpu() for name, image in inputs["priors"].items()}
    restored = inputs["restored"].movedim(1, -1).float().cpu()
    text = [t.float().cpu() for pair in (inputs["prompt"], inputs["negative"]) for t in pair]
    positive, negative = cs.sdxl_conditioning(*text)
    model = cs.sdxl_model(nets.ldm, ctx.dtype)
    stock = sn.stock_controlnet(nets)
    setups = comfy_setups(ctx, nets, model, positive, negative, images, restored, stock)
    for name in COMFY_SETUPS:
        if name in rows:
            measure_comfy(ctx, report, name, setups[name], size)
    if "stage2_both_photo" in rows:
        measure_comfy(ctx, report, "stage2_both_photo", setups["stage2_both"], (ctx.size, ctx.size // 2))
    if "stage2_overhead_vs_stock" in rows:
        add_overhead_row(report)
    cs.unload_all()
    del setups, model
    for name, controlnet in (("diffusers_sdxl", None), ("diffusers_sdxl_controlnet", stock)):
        if name in rows:
            runner = stage2_step.diffusers_runner(nets.unet, controlnet, inputs, size, "ddpm", 5.0)
            measure_runner(ctx, report, name, runner)


def comfy_setups(ctx: Context, nets, model, positive, negative, images, restored, stock) -> dict:
    """{row: (MODEL, positive, negative)} for the five KSampler setups, each built once."""
    import comfy_stage2 as cs
    import suite_networks as sn

    stock_unet_config = None if ctx.real else model.model.model_config.unet_config
    stock_control = cs.stock_controlnet(stock.state_dict(), ctx.dtype, unet_config=stock_unet_config)
    ours = cs.multiprior_control(sn.multiprior(nets), ctx.dtype)
    adapted = cs.colour_adapted(model, sn.colour_adapter(nets), sn.clip_vision(nets), restored)
    with_ours = cs.attach_multiprior(positive, negative, ours, images)
    return {
        "stage2_sdxl": (model, positive, negative),
        "stage2_stock_controlnet": (model, *cs.attach_stock_controlnet(positive, negative, stock_control,
                                                                       images["image"])),
        "stage2_multiprior": (model, *with_ours),
        "stage2_colour_adapter": (adapted, positive, negative),
        "stage2_both": (adapted, *with_ours),
    }


def measure_comfy(ctx: Context, report, name: str, setup, size) -> None:
    """One KSampler setup: FLOPs of one step, a 2-step warm-up, then the timed steps, peak memory over
    warm-up + timed run from a device cleared of ComfyUI's models (the setup's weights count)."""
    import comfy_stage2 as cs

    from comfyui_diffbody.pipelines.presets import KSAMPLER_NAMES, MODE_DEFAULTS

    sampler, scheduler = KSAMPLER_NAMES[MODE_DEFAULTS["diffbody"].stage2_scheduler]
    options = dict(size=size, cfg=MODE_DEFAULTS["diffbody"].stage2_cfg, sampler=sampler, scheduler=scheduler)
    flops = count_flops(lambda: cs.time_steps(*setup, steps=1, **options))
    cs.unload_all()
    with PeakMemory(ctx.device) as peak:
        cs.time_steps(*setup, steps=ctx.warmup, **options)
        seconds = cs.time_steps(*setup, steps=ctx.steps + 1, **options)
    target = "<= 10 GB at 1024x1024" if name == "stage2_both" and ctx.real else ""
    add_step_row(ctx, report, name, seconds, peak.mb, peak.scope, flops, target=target,
                 note=f"comfy.sample.sample, {sampler}/{scheduler}, {size[1]}x{size[0]}")


def add_overhead_row(report) -> None:
    """Our per-step time over the stock ControlNet's, divided by our FLOPs over its FLOPs (issue 16's 1.05)."""
    ours, stock = report.row("stage2_both"), report.row("stage2_stock_controlnet")
    if not (ours and stock and isinstance(ours["value"], float) and isinstance(stock["value"], float)):
        report.add("stage2_overhead_vs_stock", na("needs stage2_both and stage2_stock_controlnet"))
        return
    ratio = (ours["value"] / stock["value"]) / (ours["flops"] / stock["flops"])
    report.add("stage2_overhead_vs_stock", ratio, "x", target="<= 1.05",
               note=f"(s/step ours {ours['value']:.4g} / stock {stock['value']:.4g}) / (FLOPs ours / stock "
                    f"{ours['flops'] / stock['flops']:.3f}); ours = multi-prior ControlNet + colour adapter")


def measure_runner(ctx: Context, report, name: str, run) -> None:
    """A diffusers pipeline row (bench/stage2_step.py's runner): FLOPs of one step, warm-up, timed steps."""
    stamps: list[float] = []

    def stamp() -> None:
        ctx.sync()
        stamps.append(time.perf_counter())

    flops = count_flops(lambda: run(1, None))
    with PeakMemory(ctx.device) as peak:
        run(ctx.warmup, None)
        run(ctx.steps + 1, stamp)
    seconds = [b - a for a, b in zip(stamps, stamps[1:])]
    add_step_row(ctx, report, name, seconds, peak.mb, peak.scope + ", weights already on the device", flops,
                 note="DDPM, CFG 5, embeddings given (no text encoders or VAE)")


def run_stage0(ctx: Context, report, rows: list[str]) -> None:
    import suite_stage0

    suite_stage0.run(ctx, report, rows)


def run_workflows(ctx: Context, report, rows: list[str]) -> None:
    import suite_server

    suite_server.run_workflows(ctx, report, rows)


def run_profile_12gb(ctx: Context, report, rows: list[str]) -> None:
    import suite_server

    if ctx.args.profile != "12gb":
        for name in rows:
            report.add(name, na("run with --profile 12gb"))
        return
    suite_server.run_profile_12gb(ctx, report, rows)


RUNNERS = {"stage1": run_stage1, "stage2": run_stage2, "stage0": run_stage0, "workflows": run_workflows,
           "profile_12gb": run_profile_12gb}
