"""Cross-host test of stage 2: ComfyUI's own sampler with the pack's MultiPriorControl and ColourAttention
(attached by the real nodes) against the diffusers path, on the same tiny SDXL-layout weights.

A short native run (comfy.sample.sample, euler, sgm_uniform: every step sits on a training timestep, so
both hosts give the networks the same integer timestep) records what reaches our modules: the
ControlNet's inputs and get_control's result at every model call, and for every cross-attention layer
the normed hidden states entering attn2 (pre-hook on to_q), its context (pre-hook on to_k) and its output
(hook on to_out) while the adapter patch is active. The same quantities are then recomputed with the
diffusers-side code from the raw inputs (latent, sigma, prompt embeds, pooled embeds + time ids, prior
images at exactly latent*8 size, the restored image). Everything ComfyUI-side runs in a subprocess, so
ComfyUI's modules never enter the pytest process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TOLERANCE = 1e-4  # float32 on the CPU; the measured differences are printed in the RESULT line
EFFECT = 1e-3     # a change smaller than this would not show that the control / adapter did anything

NATIVE_CHECK = r'''
import json, sys
comfy_dir, tests_dir, work = sys.argv[1:4]
sys.path.insert(0, comfy_dir)
sys.path.insert(0, tests_dir)
import torch
torch.set_num_threads(1)
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.controlnet, comfy.model_detection, comfy.model_management, comfy.model_patcher, comfy.sample
import comfy.supported_models
import comfy.utils
from diffusers import EulerDiscreteScheduler
from comfy_test_nodes.tiny_stand_ins import TinyCLIPVision  # CLIP_VISION's interface over the tiny encoder
from comfyui_diffbody.models.colour_adapter import load_colour_adapter
from comfyui_diffbody.models.multiprior_controlnet import MultiPriorControlNet
from comfyui_diffbody.models.stage2_weights import load_multiprior, read_multiprior
from comfyui_diffbody.models.unet_layout import comfy_attn2_locations
from comfyui_diffbody.nodes import glue
from comfyui_diffbody.nodes.stage2 import ApplyColourAdapter, ApplyMultiPriorControlNet, ColourAdapterFile
from comfyui_diffbody.nodes.stage2_native import ColourAttention
from comfyui_diffbody.nodes.multiprior_native import load_multiprior_control, multiprior_control
from comfyui_diffbody.pipelines.colour_attention import colour_adapter_installed
from comfyui_diffbody.pipelines.stage2 import SDXL_TRAINING_SCHEDULE, Stage2Pipeline, active_at
from comfyui_diffbody.testing.tiny import stage2 as tiny

SIZE, STEPS, CFG = 64, 3, 4.0
STRENGTHS = {"image": 1.0, "pose": 0.5, "depth": 0.75, "normal": 0.0}
CONTROL_STRENGTH, ADAPTER_WEIGHT = 0.8, 0.7
POSITIVE_SIZES = {"width": 96, "height": 80, "crop_w": 8, "crop_h": 4, "target_width": 64, "target_height": 72}

# -- weights: the same tiny SDXL for both hosts -----------------------------------------------------------
unet_file = tiny.write_tiny_sdxl(None, work + "/tiny_sdxl_unet.safetensors", seed=0)["single_file"]
controlnet_file = tiny.write_tiny_multiprior(work + "/tiny_cn.safetensors", seed=0)
adapter_file = tiny.write_tiny_ip_adapter_plus_xl(work + "/tiny_plus.safetensors", seed=0)
clip_vision = tiny.build_tiny_clip_vision(seed=0)


def comfy_model():
    """MODEL as tests/comfy_test_nodes' TinySDXLLoader builds it (ComfyUI's detection and SDXL class)."""
    prefix = "model.diffusion_model."
    sd = comfy.utils.load_torch_file(unet_file)
    model_config = comfy.supported_models.SDXL(comfy.model_detection.detect_unet_config(sd, prefix))
    model = model_config.get_model(sd, prefix)
    model.load_model_weights(sd, prefix)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def control_net():
    """CONTROL_NET as MultiPriorControlNetLoader.load returns it."""
    return load_multiprior_control(controlnet_file)


g = torch.Generator().manual_seed(7)
priors_bhwc = {name: torch.rand(1, SIZE, SIZE, 3, generator=g) for name in STRENGTHS}  # IMAGE, latent*8
restored_bhwc = torch.rand(1, SIZE, SIZE, 3, generator=g)
raw = {"positive": (torch.randn(1, 77, tiny.CONTEXT_DIM, generator=g), torch.randn(1, tiny.POOLED_DIM, generator=g)),
       "negative": (torch.randn(1, 77, tiny.CONTEXT_DIM, generator=g), torch.randn(1, tiny.POOLED_DIM, generator=g))}
positive = [[raw["positive"][0], {"pooled_output": raw["positive"][1], **POSITIVE_SIZES}]]
negative = [[raw["negative"][0], {"pooled_output": raw["negative"][1]}]]  # ComfyUI's defaults: latent * 8
base = comfy_model()
cn_node, adapter_node = ApplyMultiPriorControlNet(), ApplyColourAdapter()


def apply_control(pos, neg, control, strength=CONTROL_STRENGTH, strengths=STRENGTHS, start=0.0, end=1.0):
    p = priors_bhwc
    return cn_node.apply(pos, neg, control, p["image"], p["pose"], p["depth"], p["normal"], strengths["image"],
                         strengths["pose"], strengths["depth"], strengths["normal"], strength, start, end)


def comfy_attn2(unet, location):
    block, number, index = location
    blocks = unet.middle_block if block == "middle" else {"input": unet.input_blocks,
                                                         "output": unet.output_blocks}[block][number]
    transformer = next(m for m in blocks if hasattr(m, "transformer_blocks"))
    return transformer.transformer_blocks[index].attn2


def clone_tree(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: clone_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clone_tree(v) for v in value]
    return value


def native_run(control_range, adapter_range):
    """Sample natively; returns per model call: sigma, cond_or_uncond, what MultiPriorControl got and gave,
    and per attn2 layer its normed input, context and output."""
    control = control_net()
    pos, neg = apply_control(positive, negative, control, start=control_range[0], end=control_range[1])
    attached = pos[0][1]["control"]
    model, = adapter_node.apply(base, ColourAdapterFile(adapter_file), TinyCLIPVision(clip_vision), restored_bhwc,
                                ADAPTER_WEIGHT, adapter_range[0], adapter_range[1])
    calls = []

    def wrapper(apply_model, args):
        calls.append({"sigma": args["timestep"].clone(), "cond_or_uncond": list(args["cond_or_uncond"]),
                      "x": args["input"].clone(), "control_called": False, "attn": {}})
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(wrapper)
    get_control = attached.get_control
    network_inputs, control_records = [], []

    def recording_get_control(x_noisy, t, cond, batched_number, transformer_options):
        out = get_control(x_noisy, t, cond, batched_number, transformer_options)
        # get_control runs just before the model function (the wrapper) of the same call
        control_records.append({"call": len(calls), "x": x_noisy.clone(), "t": t.clone(), "control": clone_tree(out),
                                "network": network_inputs.pop() if network_inputs else None})
        return out

    attached.get_control = recording_get_control

    def record_network(module, args, kwargs, output):
        # control_merge multiplies the outputs in place by the strength: keep copies of what came out
        network_inputs.append({"args": clone_tree([kwargs[k] for k in ("x", "timesteps", "context", "y", "hint")]),
                               "output": clone_tree(output)})

    hook = attached.control_model.register_forward_hook(record_network, with_kwargs=True)
    locations = comfy_attn2_locations(model.model.model_config.unet_config)
    handles = []
    for index, location in enumerate(locations):
        attn2 = comfy_attn2(model.model.diffusion_model, location)

        def keep(key, index=index):
            def pre(module, args):
                calls[-1]["attn"].setdefault(index, {})[key] = args[0].detach().clone()
            return pre

        def keep_out(module, args, output, index=index):
            calls[-1]["attn"][index]["out"] = output.detach().clone()

        handles += [attn2.to_q.register_forward_pre_hook(keep("hidden")),
                    attn2.to_k.register_forward_pre_hook(keep("context")),
                    attn2.to_out.register_forward_hook(keep_out)]
    latent = torch.zeros(1, 4, SIZE // 8, SIZE // 8)
    noise = comfy.sample.prepare_noise(latent, 5)
    comfy.sample.sample(model, noise, STEPS, CFG, "euler", "sgm_uniform", pos, neg, latent, seed=5,
                        disable_pbar=True)
    hook.remove()
    for handle in handles:
        handle.remove()
    for record in control_records:
        call = calls[record["call"]]
        assert torch.equal(call["x"], record["x"]) and torch.equal(call["sigma"], record["t"])
        call.update(control_called=True, control=record["control"], network=record["network"])
    patches = [p for p in model.model_options["transformer_options"]["patches_replace"]["attn2"].values()]
    assert all(isinstance(p, ColourAttention) for p in patches) and len(patches) == len(locations)
    return calls, patches[0]


# -- the diffusers side -------------------------------------------------------------------------------------

unet = tiny.build_tiny_sdxl_unet(seed=0)  # the weights write_tiny_sdxl put into the single file
d_controlnet = load_multiprior(controlnet_file)
d_adapter = load_colour_adapter(adapter_file, tiny.tiny_sdxl_unet_config())
pipe = Stage2Pipeline(unet, None, None, d_controlnet, d_adapter, clip_vision)
priors_bchw = {name: image.movedim(-1, 1) for name, image in priors_bhwc.items()}
with torch.no_grad():
    c_g = d_controlnet.embed_priors(priors_bchw, STRENGTHS)
    pipeline_tokens = dict(zip(("uncond", "cond"), pipe._adapter_tokens(restored_bhwc.movedim(-1, 1), True).chunk(2)))
scheduler = EulerDiscreteScheduler(**SDXL_TRAINING_SCHEDULE)
train_log_sigmas = (((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5).log()
time_ids = {"positive": [POSITIVE_SIZES[k] for k in ("height", "width", "crop_h", "crop_w", "target_height",
                                                       "target_width")],
            "negative": [SIZE, SIZE, 0, 0, SIZE, SIZE]}
adapter_layers = [unet.get_submodule(name.rsplit(".processor", 1)[0]) for name in d_adapter.layer_names()]


def diffusers_timestep(sigma):
    """The training timestep whose sigma (diffusers' schedule) is `sigma`, and how far off the grid it is."""
    distance = (sigma.log() - train_log_sigmas).abs()
    return distance.argmin().float(), distance.min().item()


def added_vector(kind):
    """SDXL's y the diffusers way: pooled embeds + the time ids ComfyUI was given for that conditioning."""
    return MultiPriorControlNet.sdxl_added_vector(raw[kind][1], torch.tensor([time_ids[kind]], dtype=torch.float32))


def per_chunk(cond_or_uncond, positive_value, negative_value):
    return torch.cat([negative_value if c == 1 else positive_value for c in cond_or_uncond])


def diff(a, b):
    return (a - b).abs().max().item()


def compare(calls, control_range, adapter_range, tokens):
    """Max differences ComfyUI vs diffusers over all calls, and which steps each part was active in."""
    r = dict.fromkeys(("control", "x_in", "timestep", "y", "context", "c_g", "control_effect", "attn", "attn_cond",
                       "attn_uncond", "attn_effect", "off_grid"), 0.0)
    r.update({key: [] for key in ("control_called", "control_active", "control_expected", "adapter_expected",
                                  "timesteps", "cond_or_uncond", "attn_layers_seen")})
    with torch.no_grad():
        for call in calls:
            sigma, order = call["sigma"], call["cond_or_uncond"]
            t, off = diffusers_timestep(sigma[0])
            r["off_grid"] = max(r["off_grid"], off)
            r["timesteps"].append(t.item())
            r["cond_or_uncond"].append(order)
            batch = len(order)
            # diffusers' EulerDiscreteScheduler.scale_model_input: x / sqrt(sigma^2 + 1)
            x_in = call["x"] / (sigma[:, None, None, None] ** 2 + 1) ** 0.5
            context = per_chunk(order, raw["positive"][0], raw["negative"][0])
            y = per_chunk(order, added_vector("positive"), added_vector("negative"))
            control_on = active_at(t, *control_range)
            r["control_expected"].append(control_on)
            r["control_called"].append(call["control_called"])
            r["control_active"].append(call.get("control") is not None)
            if control_on and call["control"] is not None:
                down, mid = d_controlnet(x_in, t.expand(batch), context, y, c_g, CONTROL_STRENGTH)
                got = call["control"]
                r["control"] = max([r["control"], diff(got["middle"][0], mid)] +
                                   [diff(a, b) for a, b in zip(got["output"], down, strict=True)])
                r["control_effect"] = max([r["control_effect"]] + [d.abs().max().item() for d in down + [mid]])
                sample, timestep, ctx, got_y, embedding = call["network"]["args"]
                r["x_in"] = max(r["x_in"], diff(sample, x_in))
                r["timestep"] = max(r["timestep"], diff(timestep, t.expand(batch)))
                r["y"] = max(r["y"], diff(got_y, y))
                r["context"] = max(r["context"], diff(ctx, context))
                r["c_g"] = max(r["c_g"], diff(embedding, c_g))
            adapter_on = active_at(t, *adapter_range)
            r["adapter_expected"].append(adapter_on)
            r["attn_layers_seen"].append(sorted(call["attn"]))
            with colour_adapter_installed(unet, d_adapter) as state:
                for index, seen in call["attn"].items():
                    state.tokens = per_chunk(order, tokens["cond"], tokens["uncond"])
                    state.weight = ADAPTER_WEIGHT if adapter_on else 0.0
                    ours = adapter_layers[index](seen["hidden"], encoder_hidden_states=seen["context"])
                    r["attn"] = max(r["attn"], diff(seen["out"], ours))
                    for c, got_chunk, our_chunk in zip(order, seen["out"].chunk(batch), ours.chunk(batch)):
                        key = "attn_uncond" if c == 1 else "attn_cond"
                        r[key] = max(r[key], diff(got_chunk, our_chunk))
                    if adapter_on:
                        state.weight = 0.0
                        plain = adapter_layers[index](seen["hidden"], encoder_hidden_states=seen["context"])
                        r["attn_effect"] = max(r["attn_effect"], diff(ours, plain))
    return r


out = {}
calls, patch = native_run((0.0, 1.0), (0.0, 1.0))
comfy_tokens = {"cond": patch.run.cond_tokens, "uncond": patch.run.uncond_tokens}
out["full"] = compare(calls, (0.0, 1.0), (0.0, 1.0), comfy_tokens)
out["full_pipeline_tokens"] = compare(calls, (0.0, 1.0), (0.0, 1.0), pipeline_tokens)
out["tokens_cond"] = diff(comfy_tokens["cond"], pipeline_tokens["cond"])
out["tokens_uncond"] = diff(comfy_tokens["uncond"], pipeline_tokens["uncond"])
window = (0.2, 0.5)  # (1 - 0.5) * 999 <= t <= (1 - 0.2) * 999: leaves out the first and the last step
calls, _ = native_run(window, window)
out["window"] = compare(calls, window, window, comfy_tokens)

# -- nothing from MultiPriorControl at strength 0 / all prior strengths 0 ----------------------------------
out["node_identity"] = {
    "strength_0": all(a is b for a, b in zip(apply_control(positive, negative, control_net(), strength=0.0),
                                              (positive, negative))),
    "priors_0": all(a is b for a, b in zip(apply_control(positive, negative, control_net(),
                                                         strengths=dict.fromkeys(STRENGTHS, 0.0)),
                                           (positive, negative))),
    "adapter_0": adapter_node.apply(base, ColourAdapterFile(adapter_file), TinyCLIPVision(clip_vision),
                                    restored_bhwc, 0.0, 0.0, 1.0)[0] is base,
}
sampling = base.get_model_object("model_sampling")
x = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=g)
sigma = torch.tensor([3.0, 3.0])
cond = {"c_crossattn": torch.cat([raw["positive"][0], raw["negative"][0]]),
        "y": torch.cat([added_vector("positive"), added_vector("negative")])}
