"""Stand-ins for ComfyUI's SD 2.1 / SDXL / CLIP vision loaders over the tiny test models.

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
    from comfyui_diffbody.models.sd21_components import load_sd21_components

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


def _tiny_path(folder: str, name: str) -> str:
    return os.path.join(folder_paths.get_folder_paths(folder)[0], name)


class TinySDXLLoader:
    """MODEL built natively by ComfyUI from the tiny original-layout SDXL UNet file (as its checkpoint
    loader would at real size), and a VAE stand-in over the tiny SDXL folder's VAE."""

    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        import comfy.model_detection
        import comfy.model_management
        import comfy.model_patcher
        import comfy.supported_models
        import comfy.utils
        from comfyui_diffbody.models.sd21_components import DiffusersVAE
        from comfyui_diffbody.testing.tiny import TINY_SDXL_NAME, TINY_SDXL_UNET_FILE
        from diffusers import AutoencoderKL

        prefix = "model.diffusion_model."
        sd = comfy.utils.load_torch_file(_tiny_path("checkpoints", TINY_SDXL_UNET_FILE))
        model_config = comfy.supported_models.SDXL(comfy.model_detection.detect_unet_config(sd, prefix))
        model = model_config.get_model(sd, prefix)
        model.load_model_weights(sd, prefix)
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                                   offload_device=comfy.model_management.unet_offload_device())
        vae = AutoencoderKL.from_pretrained(_tiny_path("diffusers", TINY_SDXL_NAME), subfolder="vae").eval()
        return (patcher, TinyVAE(DiffusersVAE(vae)))


class TinySDXLTextEncode:
    CATEGORY = "testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "", "multiline": True})}}

    def encode(self, text):
        from comfyui_diffbody.models.sdxl_components import load_sdxl_parts
        from comfyui_diffbody.testing.tiny import TINY_SDXL_NAME

        _, _, text_encoders = load_sdxl_parts(_tiny_path("diffusers", TINY_SDXL_NAME))
        context, pooled = text_encoders.encode([text])
        return ([[context, {"pooled_output": pooled}]],)


class TinyCLIPVision:
    """ComfyUI's ClipVisionModel interface over the tiny encoder: encode_image(IMAGE) ->
    .penultimate_hidden_states, and model(pixel_values, intermediate_output=-2) -> (last, penultimate),
    image_size, load_device and patcher."""

    def __init__(self, model):
        import comfy.model_management
        import comfy.model_patcher
        import torch

        self.hf_model = model
        self.image_size = model.config.image_size
        self.load_device = comfy.model_management.get_torch_device()
        # transformers models have a read-only `device`, which ModelPatcher sets: patch a plain container.
        self.patcher = comfy.model_patcher.ModelPatcher(torch.nn.ModuleDict({"encoder": model}),
                                                        load_device=self.load_device,
                                                        offload_device=comfy.model_management.unet_offload_device())

    def model(self, pixel_values, intermediate_output=-2):
        out = self.hf_model(pixel_values=pixel_values, output_hidden_states=True)
        return out.last_hidden_state, out.hidden_states[intermediate_output]

    def encode_image(self, image, crop=True):
        """As comfy.clip_vision.ClipVisionModel.encode_image: ComfyUI's OWN clip_preprocess (not the pack's
        clip_pixels, which the diffusers path uses: a preprocessing bug must not sit on both sides)."""
        import torch
        from comfy.clip_vision import clip_preprocess

        with torch.no_grad():
            pixel_values = clip_preprocess(image.to(self.load_device), size=self.image_size, crop=crop).float()
            features = self.model(pixel_values)[1]
        return type("Output", (), {"penultimate_hidden_states": features})()


class TinyCLIPVisionLoader:
    CATEGORY = "testing"
    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        from comfyui_diffbody.models.sdxl_components import load_clip_vision
        from comfyui_diffbody.testing.tiny import TINY_CLIP_VISION_FILE
        from comfyui_diffbody.testing.tiny.stage2 import tiny_clip_vision_kwargs

        return (TinyCLIPVision(load_clip_vision(_tiny_path("clip_vision", TINY_CLIP_VISION_FILE),
                                                config=tiny_clip_vision_kwargs())),)


NODE_CLASS_MAPPINGS = {
    "TestOnlyTinySDXLLoader": TinySDXLLoader,
    "TestOnlyTinySDXLTextEncode": TinySDXLTextEncode,
    "TestOnlyTinyCLIPVisionLoader": TinyCLIPVisionLoader,
    "TestOnlyTinySD21VAELoader": TinySD21VAELoader,
    "TestOnlyTinySD21TextEncode": TinySD21TextEncode,
}
