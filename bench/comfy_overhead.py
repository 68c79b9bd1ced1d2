"""Per-step cost of DiffBody's stage 2 in ComfyUI's own sampler against ComfyUI's stock path, in interleaved
A/B runs (issue 16's CPU overhead figure), at SDXL's real size with random weights.

    A  SDXL + ComfyUI's stock ControlNet (core's ControlNet class and network, one image hint)
    B  SDXL + DiffBody's multi-prior ControlNet (four priors) + the colour adapter (every attn2 layer)

Both ControlNets are core's `cldm.ControlNet` on the same SDXL encoder weights (the tensors are shared, so a
CPU with 24 GB holds the float32 run); they differ in what they are: A's hint block runs on its full-size
hint at every step, B's c_g is made once per image; B adds the adapter's attention over 16 image tokens in
each of the 70 cross-attentions. The adapter's tokens are random (CLIP is not run: it is once per image).

Pairs alternate A, B, A, B, ... after a warm-up of each; each run samples `--steps` steps and its s/step is
the median of the steps after the first (the first carries c_g and the per-run set-up). Printed: every pair,
the ratio B/A per pair with its median and spread, and FLOPs per step of A and B. FLOPs: torch's
FlopCounterMode for matmuls and convolutions, plus every attention call counted as 4*B*heads*Lq*Lk*d (torch 2.x
has no FLOP formula for the CPU attention kernel). Our extra FLOPs per step are then

    F_B - F_A = F_ip_attention - F_hint_block, with
    F_ip_attention = sum over the attn2 layers of 4 * B * Lq * 16 * C   (C: the layer's width, Lq: its tokens)
    F_hint_block   = the stock hint block's convolutions on the H x W hint, at every step.

    python bench/comfy_overhead.py --dtype float32 --size 128 --pairs 6
    python bench/comfy_overhead.py --dtype bfloat16   # weights in bf16, computed in ComfyUI's manual cast
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

IP_TOKENS = 16  # IP-Adapter Plus XL's image tokens


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("DIFFBODY_COMFYUI_DIR"), help="ComfyUI folder")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is not timed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return parser.parse_args(argv)


def shared_encoder(model) -> dict[str, torch.Tensor]:
    """The SDXL UNet's encoder tensors under core's ControlNet names (the same names: input_blocks, middle_block,
    time_embed, label_emb)."""
    keep = ("input_blocks.", "middle_block.", "time_embed.", "label_emb.")
    return {k: v for k, v in model.model.diffusion_model.state_dict().items() if k.startswith(keep)}


def random_rest(network, given: dict, dtype) -> dict[str, torch.Tensor]:
    """Random values for the network's tensors not in `given` (zero convs, hint block, c_g's module)."""
    from comfyui_diffbody.testing.realsize.weights import random_tensor

    return {k: random_tensor(k, v).to(dtype) for k, v in network.state_dict().items() if k not in given}


def stock_control(model, encoder, dtype, load_device, manual_cast):
    """Core's ControlNet as its loader builds an SDXL one (config from the MODEL's, core's ops), encoder shared."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    config = {k: v for k, v in model.model.model_config.unet_config.items() if k not in ("out_channels", "dtype", "device", "operations")}
    operations = comfy.ops.pick_operations(dtype, manual_cast)
    with torch.device("meta"):
        network = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, dtype=dtype, operations=operations)
    network.load_state_dict({**encoder, **random_rest(network, encoder, dtype)}, strict=True, assign=True)
    return comfy.controlnet.ControlNet(network, load_device=load_device, manual_cast_dtype=manual_cast)


def our_control(encoder, stock, dtype, load_device, manual_cast):
    """Our native multi-prior ControlNet on the same encoder and zero-conv tensors as `stock`."""
    import comfy.ops

    from comfyui_diffbody.models.multiprior_controlnet import MultiPriorControlNetConfig
    from comfyui_diffbody.nodes.multiprior_native import MultiPriorControl, build_native_network

    config = MultiPriorControlNetConfig.sdxl()
    operations = comfy.ops.pick_operations(dtype, manual_cast, disable_fast_fp8=True)
    network = build_native_network(config, dtype, operations, torch.device("meta"))
    given = {**encoder, **{k: v for k, v in stock.control_model.state_dict().items()
                           if k.startswith(("zero_convs.", "middle_block_out."))}}
    network.load_state_dict({**given, **random_rest(network, given, dtype)}, strict=True, assign=True)
    return MultiPriorControl(network, config, load_device=load_device, manual_cast_dtype=manual_cast)


def adapted_model(model, dtype):
    """MODEL with the colour adapter (IP-Adapter Plus XL's real size, random values, random image tokens)."""
    from comfyui_diffbody.nodes import glue
    from comfyui_diffbody.nodes.stage2_native import patch_colour_adapter
    from comfyui_diffbody.testing.realsize.networks import module_from_spec
    from comfyui_diffbody.testing.realsize.stage2_files import meta_ip_adapter_plus_xl

    adapter = module_from_spec(meta_ip_adapter_plus_xl(), device="cpu", dtype=dtype)
    width = adapter.config.output_dim
    g = torch.Generator().manual_seed(0)
    cond, uncond = (torch.randn(1, IP_TOKENS, width, generator=g) for _ in range(2))
    return patch_colour_adapter(model, adapter, glue.wrap_for_memory_management(adapter), cond, uncond, 1.0, 0.0, 1.0)