previous = control_net().set_priors(priors_bhwc, STRENGTHS, CONTROL_STRENGTH, (0.0, 1.0))
zero_cases = {"strength_0": (STRENGTHS, 0.0), "priors_0": (dict.fromkeys(STRENGTHS, 0.0), 1.0)}
out["zero"] = {}
for name, (strengths, strength) in zero_cases.items():
    for stacked in (False, True):
        c = control_net().set_priors(priors_bhwc, strengths, strength, (0.0, 1.0))
        runs = []
        c.control_model.register_forward_hook(lambda *a: runs.append(1))
        if stacked:
            c.set_previous_controlnet(previous)
        c.pre_run(base.model, sampling.percent_to_sigma)
        got = c.get_control(x, sigma, cond, 2, {})
        if stacked:
            expected = previous.get_control(x, sigma, cond, 2, {})
            same = got is not None and all(len(got[k]) == len(expected[k]) and all(
                torch.equal(a, b) for a, b in zip(got[k], expected[k])) for k in expected)
        else:
            same = got is None
        out["zero"][f"{name}{'_stacked' if stacked else ''}"] = {"returns_previous": same, "network_runs": len(runs)}
        c.cleanup()
# -- one call of the native ControlNet against the diffusers one, at a sigma of the training schedule -------
sigma_one = sampling.sigmas[500:501].expand(2)
t_one = sampling.timestep(sigma_one)
x_in_one = sampling.calculate_input(sigma_one, x)
with torch.no_grad():
    down_one, mid_one = d_controlnet(x_in_one, t_one, cond["c_crossattn"], cond["y"], c_g, CONTROL_STRENGTH)


