"""The SwinIR Loader's UPSCALE_MODEL against what ComfyUI's "Upscale Image (using Model)" reads from it.

Newer ComfyUI core (read at Comfy-Org/ComfyUI 30a74432c780b220aead6c33ab2ebc265678e5e3,
comfy_extras/nodes_upscale_model.py) has its own UpscaleModelLoader return a spandrel ImageModelDescriptor
with `.patcher = comfy.model_patcher.CoreModelPatcher(out.model, load_device=get_torch_device(),
offload_device=unet_offload_device(), fast_disk=comfy.storage.state_dict_fast_disk(sd))`, and its
ImageUpscaleWithModel.execute then reads, of that object:
  - `.patcher.load_device`  the device the image tiles go to;
  - `.scale`                the memory estimate and tiled_scale's upscale_amount;
  - `.patcher`              handed to model_management.load_models_gpu([...], memory_required=...,
                            force_full_load=True);
  - `.to(device)`           called after the load (spandrel modules are not built from comfy ops);
  - `__call__`              each tile, as `upscale_model(tile.float())`.
The installed ComfyUI 0.3.75 reads `.model` (model_management.module_size), `.scale`, `.to` and `__call__`
and moves the model itself (free_memory, .to(device), .to("cpu")).

The checks run in a subprocess on the installed 0.3.75 (ComfyUI's modules never enter the pytest process):
the loader node's output is checked against NEWER_CORE_READS; then the steps newer core's execute takes with
the object are replayed with 0.3.75's real model management (its load_models_gpu takes the same arguments),
recording the load_models_gpu calls; the result is compared with 0.3.75's own ImageUpscaleWithModel and with
our cleanup. What this proves: our object has everything newer core touches, model management accepts our
patcher and registers the very module the descriptor runs, and the pixels match. What it cannot prove:
newer core's own ModelPatcherDynamic / dynamic-VRAM loading on a GPU, which 0.3.75 does not have.

A crossed wire (a patcher around a copy of the network) still gives the right pixels in newer core, because
execute also moves the descriptor itself; it would only make ComfyUI budget, load and offload the wrong
module. So the detector checks identity and registration, and the negative test feeds it that crossing.
"""

from __future__ import annotations

import json
import os

import pytest

# Attribute paths newer core's ImageUpscaleWithModel reads (see the module docstring for the commit read),
# plus `.model`, which 0.3.75's node reads and newer core's loader wraps in the patcher.
NEWER_CORE_READS = ("patcher", "patcher.load_device", "scale", "to", "__call__", "model")
TOLERANCE = 1e-5  # the same network on the same 512x512 input (one tile): equal up to float rounding
SWINIR_FILE = "general_swinir_v1.ckpt"

