"""Seconds per stage-2 sampling step, and peak memory: SDXL, + multi-prior ControlNet, + colour adapter.

Rows (each measured in a fresh Python process, so one setting's memory cannot leak into the next):
    a  plain SDXL UNet                      (our Stage2Pipeline, every prior strength 0, adapter weight 0)
    b  + our multi-prior ControlNet         (four priors, strengths 1)
    c  + the colour adapter                 (IP-Adapter Plus XL layout, weight 1)
    d  + both
    e  diffusers StableDiffusionXLPipeline            (reference for a, same UNet weights)
    f  diffusers StableDiffusionXLControlNetPipeline  (reference for b: its ControlNet is
       `ControlNetModel.from_unet(unet)`, a standard single-image SDXL ControlNet of the same size;
       ours differs only in the conditioning embedding)

s/step is the median over the timed steps. One step = ControlNet (if any) + UNet on the classifier-free-guidance batch of 2, the guidance mix and
the scheduler update. It is timed between consecutive per-step callbacks (our `progress`, diffusers'
`callback_on_step_end`; on CUDA after a synchronize), so the work done once per image (text, CLIP image
features, our prior embedding c_g, noise) is outside it. Note: diffusers' ControlNet re-runs its
conditioning embedding on the full-size control image at every step; ours embeds the priors once.
A warm-up run of 2 steps precedes the timed run. Text encoders are not built: the prompt embeddings
are random tensors of SDXL's shapes ((1,77,2048) and pooled (1,1280) at real size).

    python bench/stage2_step.py             # --tiny: tiny SDXL on the CPU, float32, 128x128
    python bench/stage2_step.py --real      # SDXL 1.0 sizes, RANDOM weights from configs, fp16, 1024x1024, CUDA

Peak memory: on CUDA, torch.cuda.max_memory_allocated() over warm-up + timed run (weights on the device
included; "before" is what was allocated once the networks were built). On the CPU, the process's
resident-set high-water mark (VmHWM), reset through /proc/self/clear_refs once the networks are built,
so it covers Python + torch + the weights + the warm-up and timed sampling ("before" is VmRSS then);
where the reset is refused, getrusage's ru_maxrss of the whole process (building included), marked "*".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from process_memory import proc_status_mb, reset_peak_rss, whole_process_peak_mb

MB = 1024 * 1024
SETTINGS = {
    "a": "SDXL UNet (Stage2Pipeline)",
    "b": "+ multi-prior ControlNet",
    "c": "+ colour adapter",
    "d": "+ ControlNet + adapter",
    "e": "diffusers SDXL pipeline",
    "f": "diffusers SDXL ControlNet pipe",
}
CLIP_TOKENS = 257  # ViT-H/14 at 224 px: 16*16 patches + the class token
RESULT_TAG = "RESULT "


def main() -> None:
    args = parse_args()
    if args.worker:
        print(RESULT_TAG + json.dumps(measure(args)), flush=True)
        return
    import torch

    if args.real and args.device != "cuda":
        print(f"--real runs on CUDA only (SDXL at real size in fp16); --device {args.device} given: skipped.")
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        what = "--real (CUDA only)" if args.real else "--device cuda"
        print(f"{what}: torch sees no CUDA GPU, so nothing was measured (skipped).")
        return
    print_header(args, torch)
    failed = False
    for setting in args.settings:
        result = run_worker(setting, args)
        failed |= result is None
    sys.exit(1 if failed else 0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="tiny SDXL config, CPU float32 (the default)")
    mode.add_argument("--real", action="store_true",
                      help="SDXL 1.0 sizes with random weights (nothing downloaded), fp16 on CUDA; "
                           "skipped without CUDA")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT or one number in px (default 128 tiny, 1024 real)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps, at least 2 (default 10)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default cpu tiny, cuda real)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="network dtype (default float32 tiny, float16 real)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per measurement (0: torch's default); default 1 so that "
                             "CPU figures do not depend on what else the machine runs")
    parser.add_argument("--scheduler", default="dpmpp_2m", help="a stage-2 scheduler name (same for every row)")
    parser.add_argument("--cfg", type=float, default=5.0, help="guidance scale (1: no unconditional half)")
    parser.add_argument("--settings", default="abcdef", help="which rows to run, e.g. 'abf' (default all)")
    parser.add_argument("--worker", choices=tuple(SETTINGS), help=argparse.SUPPRESS)  # measure one row here
    args = parser.parse_args()
    args.device = args.device or ("cuda" if args.real else "cpu")
    args.dtype = args.dtype or ("float16" if args.real else "float32")
    args.steps = args.steps or 10
    args.size = args.size or ("1024" if args.real else "128")
    if args.steps < 2:
        parser.error("--steps must be at least 2 (a step is timed between two consecutive step callbacks)")
    unknown = set(args.settings) - set(SETTINGS)
    if unknown or not args.settings:
        parser.error(f"--settings takes letters from {''.join(SETTINGS)}")
    width, height = parse_size(parser, args.size)
    args.width, args.height = width, height
    return args


def parse_size(parser: argparse.ArgumentParser, text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        width, height = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        width = height = 0
    if width <= 0 or height <= 0 or width % 32 or height % 32:
        parser.error(f"--size must be WIDTHxHEIGHT (or one number) in px, multiples of 32; got {text!r}")
    return width, height


# -- the parent: header, one subprocess per row, the table ---------------------------------------------

def print_header(args: argparse.Namespace, torch) -> None:
    import diffusers

    label = "SDXL 1.0 sizes, random weights" if args.real else "tiny SDXL config (testing/tiny/stage2.py)"
    threads = f"{args.threads or 'default'} torch thread(s)"
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {threads}"
    print(f"stage-2 step: {label}; {args.width}x{args.height} px (latents {args.width // 8}x{args.height // 8}), "
          f"batch 1, cfg {args.cfg:g} (UNet batch {2 if args.cfg != 1 else 1}), {args.scheduler}, "
          f"{args.steps} timed steps after a 2-step warm-up")
    print(f"  device: {args.device} ({device}); dtype: {args.dtype}; torch {torch.__version__}; "
          f"diffusers {diffusers.__version__}; python {sys.version.split()[0]}")
    memory = ("torch.cuda.max_memory_allocated over warm-up + timed run (weights included)"
              if args.device == "cuda" else "process peak RSS over warm-up + timed run (VmHWM reset after "
                                            "building; Python, torch and weights included)")
    print(f"  peak memory: {memory}; one fresh process per row")
    print(f"  {'':2}{'setting':<32}{'s/step':>9}{'min s':>9}{'max s':>9}{'params M':>10}{'before MB':>11}"
          f"{'peak MB':>10}{'build s':>9}", flush=True)


def run_worker(setting: str, args: argparse.Namespace) -> dict | None:
    command = [sys.executable, os.path.abspath(__file__), "--worker", setting, "--size", f"{args.width}x{args.height}",
               "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype,
               "--threads", str(args.threads), "--scheduler", args.scheduler, "--cfg", str(args.cfg)]
    if args.real:
        command.append("--real")
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no error output)"])[-1]
        print(f"  {setting} {SETTINGS[setting]:<30}  FAILED (exit {done.returncode}): {tail}", flush=True)
        return None
    row = json.loads(lines[-1][len(RESULT_TAG):])
    mark = "" if row["peak_scope"] == "reset" else "*"
    print(f"  {setting} {SETTINGS[setting]:<30}{row['median']:>9.4f}{row['min']:>9.4f}{row['max']:>9.4f}"
          f"{row['params'] / 1e6:>10.1f}{row['before_mb']:>11.0f}{row['peak_mb']:>9.0f}{mark:1}{row['build_s']:>9.1f}",
          flush=True)
    if mark:
        print("    * VmHWM could not be reset: ru_maxrss of the whole process, building included")
    return row


# -- the worker: build one setting, warm up, time it -----------------------------------------------------

def measure(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    start = time.perf_counter()
    run, params = build_setting(args.worker, real=args.real, device=device, dtype=dtype,
                                size=(args.height, args.width), scheduler=args.scheduler, cfg=args.cfg)
    build_s = time.perf_counter() - start
    stamps: list[float] = []

    def stamp() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    # The peak counter starts before the warm-up: on the CPU the allocator keeps what the first run
    # touched, so a reset after it would hide the sampling's own memory.
    before_mb, peak_scope = start_peak_memory(device)
    run(2, None)  # warm-up: kernels, allocator, lazy inits
    run(args.steps, stamp)
    peak_mb = read_peak_memory(device, peak_scope)
    durations = [b - a for a, b in zip(stamps, stamps[1:])]
    if len(durations) != args.steps - 1:
        raise RuntimeError(f"expected {args.steps} step callbacks, got {len(stamps)}")
    return {"median": statistics.median(durations), "min": min(durations), "max": max(durations),
            "params": params, "before_mb": before_mb, "peak_mb": peak_mb, "peak_scope": peak_scope,
            "build_s": build_s}


def build_setting(setting: str, *, real: bool, device, dtype, size, scheduler: str, cfg: float):
    """(run(steps, stamp), parameter count of the networks that run at each step) for one row."""
    import torch

    torch.manual_seed(0)
    with torch.device(device):  # built in place: real-size float32 copies on the CPU would cost ~15 GB
        unet = build_unet(real).to(dtype).eval()
        controlnet = adapter = image_encoder = diffusers_controlnet = None
        if setting in "bd":
            controlnet = build_controlnet(unet, real).to(dtype).eval()
        if setting in "cd":
            adapter, image_encoder = build_adapter(unet.config, real)
            adapter, image_encoder = adapter.to(dtype).eval(), image_encoder.to(dtype).eval()
        if setting == "f":
            from diffusers import ControlNetModel

            diffusers_controlnet = ControlNetModel.from_unet(unet).to(dtype).eval()
    inputs = make_inputs(unet.config, size, device, dtype)
    networks = [m for m in (unet, controlnet, adapter, diffusers_controlnet) if m is not None]
    params = sum(p.numel() for m in networks for p in m.parameters())
    if setting in "ef":
        return diffusers_runner(unet, diffusers_controlnet, inputs, size, scheduler, cfg), params
    return stage2_runner(unet, controlnet, adapter, image_encoder, inputs, scheduler, cfg), params


def build_unet(real: bool):
    if not real:
        from comfyui_diffbody.testing.tiny.stage2 import build_tiny_sdxl_unet

        return build_tiny_sdxl_unet(seed=0)
    from diffusers import UNet2DConditionModel

    from comfyui_diffbody.models.unet_layout import SDXL_UNET_CONFIG

    return UNet2DConditionModel(**SDXL_UNET_CONFIG)


def build_controlnet(unet, real: bool):
    if not real:
        from comfyui_diffbody.testing.tiny.stage2 import build_tiny_multiprior

        return build_tiny_multiprior(seed=0, unet=unet)
    from comfyui_diffbody.models.multiprior_controlnet import MultiPriorControlNet

    return MultiPriorControlNet.from_unet(unet)  # zero convs: costs the same as trained ones


def build_adapter(unet_config, real: bool):
    """(colour adapter, image encoder): the tiny pair, or Plus XL sizes with random CLIP ViT-H features
    (the image encoder runs once per image, outside the step, so it is not built at real size)."""
    if not real:
        from comfyui_diffbody.testing.tiny.stage2 import build_tiny_clip_vision, build_tiny_colour_adapter

        return build_tiny_colour_adapter(dict(unet_config), seed=0), build_tiny_clip_vision(seed=0)
    from comfyui_diffbody.models.colour_adapter import ColourAdapter, ColourAdapterConfig

    config = ColourAdapterConfig.plus_xl()
    return ColourAdapter(config), random_clip_features(config.embedding_dim)


def make_inputs(unet_config, size, device, dtype) -> dict:
    """Random prompt embeddings of SDXL's shapes, four prior images and I_res, from a seeded CPU generator."""
    import torch

    generator = torch.Generator().manual_seed(0)
    height, width = size
    pooled_width = unet_config.projection_class_embeddings_input_dim - 6 * unet_config.addition_time_embed_dim

    def embeds():
        context = torch.randn(1, 77, unet_config.cross_attention_dim, generator=generator)
        return context.to(device, dtype), torch.randn(1, pooled_width, generator=generator).to(device, dtype)

    def image():
        return torch.rand(1, 3, height, width, generator=generator).to(device)

    from comfyui_diffbody.models.multiprior_controlnet import PRIORS

    return {"prompt": embeds(), "negative": embeds(), "priors": {name: image() for name in PRIORS},
            "restored": image()}