def one_call(control):
    control.set_priors(priors_bhwc, STRENGTHS, CONTROL_STRENGTH, (0.0, 1.0))
    control.pre_run(base.model, sampling.percent_to_sigma)
    got = control.get_control(x, sigma_one, cond, 2, {})
    control.cleanup()
    return max([diff(got["middle"][0], mid_one)] + [diff(a, b) for a, b in zip(got["output"], down_one, strict=True)])


config, state_dict = read_multiprior(controlnet_file)
swapped = {k: state_dict[k.replace(".image.", ".@").replace(".pose.", ".image.").replace(".@", ".pose.")]
           if ".extractors." in k else v for k, v in state_dict.items()}
one = {"effect": max([d.abs().max().item() for d in down_one + [mid_one]]),
       "native": one_call(control_net()),
       "swapped_extractors": one_call(multiprior_control(config, swapped))}

# -- a per-GPU clone (core's multi-GPU sampling) has its own network and patcher --------------------------
original = control_net()
clone = original.deepclone_multigpu(torch.device("cpu"), autoregister=True)
before = one_call(original)
same_values = one_call(clone)
shared = {p.data_ptr() for p in original.control_model.parameters()} & \
         {p.data_ptr() for p in clone.control_model.parameters()}
with torch.no_grad():
    for p in clone.control_model.middle_block_out.parameters():
        p.zero_()