CHECK = r'''
import copy, json, os, sys, types
comfy_dir, models_dir, reads = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.insert(0, comfy_dir)
import torch
torch.set_num_threads(1)
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import folder_paths
folder_paths.add_model_folder_path("upscale_models", os.path.join(models_dir, "upscale_models"), is_default=True)
import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
from spandrel import ImageModelDescriptor
from comfy_extras.nodes_upscale_model import ImageUpscaleWithModel
from comfyui_diffbody.nodes import glue
from comfyui_diffbody.nodes.stage0 import SwinIRLoader
from comfyui_diffbody.pipelines.cleanup import clean_images

SWINIR_FILE = sys.argv[4]
PATH = glue.model_path(SWINIR_FILE, "upscale_models")
load_calls = []
real_load_models_gpu = mm.load_models_gpu


def recording_load_models_gpu(models, *args, **kwargs):
    load_calls.append({"models": list(models), "kwargs": sorted(kwargs)})
    return real_load_models_gpu(models, *args, **kwargs)


mm.load_models_gpu = recording_load_models_gpu


def provides(obj, dotted):
    for name in dotted.split("."):
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def replay_newer_core(model, image):
    """The steps newer core's ImageUpscaleWithModel.execute takes with the object, in order (our code)."""
    device = model.patcher.load_device
    mm.load_models_gpu([model.patcher], memory_required=4 * image.nelement() * image.element_size(),
                       force_full_load=True)
    model.to(device)
    tiles = image.movedim(-1, -3).to(device)
    out = comfy.utils.tiled_scale(tiles, lambda t: model(t.float()), tile_x=512, tile_y=512, overlap=32,
                                  upscale_amount=model.scale, output_device=mm.intermediate_device())
    return out.movedim(-3, -1).clamp(0, 1)


def registered(model):
    """What model management now holds for this object's patcher: (registered, manages the descriptor's module)."""
    entries = [entry.model for entry in mm.current_loaded_models if entry.model is model.patcher]
    return bool(entries), bool(entries) and entries[0].model is model.model


def facts(model, image):
    calls_before = len(load_calls)
    output = replay_newer_core(model, image)
    is_registered, same_module = registered(model)
    return output, {
        "provides": {read: provides(model, read) for read in reads},
        "descriptor": isinstance(model, ImageModelDescriptor),
        "patcher_class": type(model.patcher).__name__,
        "patcher_wraps_descriptor_module": model.patcher.model is model.model,
        "load_device_is_compute_device": model.patcher.load_device == mm.get_torch_device(),
        "offload_device_is_unet_offload": model.patcher.offload_device == mm.unet_offload_device(),
        "load_models_gpu_got_our_patcher": [c["models"] == [model.patcher] for c in load_calls[calls_before:]],
        "load_models_gpu_kwargs": [c["kwargs"] for c in load_calls[calls_before:]],
        "registered": is_registered, "registered_module_is_descriptor_module": same_module,
        "output_shape": list(output.shape),
    }


image = torch.rand(1, 512, 512, 3, generator=torch.Generator().manual_seed(0))
ours = SwinIRLoader().load(SWINIR_FILE, False)[0]
replayed, result = facts(ours, image)
stock = ImageUpscaleWithModel.execute(ours, image).result[0]
cleaned = clean_images(ours, image.movedim(-1, 1), upscale=1.0, tile_size=512, tile_stride=256).movedim(1, -1)
result["replayed_vs_stock_0375"] = float((replayed - stock).abs().max())
result["replayed_vs_our_cleanup"] = float((replayed - cleaned).abs().max())

crossed = SwinIRLoader().load(SWINIR_FILE, False)[0]
crossed.patcher = glue.upscale_model_patcher(copy.deepcopy(crossed.model), PATH)  # the wire crossed
crossed_output, crossed_facts = facts(crossed, image)
crossed_facts["output_vs_our_cleanup"] = float((crossed_output - cleaned).abs().max())


class NewerCorePatcher(comfy.model_patcher.ModelPatcher):  # newer core's constructor shape
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False, fast_disk=False):
        super().__init__(model, load_device, offload_device, size, weight_inplace_update)
        self.fast_disk = fast_disk


judged = []
storage = types.ModuleType("comfy.storage")
storage.model_fast_disk = lambda paths: judged.append(list(paths)) or True
sys.modules["comfy.storage"], comfy.storage = storage, storage
comfy.model_patcher.CoreModelPatcher = NewerCorePatcher  # as newer core's main.py may rebind it at start-up
newer = SwinIRLoader().load(SWINIR_FILE, False)[0].patcher
print("RESULT " + json.dumps({
    "ours": result, "crossed": crossed_facts, "path": PATH,
    "newer_shape": {"patcher_class": type(newer).__name__, "fast_disk": newer.fast_disk, "judged": judged},
}))
'''


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from comfy_harness import run_comfy_script

    from comfyui_diffbody.testing.tiny.swinir import write_tiny_swinir

    models_dir = tmp_path_factory.mktemp("upscale_model")
    write_tiny_swinir(str(models_dir / "upscale_models" / SWINIR_FILE), layout="diffbir_v1", seed=3)
    return run_comfy_script(CHECK, models_dir, models_dir,
                            json.dumps(NEWER_CORE_READS), SWINIR_FILE, label="SwinIR Loader output vs newer core")


def contract_breaks(facts: dict) -> list[str]:
    """The detector: every way the object falls short of what newer core's ImageUpscaleWithModel relies on."""
    breaks = [f"lacks .{read}" for read, present in facts["provides"].items() if not present]
    for name in ("descriptor", "patcher_wraps_descriptor_module", "load_device_is_compute_device",
                 "offload_device_is_unet_offload", "registered", "registered_module_is_descriptor_module"):
        if not facts[name]:
            breaks.append(name)
    if facts["load_models_gpu_got_our_patcher"] != [True]:
        breaks.append("load_models_gpu did not get exactly our patcher, once")
    return breaks


def test_loader_output_has_everything_newer_core_reads(measured):
    ours = measured["ours"]
    assert set(ours["provides"]) == set(NEWER_CORE_READS)
    assert contract_breaks(ours) == []
    assert ours["patcher_class"] == "ModelPatcher"  # 0.3.75 has no CoreModelPatcher
    assert ours["load_models_gpu_kwargs"] == [["force_full_load", "memory_required"]]


def test_newer_core_steps_give_the_stock_nodes_and_our_cleanups_pixels(measured):
    ours = measured["ours"]
    assert ours["output_shape"] == [1, 512, 512, 3]
    assert ours["replayed_vs_stock_0375"] <= TOLERANCE
    assert ours["replayed_vs_our_cleanup"] <= TOLERANCE


def test_detector_catches_a_patcher_around_another_module(measured):
    crossed = measured["crossed"]
    assert set(contract_breaks(crossed)) == {"patcher_wraps_descriptor_module",
                                             "registered_module_is_descriptor_module"}
    # ... while the pixels stay right: the crossing shows only in what model management manages
    assert crossed["output_vs_our_cleanup"] <= TOLERANCE


def test_patcher_is_built_like_newer_cores_when_comfyui_offers_its_pieces(measured):
    newer = measured["newer_shape"]
    assert newer["patcher_class"] == "NewerCorePatcher"
    assert newer["fast_disk"] is True
    assert newer["judged"] == [[measured["path"]]]
    assert os.path.basename(measured["path"]) == SWINIR_FILE