def stage2_runner(unet, controlnet, adapter, image_encoder, inputs, scheduler, cfg):
    from comfyui_diffbody.models.multiprior_controlnet import PRIORS
    from comfyui_diffbody.pipelines.stage2 import Stage2Pipeline, Stage2Settings

    pipeline = Stage2Pipeline(unet, vae=None, text_encoders=None, controlnet=controlnet, adapter=adapter,
                              image_encoder=image_encoder)
    strengths = {name: 1.0 for name in PRIORS} if controlnet is not None else {}
    priors = inputs["priors"] if controlnet is not None else {"image": inputs["priors"]["image"]}

    def run(steps: int, stamp) -> None:
        settings = Stage2Settings(scheduler=scheduler, steps=steps, cfg=cfg, strengths=strengths,
                                  adapter_weight=1.0 if adapter is not None else 0.0)
        progress = (lambda done, total: stamp()) if stamp is not None else None
        pipeline.sample_latents(priors, inputs["restored"] if adapter is not None else None, settings,
                                prompt_embeds=inputs["prompt"], negative_prompt_embeds=inputs["negative"],
                                progress=progress)

    return run


def diffusers_runner(unet, controlnet, inputs, size, scheduler, cfg):
    """diffusers' own SDXL (ControlNet) pipeline, no text encoders or VAE (embeddings given, latents out)."""
    import torch
    from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline

    from comfyui_diffbody.pipelines.sampling import make_scheduler
    from comfyui_diffbody.pipelines.stage2 import SDXL_TRAINING_SCHEDULE

    parts = dict(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
                 scheduler=make_scheduler(scheduler, SDXL_TRAINING_SCHEDULE))
    if controlnet is None:
        pipeline = StableDiffusionXLPipeline(**parts, add_watermarker=False)
        extra = {}
    else:
        pipeline = StableDiffusionXLControlNetPipeline(**parts, controlnet=controlnet, add_watermarker=False)
        extra = {"image": inputs["priors"]["image"]}
    pipeline.set_progress_bar_config(disable=True)
    (context, pooled), (neg_context, neg_pooled) = inputs["prompt"], inputs["negative"]
    height, width = size

    def run(steps: int, stamp) -> None:
        def on_step_end(pipe, i, t, kwargs):
            if stamp is not None:
                stamp()
            return kwargs

        with torch.no_grad():
            pipeline(prompt_embeds=context, pooled_prompt_embeds=pooled, negative_prompt_embeds=neg_context,
                     negative_pooled_prompt_embeds=neg_pooled, height=height, width=width,
                     num_inference_steps=steps, guidance_scale=cfg, output_type="latent",
                     generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step_end, **extra)

    return run