one["clone"] = {"registered": original.multigpu_clones.get(torch.device("cpu")) is clone,
                "own_patcher": clone.control_model_wrapped is not original.control_model_wrapped
                and clone.control_model_wrapped.model is clone.control_model,
                "shared_tensors": len(shared), "before": max(before, same_values),
                "original_unchanged_after_clone_edit": one_call(original) == before,
                "clone_after_edit": one_call(clone)}
one["core_classes"] = {"control": isinstance(original, comfy.controlnet.ControlNet),
                       "network": type(original.control_model).__module__ == "comfy.cldm.cldm",
                       "ops": type(original.control_model.input_blocks[0][0]).__module__ == "comfy.ops"}
out["one_call"] = one

# -- the colour adapter's attn2 patch composes with other packs' patches ------------------------------------
import comfy.ldm.modules.attention as comfy_attention


class Offset:
    """Another pack's attn2 replace patch: the attention plus a constant."""
    calls = 0

    def __call__(self, q, k, v, extra_options):
        Offset.calls += 1
        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"]) + 0.5


locations = comfy_attn2_locations(base.model.model_config.unet_config)
other = base.clone()
for location in locations:
    other.set_model_attn2_replace(Offset(), *location)


def layer_patch(model, index=1):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"][locations[index]]


attn2 = comfy_attn2(base.model.diffusion_model, locations[1])
q_in = torch.randn(2, 16, attn2.to_q.out_features, generator=g)
k_in, v_in = (torch.randn(2, 77, attn2.to_q.out_features, generator=g) for _ in range(2))
calls_seen = []


