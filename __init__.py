"""ComfyUI-DiffBody: human-aware two-stage diffusion restoration of photos of people.

ComfyUI imports this file from `custom_nodes/<any folder name>/`; everything else imports the same
code as the package `comfyui_diffbody`. Importing it must stay cheap: node modules import torch,
diffusers, transformers, onnxruntime and spandrel only when a node runs.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]


def _register_model_folders_inside_comfyui() -> None:
    from .nodes.glue import register_model_folders, running_inside_comfyui

    if running_inside_comfyui():
        register_model_folders()


_register_model_folders_inside_comfyui()