def random_clip_features(width: int):
    """Stands in for CLIP ViT-H's image encoder at real size: what Stage2Pipeline reads of it
    (`config.image_size`, a parameter for device and dtype, `hidden_states[-2]`), returning random
    penultimate features (B, 257, width). The class is made here because torch is imported lazily."""
    import types

    import torch

    class RandomClipFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = types.SimpleNamespace(image_size=224)
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, pixel_values, output_hidden_states=True):
            generator = torch.Generator().manual_seed(1)
            features = torch.randn(pixel_values.shape[0], CLIP_TOKENS, width, generator=generator)
            features = features.to(self.anchor.device, self.anchor.dtype)
            return types.SimpleNamespace(hidden_states=(features, features))

    return RandomClipFeatures()


# -- memory ---------------------------------------------------------------------------------------------

def start_peak_memory(device) -> tuple[float, str]:
    """Reset the peak counter; returns (memory in use now in MB, 'reset' or 'whole process')."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / MB, "reset"
    scope = "reset" if reset_peak_rss() else "whole process"
    return proc_status_mb("VmRSS"), scope


def read_peak_memory(device, scope: str) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / MB
    if scope == "reset":
        return proc_status_mb("VmHWM")
    return whole_process_peak_mb()


if __name__ == "__main__":
    main()