def options(**more):
    return {"n_heads": attn2.heads, "sigmas": torch.tensor([3.0, 3.0]), "cond_or_uncond": [0, 1],
            "attn_precision": None, **more}


def adapted(model):
    return adapter_node.apply(model, ColourAdapterFile(adapter_file), TinyCLIPVision(clip_vision), restored_bhwc,
                              ADAPTER_WEIGHT, 0.0, 1.0)[0]


def ip_term(out, q, k, v, extra_options, **kwargs):  # ComfyUI_IPAdapter_plus's callback signature
    calls_seen.append(kwargs["tag"])
    return torch.full_like(out, 0.25)


def override(func, *args, **kwargs):  # an attention override (SageAttention-style packs)
    calls_seen.append("override")
    return func(*args, **kwargs)


with torch.no_grad():
    alone = layer_patch(adapted(base))(q_in, k_in, v_in, options())
    on_other = layer_patch(adapted(other))(q_in, k_in, v_in, options())
    later = layer_patch(adapted(base))
    later.add(ip_term, sigma_start=100.0, sigma_end=0.0, tag="in window")
    later.add(ip_term, sigma_start=0.1, sigma_end=0.0, tag="outside")
    with_added = later(q_in, k_in, v_in, options())
    added_calls = list(calls_seen)
    calls_seen.clear()
    overridden = layer_patch(adapted(base))(q_in, k_in, v_in, options(optimized_attention_override=override))
