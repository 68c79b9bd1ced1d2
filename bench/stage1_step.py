"""Seconds per stage-1 sampling step, and peak memory, for the joint UNet + ControlNet.

One step = one ControlNet call and one joint-UNet call on the three stacked branches, plus the
scheduler update; with classifier-free guidance (cfg != 1) both run on a doubled batch. VAE and text
encoding are not included (they run once per image, not per step).

    python bench/stage1_step.py                 # tiny config, CPU, float32
    python bench/stage1_step.py --real          # SD 2.1-base sizes, random weights, fp16 on CUDA

Peak memory: on CUDA, torch.cuda.max_memory_allocated() over the sampling (weights included, since
they sit on the device); on the CPU, the process's resident-set high-water mark (VmHWM), reset before
each setting through /proc/self/clear_refs, so it covers that setting's sampling plus whatever the
process already holds (Python, torch, the weights). Where the reset is refused, the column shows
getrusage's whole-process peak and says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from process_memory import proc_status_mb, reset_peak_rss, whole_process_peak_mb

MB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true",
                        help="SD 2.1-base sizes (random weights), fp16 on CUDA; skipped without CUDA")
    parser.add_argument("--size", default="512x1024", help="canvas WIDTHxHEIGHT in px (default: the paper's "
                                                           "512 wide x 1024 tall bucket, latents 64x128)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 real, 3 tiny)")
    parser.add_argument("--scheduler", default="ddpm")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    import torch

    if args.real and not torch.cuda.is_available():
        print("--real needs a CUDA GPU (SD 2.1-base sizes in fp16); none found, skipped.")
        return
    device = torch.device("cuda" if args.real else "cpu")
    dtype = torch.float16 if args.real else torch.float32
    steps = args.steps or (5 if args.real else 3)
    width, height = (int(v) for v in args.size.lower().split("x"))
    if width % 64 or height % 64:
        sys.exit("--size must be multiples of 64 px (the sampler's canvas)")

    unet, controlnet, build_s = build_networks(real=args.real, device=device, dtype=dtype)
    label = "SD 2.1-base sizes (random weights)" if args.real else "tiny config"
    print(f"stage-1 step: {label}, {device.type} {str(dtype).removeprefix('torch.')}, {width}x{height} px "
          f"(latents {width // 8}x{height // 8}), batch {args.batch}, {args.scheduler}")
    print(f"  networks: joint UNet {count(unet) / 1e6:.1f} M params, ControlNet {count(controlnet) / 1e6:.1f} M, "
          f"built in {build_s:.1f} s; torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if device.type == "cuda":
        print(f"  device: {torch.cuda.get_device_name(device)}")
    print(f"  {'setting':<24}{'s/step':>10}{'min':>9}{'max':>9}{'peak MB':>11}")
    for cfg, with_control in ((7.5, True), (1.0, True), (7.5, False)):
        row = measure(unet, controlnet if with_control else None, cfg=cfg, steps=steps, batch=args.batch,
                      latent=(height // 8, width // 8), scheduler=args.scheduler, device=device, dtype=dtype)
        setting = f"cfg {cfg:g}, " + ("ControlNet" if with_control else "no ControlNet")
        print(f"  {setting:<24}{row['median']:>10.3f}{row['min']:>9.3f}{row['max']:>9.3f}{row['peak_mb']:>11.0f}"
              f"{row['scope']}")


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_networks(*, real: bool, device, dtype):
    import torch

    from comfyui_diffbody.models.joint_unet import JointUNet, JointUNetConfig
    from comfyui_diffbody.models.stage1_controlnet import Stage1ControlNet

    start = time.perf_counter()
    config = JointUNetConfig.sd21_base() if real else JointUNetConfig.tiny()
    torch.manual_seed(0)
    with torch.device(device):  # built in place: the real sizes need ~5 GB as float32 on the CPU otherwise
        unet = JointUNet(config).to(dtype).eval()
    controlnet = Stage1ControlNet.from_unet(unet).eval()
    with torch.no_grad():  # zero convs would make the ControlNet's residuals free to add; give them weights
        for conv in (controlnet.image_latent_in, controlnet.controlnet_mid_block, *controlnet.controlnet_down_blocks):
            conv.weight.normal_(0, 0.01)
    return unet, controlnet, time.perf_counter() - start


def make_inputs(unet, controlnet, *, batch, latent, device) -> dict:
    """sample_joint's inputs: seeded random latents and text embeddings (and the ControlNet with its image latent)."""
    import torch

    width = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(0)
    inputs = dict(pose_latent=torch.randn(batch, 4, *latent, generator=generator).to(device),
                  context=torch.randn(batch, 77, width, generator=generator).to(device),
                  uncond_context=torch.randn(batch, 77, width, generator=generator).to(device))
    if controlnet is not None:
        inputs.update(image_latent=torch.randn(batch, 4, *latent, generator=generator).to(device),
                      controlnet=controlnet)
    return inputs


def measure(unet, controlnet, *, cfg, steps, batch, latent, scheduler, device, dtype) -> dict:
    import torch

    from comfyui_diffbody.pipelines.stage1 import sample_joint

    inputs = make_inputs(unet, controlnet, batch=batch, latent=latent, device=device)
    sample_joint(unet, **inputs, steps=1, scheduler=scheduler, cfg=cfg, dtype=dtype)  # warm-up (kernels, caches)

    stamps = []

    def stamp(done, total):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    resettable = device.type == "cpu" and reset_peak_rss()
    stamps.append(time.perf_counter())
    sample_joint(unet, **inputs, steps=steps, scheduler=scheduler, cfg=cfg, dtype=dtype, progress=stamp)
    durations = [b - a for a, b in zip(stamps, stamps[1:])]
    if device.type == "cuda":
        peak, scope = torch.cuda.max_memory_allocated(device) / MB, ""
    elif resettable:
        peak, scope = proc_status_mb("VmHWM"), ""
    else:
        peak, scope = whole_process_peak_mb(), " (whole process)"
    return {"median": statistics.median(durations), "min": min(durations), "max": max(durations), "peak_mb": peak,
            "scope": scope}


if __name__ == "__main__":
    main()
