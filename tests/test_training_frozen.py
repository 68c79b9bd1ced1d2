"""Frozen and trained weights of training phases 2, 3 and 4, on the tiny models, in-process, on the CPU.

Each phase runs a few optimiser steps with its real `train(args, accelerator=...)`. The test does not ask the
phase which networks it freezes: it records every network the phase LOADS OR BUILDS (by wrapping the loaders
and constructors it calls) and snapshots each parameter tensor there, and it records the model and the
optimiser the loop hands to `accelerator.prepare`. Then, per parameter tensor:

- every tensor of a network that must stay frozen is bit-identical after the run
  (phase 2: the stage-1 UNet, SD 2.1's VAE and text encoder; phase 3: SDXL's UNet, VAE and both text
  encoders; phase 4: those, the phase-3 ControlNet and the CLIP image encoder; in every phase SwinIR);
- every tensor of the trained network has changed;
- the optimiser's parameters are exactly the trained network's parameters (by identity).

The negative test crosses the wire on purpose (one frozen UNet tensor gets requires_grad and an optimiser
entry) and checks that the detector names it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

STEPS = 3


# ---- the recorder and the detector ---------------------------------------------------------------------

def networks_in(obj, depth: int = 3) -> list[torch.nn.Module]:
    """The nn.Modules an object holds: itself, or found in its attributes / items (not inside a module)."""
    if isinstance(obj, torch.nn.Module):
        return [obj]
    if depth == 0 or obj is None or isinstance(obj, (str, bytes, int, float, bool, torch.Tensor)):
        return []
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif dataclasses.is_dataclass(obj):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    else:
        return []
    found: dict[int, torch.nn.Module] = {}
    for child in children:
        found.update((id(m), m) for m in networks_in(child, depth - 1))
    return list(found.values())


class Recorder:
    """The networks a phase made, by role ("frozen" / "trained"), each parameter's value when recorded, and
    what the loop passed to accelerator.prepare."""

    def __init__(self):
        self.networks: dict[str, tuple[str, torch.nn.Module]] = {}  # label -> (role, module)
        self.before: dict[str, dict[str, torch.Tensor]] = {}
        self.prepared: list = []

    def record(self, role: str, label: str, obj):
        modules = networks_in(obj)
        assert modules, f"{label}: no network found in {type(obj).__name__}"
        for i, module in enumerate(modules):
            name = label if len(modules) == 1 else f"{label}[{i}:{type(module).__name__}]"
            self.networks[name] = (role, module)
            self.before[name] = {k: p.detach().clone() for k, p in module.named_parameters()}
        return obj

    def wrap(self, role: str, label: str, function):
        def recording(*args, **kwargs):
            return self.record(role, label, function(*args, **kwargs))
        return recording

    def accelerator(self, args):
        """The Accelerator run_training would make, its prepare() recording the model and optimiser."""
        from comfyui_diffbody.training.loop import config_from_args, make_accelerator

        accelerator = make_accelerator(config_from_args(args))
        original = accelerator.prepare

        def prepare(*objects):
            self.prepared.extend(objects)
            return original(*objects)

        accelerator.prepare = prepare
        return accelerator

    def optimiser_params(self) -> list[torch.nn.Parameter]:
        optimisers = [o for o in self.prepared if hasattr(o, "param_groups")]
        assert len(optimisers) == 1, f"expected one optimiser in prepare(), got {self.prepared}"
        return [p for group in optimisers[0].param_groups for p in group["params"]]


def weight_problems(recorder: Recorder) -> list[str]:
    """Every way the run broke the frozen/trained contract, one line each (empty when it kept it)."""
    problems: list[str] = []
    owner: dict[int, str] = {}
    trained_ids: set[int] = set()
    for label, (role, module) in recorder.networks.items():
        for name, param in module.named_parameters():
            owner.setdefault(id(param), f"{label}.{name}")
            if role == "trained":
                trained_ids.add(id(param))
    frozen_ids = {id(p) for label, (role, m) in recorder.networks.items() if role == "frozen" for p in m.parameters()}
    shared = trained_ids & frozen_ids
    problems += [f"shared by a frozen and the trained network: {owner[i]}" for i in shared]
    optimised = recorder.optimiser_params()
    optimised_ids = {id(p) for p in optimised}
    problems += [f"in the optimiser but not trained: {owner.get(id(p), f'unknown tensor {tuple(p.shape)}')}"
                 for p in optimised if id(p) not in trained_ids]
    problems += [f"trained but not in the optimiser: {owner[i]}" for i in trained_ids - optimised_ids]
    for label, (role, module) in recorder.networks.items():
        for name, param in module.named_parameters():
            before = recorder.before[label][name]
            same = param.dtype == before.dtype and torch.equal(param.detach().cpu(), before)
            if role == "frozen" and not same:
                problems.append(f"frozen tensor changed: {label}.{name}")
            if role == "frozen" and param.requires_grad:
                problems.append(f"frozen tensor requires grad: {label}.{name}")
            if role == "trained" and same:
                problems.append(f"trained tensor unchanged: {label}.{name}")
    return problems


def count(recorder: Recorder, role: str) -> int:
    return sum(1 for r, m in recorder.networks.values() if r == role for _ in m.parameters())


# ---- the phases, recorded ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from comfyui_diffbody.testing.tiny.dataset import build_tiny_dataset
    from comfyui_diffbody.testing.tiny.sd21_components import write_tiny_sd21_components
    from comfyui_diffbody.testing.tiny.stage1 import write_tiny_sd21_diffusers, write_tiny_stage1
    from comfyui_diffbody.testing.tiny.stage2 import (write_tiny_clip_vision, write_tiny_ip_adapter_plus_xl,
                                                      write_tiny_multiprior, write_tiny_sdxl)
    from comfyui_diffbody.testing.tiny.swinir import write_tiny_swinir

    root = tmp_path_factory.mktemp("frozen-parts")
    sd21 = str(root / "sd21")
    write_tiny_sd21_diffusers(sd21)
    write_tiny_sd21_components(sd21)
    unet, _ = write_tiny_stage1(str(root / "unet.safetensors"), str(root / "cn.safetensors"))
    return {"data": build_tiny_dataset(str(root / "data"), n=4, sizes=((64, 64),), seed=1),
            "sd21": sd21, "stage1_unet": unet,
            "sdxl": write_tiny_sdxl(str(root / "sdxl"), None)["folder"],
            "clip_vision": write_tiny_clip_vision(str(root / "clip_vision"))["folder"],
            "ip_adapter": write_tiny_ip_adapter_plus_xl(str(root / "ip-adapter-plus_sdxl_vit-h.safetensors")),
            "controlnet": write_tiny_multiprior(str(root / "diffbody_stage2_controlnet.safetensors")),
            "swinir": write_tiny_swinir(str(root / "general_swinir_v1.ckpt"))}


COMMON = ("--max_steps", STEPS, "--learning_rate", 1e-3, "--train_batch_size", 2, "--gradient_accumulation_steps", 1,
          "--checkpointing_steps", 1000, "--validation_count", 0, "--log_every", 1)


def record_cleaner(monkeypatch, recorder: Recorder, module) -> None:
    original = module.Cleaner

    def cleaner(path):
        made = original(path)
        recorder.record("frozen", "swinir", made.module)
        return made

    monkeypatch.setattr(module, "Cleaner", cleaner)


def run_phase2(parts, out, monkeypatch, recorder: Recorder) -> list[float]:
    from comfyui_diffbody.models import stage1_weights
    from comfyui_diffbody.models.stage1_controlnet import Stage1ControlNet
    from comfyui_diffbody.training import stage1_common, train_stage1_controlnet as phase

    monkeypatch.setattr(stage1_common, "load_frozen_sd21",
                        recorder.wrap("frozen", "sd21", stage1_common.load_frozen_sd21))
    monkeypatch.setattr(stage1_weights, "load_stage1_unet",
                        recorder.wrap("frozen", "stage1_unet", stage1_weights.load_stage1_unet))
    from_unet = Stage1ControlNet.from_unet.__func__
    monkeypatch.setattr(Stage1ControlNet, "from_unet",
                        classmethod(lambda cls, *a, **k: recorder.record("trained", "controlnet",
                                                                         from_unet(cls, *a, **k))))
    record_cleaner(monkeypatch, recorder, phase)
    args = phase.build_parser().parse_args([str(a) for a in (
        "--data_root", parts["data"], "--pretrained_sd21", parts["sd21"], "--unet", parts["stage1_unet"],
        "--swinir", parts["swinir"], "--output_dir", out, *COMMON)])
    return phase.train(args, accelerator=recorder.accelerator(args))


def run_phase3(parts, out, monkeypatch, recorder: Recorder) -> list[float]:
    from comfyui_diffbody.training import stage2_common, train_stage2_controlnet as phase

    monkeypatch.setattr(stage2_common, "load_frozen_sdxl", recorder.wrap("frozen", "sdxl", stage2_common.load_frozen_sdxl))
    monkeypatch.setattr(phase, "initial_controlnet", recorder.wrap("trained", "controlnet", phase.initial_controlnet))
    record_cleaner(monkeypatch, recorder, phase)
    args = phase.build_parser().parse_args([str(a) for a in (
        "--data_root", parts["data"], "--pretrained_sdxl", parts["sdxl"], "--swinir", parts["swinir"],
        "--output_dir", out, *COMMON)])
    return phase.train(args, accelerator=recorder.accelerator(args))


def run_phase4(parts, out, monkeypatch, recorder: Recorder) -> list[float]:
    from comfyui_diffbody.models import colour_adapter, sdxl_components
    from comfyui_diffbody.training import stage2_common, train_colour_adapter as phase

    monkeypatch.setattr(stage2_common, "load_frozen_sdxl", recorder.wrap("frozen", "sdxl", stage2_common.load_frozen_sdxl))
    monkeypatch.setattr(phase, "load_frozen_controlnet",
                        recorder.wrap("frozen", "phase3_controlnet", phase.load_frozen_controlnet))
    monkeypatch.setattr(sdxl_components, "load_clip_vision",
                        recorder.wrap("frozen", "clip_vision", sdxl_components.load_clip_vision))
    monkeypatch.setattr(colour_adapter, "load_colour_adapter",
                        recorder.wrap("trained", "colour_adapter", colour_adapter.load_colour_adapter))
    record_cleaner(monkeypatch, recorder, phase)
    args = phase.build_parser().parse_args([str(a) for a in (
        "--data_root", parts["data"], "--pretrained_sdxl", parts["sdxl"], "--swinir", parts["swinir"],
        "--controlnet", parts["controlnet"], "--init_adapter", parts["ip_adapter"],
        "--clip_vision", parts["clip_vision"], "--output_dir", out,
        # Which image the adapter sees does not change which weights train; `hq` needs no stored I_res.
        "--colour_reference", "hq", *COMMON)])
    return phase.train(args, accelerator=recorder.accelerator(args))


PHASES = {"phase2": (run_phase2, {"sd21[0:AutoencoderKL]", "sd21[1:CLIPTextModel]", "stage1_unet", "swinir"},
                     {"controlnet"}),
          "phase3": (run_phase3, {"sdxl[0:UNet2DConditionModel]", "sdxl[1:AutoencoderKL]", "sdxl[2:CLIPTextModel]",
                                  "sdxl[3:CLIPTextModelWithProjection]", "swinir"}, {"controlnet"}),
          "phase4": (run_phase4, {"sdxl[0:UNet2DConditionModel]", "sdxl[1:AutoencoderKL]", "sdxl[2:CLIPTextModel]",
                                  "sdxl[3:CLIPTextModelWithProjection]", "phase3_controlnet", "clip_vision", "swinir"},
                     {"colour_adapter"})}


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_frozen_weights_stay_bit_identical_and_only_the_trained_network_is_optimised(phase, parts, tmp_path,
                                                                                     monkeypatch):
    run, frozen, trained = PHASES[phase]
    recorder = Recorder()
    losses = run(parts, tmp_path / "out", monkeypatch, recorder)
    assert len(losses) == STEPS
    roles = {label: role for label, (role, _) in recorder.networks.items()}
    assert roles == {**{label: "frozen" for label in frozen}, **{label: "trained" for label in trained}}
    problems = weight_problems(recorder)
    print(f"{phase}: {count(recorder, 'frozen')} frozen and {count(recorder, 'trained')} trained tensors checked")
    assert not problems, "\n".join(problems[:40])


def test_the_detector_catches_a_frozen_tensor_trained_and_a_trained_tensor_left_out(parts, tmp_path, monkeypatch):
    """Both wires crossed on purpose in one phase-2 run: one tensor of the frozen UNet gets requires_grad and
    an optimiser entry, and one tensor of the ControlNet is dropped from the optimiser."""
    from comfyui_diffbody.training import loop

    recorder = Recorder()
    place = loop._place_networks

    def crossed(accelerator, config, trainable, frozen, frozen_fp32):
        params = place(accelerator, config, trainable, frozen, frozen_fp32)
        leaked = recorder.networks["stage1_unet"][1].branches["rgb"].conv_out.weight.requires_grad_(True)
        return [p for p in params if p is not trainable.image_latent_in.weight] + [leaked]

    monkeypatch.setattr(loop, "_place_networks", crossed)
    run_phase2(parts, tmp_path / "out", monkeypatch, recorder)
    problems = weight_problems(recorder)
    leaked, dropped = "stage1_unet.branches.rgb.conv_out.weight", "controlnet.image_latent_in.weight"
    assert sorted(problems) == sorted([f"in the optimiser but not trained: {leaked}",
                                       f"frozen tensor changed: {leaked}",
                                       f"frozen tensor requires grad: {leaked}",
                                       f"trained but not in the optimiser: {dropped}",
                                       f"trained tensor unchanged: {dropped}"])