twice = adapted(adapted(base))
out["compose"] = {"previous_kept": diff(on_other - alone, torch.full_like(alone, 0.5)), "previous_calls": Offset.calls,
                  "adapter_effect": diff(alone, comfy_attention.optimized_attention(q_in, k_in, v_in, attn2.heads)),
                  "added": diff(with_added - alone, torch.full_like(alone, 0.25)), "added_calls": added_calls,
                  "override_calls": calls_seen.count("override"), "override_unchanged": diff(overridden, alone),
                  "override_supported": hasattr(comfy_attention, "wrap_attn"),
                  "twice_wraps": layer_patch(twice).previous is not None and
                  len(twice.get_additional_models_with_key("diffbody_colour_adapter")) == 2}

# A clone of the adapted MODEL (what every later node that patches it makes) shares the adapter and its tokens:
# ComfyUI 0.3.75's ModelPatcher.clone() deep-copies model_options, patches included.
adapted, = adapter_node.apply(base, ColourAdapterFile(adapter_file), TinyCLIPVision(clip_vision), restored_bhwc,
                              ADAPTER_WEIGHT, 0.0, 1.0)
originals = list(adapted.model_options["transformer_options"]["patches_replace"]["attn2"].values())
copies = list(adapted.clone().model_options["transformer_options"]["patches_replace"]["attn2"].values())
out["clone_shares_adapter"] = all(c.run is o.run and c is not o
                                  for c, o in zip(copies, originals)) and len(copies) == len(originals) > 0
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    from comfy_harness import run_comfy_script

    work = tmp_path_factory.mktemp("stage2_native")
    return run_comfy_script(NATIVE_CHECK, work, Path(__file__).resolve().parent, work)


def test_native_sampling_ran_on_training_timesteps_with_both_halves(native):
    for run in ("full", "window"):
        r = native[run]
        assert all(r["control_called"]), run  # get_control ran at every model call
        steps = sorted(set(r["timesteps"]), reverse=True)
        assert steps == [999.0, 666.0, 333.0], run  # sgm_uniform, 3 steps
        for step in steps:  # cond (0) and uncond (1) at every step, whether ComfyUI batched them or not
            halves = [c for t, order in zip(r["timesteps"], r["cond_or_uncond"]) if t == step for c in order]
            assert sorted(halves) == [0, 1], (run, step)
        assert r["off_grid"] < 1e-4, run  # the sigmas are exactly the training schedule's, on both hosts
        assert all(layers == list(range(11)) for layers in r["attn_layers_seen"]), run  # all 11 attn2 layers