def sdxl_model_in_place(comfyui_dir: str, dtype, manual_cast):
    """MODEL of sd_xl_base_1.0's UNet with the factory's values, each tensor made straight into the network (a
    state dict first would hold the UNet twice: 20 GB in float32)."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    from comfyui_diffbody.models.loading import LDM_UNET_PREFIX
    from comfyui_diffbody.testing.realsize.checkpoints import sdxl_checkpoint_spec
    from comfyui_diffbody.testing.realsize.weights import random_tensor

    spec = {k: v for k, v in sdxl_checkpoint_spec(comfyui_dir).items() if k.startswith(LDM_UNET_PREFIX)}
    model_config = comfy.supported_models.SDXL(comfy.model_detection.detect_unet_config(spec, LDM_UNET_PREFIX))
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model(spec, LDM_UNET_PREFIX)
    params = model.diffusion_model.state_dict()
    with torch.no_grad():
        for key, like in spec.items():
            params[key[len(LDM_UNET_PREFIX):]].copy_(random_tensor(key, like))
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def setups(args):
    import comfy.model_management
    import comfy_stage2 as cs

    dtype = getattr(torch, args.dtype)
    load_device = comfy.model_management.get_torch_device()
    manual_cast = comfy.model_management.unet_manual_cast(dtype, load_device)
    started = time.perf_counter()
    model = sdxl_model_in_place(args.comfyui, dtype, manual_cast)
    encoder = shared_encoder(model)
    stock = stock_control(model, encoder, dtype, load_device, manual_cast)
    ours = our_control(encoder, stock, dtype, load_device, manual_cast)
    g = torch.Generator().manual_seed(1)
    context, negative_context = (torch.randn(1, 77, 2048, generator=g) for _ in range(2))
    pooled, negative_pooled = (torch.randn(1, 1280, generator=g) for _ in range(2))
    positive, negative = cs.sdxl_conditioning(context, pooled, negative_context, negative_pooled)
    images = {name: torch.rand(1, args.size, args.size, 3, generator=g) for name in ("image", "pose", "depth", "normal")}
    a = (model, *cs.attach_stock_controlnet(positive, negative, stock, images["image"]))
    b = (adapted_model(model, dtype), *cs.attach_multiprior(positive, negative, ours, images))
    print(f"built in {time.perf_counter() - started:.0f} s: weights {args.dtype}, compute "
          f"{manual_cast or dtype}, {torch.get_num_threads()} threads", flush=True)
    return a, b


def flops_per_step(setup, size: int) -> float:
    """FLOPs of one sampling step (CFG batch of 2): FlopCounterMode plus every attention call, of a 2-step run
    minus a 1-step run (c_g, once per run, cancels out), after a run that makes what is kept per image (the
    adapter's keys and values of the image tokens), so neither counted run makes it."""
    run_flops(setup, size, 1)
    return run_flops(setup, size, 2) - run_flops(setup, size, 1)


def run_flops(setup, size: int, steps: int) -> float:
    import comfy.ldm.modules.attention as attention
    import comfy_stage2 as cs
    from torch.utils.flop_counter import FlopCounterMode

    original, counted = attention.optimized_attention, []

    def counting(q, k, v, heads, *a, **kw):
        batch, lq, width = q.shape
        counted.append(4 * batch * lq * k.shape[1] * width)  # QK^T and AV, heads * d = width
        return original(q, k, v, heads, *a, **kw)

    attention.optimized_attention = counting
    try:
        with FlopCounterMode(display=False) as counter:
            cs.time_steps(*setup, size=(size, size), steps=steps)
    finally:
        attention.optimized_attention = original
    return float(counter.get_total_flops()) + sum(counted)


def seconds_per_step(setup, args) -> float:
    import comfy_stage2 as cs

    return statistics.median(cs.time_steps(*setup, size=(args.size, args.size), steps=args.steps))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import comfy_stage2 as cs

    cs.import_comfy(args.comfyui, "cpu")
    a, b = setups(args)
    flops = {"A": flops_per_step(a, args.size), "B": flops_per_step(b, args.size)}
    for setup in (a, b):  # warm-up
        seconds_per_step(setup, args)
    ratios = []
    for pair in range(args.pairs):
        t_a, t_b = seconds_per_step(a, args), seconds_per_step(b, args)
        ratios.append(t_b / t_a)
        print(f"pair {pair + 1}: A {t_a:.3f} s/step  B {t_b:.3f} s/step  B/A {t_b / t_a:.3f}", flush=True)
    flop_ratio = flops["B"] / flops["A"]
    median = statistics.median(ratios)
    print(f"\n{args.dtype}, {args.size}x{args.size}, {args.pairs} pairs of {args.steps - 1} timed steps")
    print(f"FLOPs per step: A {flops['A'] / 1e12:.4f} T, B {flops['B'] / 1e12:.4f} T, B/A {flop_ratio:.4f}")
    print(f"time B/A: median {median:.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
    print(f"time ratio over FLOP ratio: {median / flop_ratio:.3f} (accepted: <= 1.05)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
