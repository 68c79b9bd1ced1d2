"""Test-only ComfyUI nodes, linked into custom_nodes/ by the test harness and nowhere else.

ComfyUI's own checkpoint/VAE/CLIP loaders recognise Stable Diffusion 2.1 only at its real sizes, so
they cannot load the tiny SD 2.1 VAE and text encoder the tests use. These nodes stand in for them:
they load the tiny diffusers folder the tiny-weights factory writes (models/diffusers/tiny-sd21) and
hand the pack's nodes objects with the same interface as ComfyUI's VAE and CONDITIONING. Everything
downstream (our loaders, samplers, ComfyUI's execution, progress and cancel) is the real thing.
"""

import os

import folder_paths

TINY_SD21_FOLDER = "tiny-sd21"


def _components():
    from comfyui_diffbody.pipelines.sd_components import load_sd21_components

    folder = os.path.join(folder_paths.get_folder_paths("diffusers")[0], TINY_SD21_FOLDER)
    return load_sd21_components(folder)


class TinyVAE:
    """ComfyUI VAE's interface (encode: BHWC pixels -> unscaled latents; decode: the reverse)."""

    def __init__(self, codec):
        self.codec = codec

    def encode(self, pixels):
        return self.codec.encode(pixels.movedim(-1, 1)) / self.codec.scaling_factor

    def decode(self, latents):
        return self.codec.decode(latents * self.codec.scaling_factor).movedim(1, -1)


class TinySD21VAELoader:
    CATEGORY = "testing"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return (TinyVAE(_components().vae),)


class TinySD21TextEncode:
    CATEGORY = "testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "", "multiline": True})}}

    def encode(self, text):
        return ([[_components().text_encoder.encode([text]), {}]],)


NODE_CLASS_MAPPINGS = {
    "TestOnlyTinySD21VAELoader": TinySD21VAELoader,
    "TestOnlyTinySD21TextEncode": TinySD21TextEncode,
}