def test_controlnet_inputs_and_residuals_equal_diffusers(native):
    r = native["full"]
    assert all(r["control_expected"]) and r["control_active"] == r["control_expected"]
    for key in ("x_in", "timestep", "y", "context", "c_g"):
        assert r[key] < TOLERANCE, (key, r[key])
    assert r["control"] < TOLERANCE < EFFECT < r["control_effect"]


def test_colour_adapter_attention_equals_diffusers(native):
    r = native["full"]
    assert all(r["adapter_expected"])
    assert r["attn_cond"] < TOLERANCE and r["attn_uncond"] < TOLERANCE
    assert r["attn"] < TOLERANCE < EFFECT < r["attn_effect"]


def test_colour_adapter_tokens_equal_diffusers_pipeline(native):
    """The node's I_res tokens and unconditional tokens are the diffusers pipeline's, so the whole
    attention output (both CFG halves) matches with the pipeline's own tokens. IP-Adapter's reference
    code and the pipeline take the unconditional features of an all-zero CLIP input (zeros after CLIP's
    normalisation), not of a black image."""
    assert native["tokens_cond"] < TOLERANCE
    assert native["tokens_uncond"] < TOLERANCE
    r = native["full_pipeline_tokens"]
    assert r["attn_cond"] < TOLERANCE
    assert r["attn_uncond"] < TOLERANCE


def test_percent_window_switches_both_like_diffusers(native):
    r = native["window"]
    # (1 - 0.5) * 999 <= t <= (1 - 0.2) * 999: only the middle step (t = 666) is inside
    expected = [t == 666.0 for t in r["timesteps"]]
    assert any(expected) and not all(expected)
    assert r["control_expected"] == r["adapter_expected"] == expected  # the diffusers rule (active_at)
    assert r["control_active"] == r["control_expected"]  # get_control returned None outside the window
    assert r["control"] < TOLERANCE < EFFECT < r["control_effect"]
    # outside the window the diffusers side runs the UNet's own attention: equal means "no adapter" there
    assert r["attn"] < TOLERANCE < EFFECT < r["attn_effect"]


def test_zero_strengths_contribute_nothing(native):
    assert native["node_identity"] == {"strength_0": True, "priors_0": True, "adapter_0": True}
    for case, r in native["zero"].items():
        assert r == {"returns_previous": True, "network_runs": 0}, case


def test_a_clone_of_the_adapted_model_shares_the_adapter(native):
    """Each later clone of the MODEL (a LoRA, a sampling patch) must not copy the whole IP-Adapter: 0.85 GB at
    real size that ComfyUI neither counts nor moves."""
    assert native["clone_shares_adapter"]


def test_native_controlnet_gives_the_diffusers_residuals(native):
    """Core's ControlNet network with our c_g equals the diffusers network the command line runs (zero
    convolutions randomised, so the residuals are not zero); crossing two prior extractors is caught."""
    r = native["one_call"]
    assert r["core_classes"] == {"control": True, "network": True, "ops": True}
    assert r["native"] < TOLERANCE < EFFECT < r["effect"]
    assert r["swapped_extractors"] > EFFECT


def test_a_per_gpu_clone_is_independent(native):
    r = dict(native["one_call"]["clone"])
    assert r.pop("before") < TOLERANCE < EFFECT < r.pop("clone_after_edit")
    assert r == {"registered": True, "own_patcher": True, "shared_tensors": 0,
                 "original_unchanged_after_clone_edit": True}


def test_the_colour_adapter_composes_with_other_attn2_patches(native):
    """A patch already at a layer stays (its output is the base), a later IPAdapter_plus-style `add` adds its
    term inside its sigma window only, attention overrides in the transformer options reach both attentions,
    and a second colour adapter wraps the first and registers its own weights."""
    r = native["compose"]
    assert r["previous_kept"] < TOLERANCE and r["previous_calls"] == 1
    assert r["adapter_effect"] > EFFECT
    assert r["added"] < TOLERANCE and r["added_calls"] == ["in window"]
    assert r["override_unchanged"] < TOLERANCE
    assert r["override_calls"] == (2 if r["override_supported"] else 0)
    assert r["twice_wraps"]
