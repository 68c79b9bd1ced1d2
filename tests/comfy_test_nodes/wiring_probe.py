"""Test-only nodes that record, inside the ComfyUI server, what reaches the networks' inputs
(tests/test_server_wiring.py; the records are read there).

`TestOnlyWiringProbe` passes an IMAGE through and starts a recording: it installs global forward
(pre-)hooks that store, per call, the inputs of the networks a DiffBody workflow runs (the stage-1 ControlNet's
image latent, each multi-prior extractor's image, the CLIP vision encoder's pixels and penultimate states,
the colour adapter's resampler features, the captioner's vision-tower pixels: CLIP vision pixels seen
while the pack's caption module generates), the pixels and latents of each
stage-1 VAE encode, and the text each test-stand-in CLIP tokenises. The test puts it between Load Image and
the rest, so everything that uses a network runs after it. `TestOnlyWiringProbeEnd` takes the final image
(so it runs last), writes the records to `record_path` (torch.save of tensors and strings; read with
weights_only=True) and removes every hook.

Modules are recognised by class name: the pack runs here under its custom-node folder's module name, not as
`comfyui_diffbody`, so its classes are not the ones a test process imports.
"""

from __future__ import annotations

import inspect
import sys

import torch

_STATE: dict = {}


def _store(wire: str, value) -> None:
    records = _STATE.get("records")
    if records is not None:
        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu().clone()
        records.setdefault(wire, []).append(value)


def _argument(module, args, name: str):
    return inspect.signature(module.forward).bind_partial(*args).arguments.get(name)


def _pre_hook(module, args):
    kind = type(module).__name__
    if kind == "MultiPriorConditioningEmbedding":  # runs before its extractors: name them
        _STATE["extractors"].update({id(ex): prior for prior, ex in module.extractors.items()})
    elif kind == "PriorExtractor" and id(module) in _STATE["extractors"]:
        _store(f"stage-2 {_STATE['extractors'][id(module)]} extractor", args[0])
    elif kind == "Stage1ControlNet":
        _store("stage-1 ControlNet image latent", _argument(module, args, "image_latent"))
    elif kind == "Resampler":
        _store("colour adapter resampler features", args[0])
    elif kind == "CLIPVisionEmbeddings":
        if _STATE["captioning"]:
            _store("captioner pixels", args[0])
            _store("captioner nodes", _STATE["captioning"])
        else:
            _store("CLIP vision pixels", args[0])


def _post_hook(module, args, output):
    if type(module).__name__ in ("CLIPVisionModel", "CLIPVisionModelWithProjection") \
            and not _STATE["captioning"] and getattr(output, "hidden_states", None) is not None:
        _store("CLIP vision penultimate states", output.hidden_states[-2])


def _pack_modules(submodule: str) -> list:
    """<pack>.<submodule> for every loaded copy of the pack (its module name is its custom-node folder's),
    imported now if the pack has not needed it yet."""
    import importlib

    packages = {name[:-len("nodes.glue")] for name, module in list(sys.modules.items())
                if name.endswith(".nodes.glue") and module is not None and "ComfyVAECodec" in vars(module)}
    if not packages:
        raise RuntimeError("wiring probe: the DiffBody pack is not loaded in this server")
    return [importlib.import_module(package + submodule) for package in sorted(packages)]


def _start() -> None:
    from .native_stand_ins import TinyTokenizer

    _stop()
    _STATE.update(records={}, extractors={}, captioning=False, restores=[])
    _STATE["handles"] = [torch.nn.modules.module.register_module_forward_pre_hook(_pre_hook),
                         torch.nn.modules.module.register_module_forward_hook(_post_hook)]

    def wrap(owner, method, record):
        original = owner.__dict__[method]

        def recording(self, value, *args, **kwargs):
            result = original(self, value, *args, **kwargs)
            record(self, value, result)
            return result

        setattr(owner, method, recording)
        _STATE["restores"].append((owner, method, original))

    def tokenised(tokenizer, text, result):
        encoders = "stage-2 text encoders" if len(tokenizer.tokenizers) == 2 else "stage-1 text encoder"
        _store(encoders, [text])

    def encoded(codec, images, latents):
        _store("stage-1 VAE encode pixels", images)
        _store("stage-1 VAE encode latents", latents)

    wrap(TinyTokenizer, "tokenize_with_weights", tokenised)
    for glue in _pack_modules("nodes.glue"):
        wrap(glue.ComfyVAECodec, "encode", encoded)
    for caption in _pack_modules("pipelines.caption"):
        _mark_captioning(caption)


def _mark_captioning(caption_module) -> None:
    """While the captioner generates, CLIP vision encoders at work are its vision tower, not stage 2's. The
    id of the node captioning is recorded with its pixels: two captioner nodes may run in either order."""
    from comfy_execution.utils import get_executing_context

    original = caption_module._generate

    def generating(*args, **kwargs):
        _STATE["captioning"] = get_executing_context().node_id
        try:
            return original(*args, **kwargs)
        finally:
            _STATE["captioning"] = False

    caption_module._generate = generating
    _STATE["restores"].append((caption_module, "_generate", original))


def _stop() -> dict:
    for handle in _STATE.get("handles", []):
        handle.remove()
    for owner, method, original in reversed(_STATE.get("restores", [])):
        setattr(owner, method, original)
    records = _STATE.get("records") or {}
    _STATE.clear()
    return records


class WiringProbe:
    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "start"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "record_path": ("STRING", {"default": ""})}}

    def start(self, image, record_path):
        _start()
        _STATE["path"] = record_path
        return (image,)


class WiringProbeEnd:
    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "end"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def end(self, image):
        path = _STATE.get("path")
        records = _stop()
        if not path:
            raise RuntimeError("TestOnlyWiringProbeEnd ran without a TestOnlyWiringProbe before it")
        torch.save(records, path)
        return {}


NODE_CLASS_MAPPINGS = {"TestOnlyWiringProbe": WiringProbe, "TestOnlyWiringProbeEnd": WiringProbeEnd}
