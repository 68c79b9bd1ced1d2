"""Stage 2's working size in a workflow: the command line's bucket canvas (pipelines/buckets.py), so a
3000x2000 scan is sampled at 512x768 and not as a 6-megapixel SDXL run, then brought back to the photo's size.

"DiffBody Stage 2 Canvas" puts I_ir, the priors and the colour source on the canvas exactly as the command
line's stage 2 does (resized to fit the nearest training bucket, padded by their edges, the skeleton with
black) and passes the plan on; "DiffBody Stage 2 Back To Size" crops the padding off the decoded result and
resizes it to I_ir's size with that plan.
"""

from __future__ import annotations

from . import glue

CATEGORY = "DiffBody/Stage 2"
PLAN_TYPE = "DIFFBODY_CANVAS"
CANVAS_INPUTS = (("image", "I_ir, the cleaned image: its size sets the canvas."),
                 ("pose", "I_pose, the skeleton (padded with black)."),
                 ("depth", "I_depth, from stage 1 or the depth estimator."),
                 ("normal", "I_normal, from stage 1 or the normal estimator."),
                 ("colour", "What the colour adapter sees: I_res (or I_ir without stage 1)."))


class Stage2Canvas:
    DISPLAY_NAME = "DiffBody Stage 2 Canvas"
    DESCRIPTION = ("Bounds stage 2's size: resizes I_ir and the images that go with it to the nearest of the "
                   "paper's training buckets (512x512 ... 1024x512, as the command line's stage 2), padded to "
                   "it; 'native' keeps I_ir's size (padded to a multiple of 64). Feed the canvas image's size to "
                   "Empty Latent Image, and the plan to 'DiffBody Stage 2 Back To Size' after VAE Decode.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", "IMAGE", "IMAGE", "IMAGE", PLAN_TYPE)
    RETURN_NAMES = ("image", "pose", "depth", "normal", "colour", "plan")
    OUTPUT_TOOLTIPS = tuple(f"{name} on the canvas." for name, _ in CANVAS_INPUTS) + (
        "How to bring the result back to I_ir's size.",)
    FUNCTION = "to_canvas"

    @classmethod
    def INPUT_TYPES(cls):
        required = {name: ("IMAGE", {"tooltip": tip}) for name, tip in CANVAS_INPUTS}
        required["size_mode"] = (["bucket", "native"], {
            "default": "bucket", "tooltip": "bucket: the nearest training size, at most 1024x512 whatever the photo "
                                            "(the command line's default); native: I_ir's own size, padded."})
        return {"required": required}

    def to_canvas(self, image, pose, depth, normal, colour, size_mode):
        from ..pipelines.buckets import STAGE2_FILLS, plan_resize

        images = {name: glue.comfy_to_bchw(value) for name, value in  # grey, RGBA, unbatched: as every node takes
                  {"image": image, "pose": pose, "depth": depth, "normal": normal, "colour": colour}.items()}
        plan = plan_resize(*images["image"].shape[-2:], mode=size_mode)
        placed = tuple(glue.bchw_to_comfy(plan.to_canvas(images[name], fill=STAGE2_FILLS[name]))
                       for name, _ in CANVAS_INPUTS)
        return (*placed, plan)


class Stage2BackToSize:
    DISPLAY_NAME = "DiffBody Stage 2 Back To Size"
    DESCRIPTION = ("Crops the padding of 'DiffBody Stage 2 Canvas' off the decoded stage-2 result and resizes it to "
                   "I_ir's size (bicubic, antialiased), as the command line does.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The restored image at I_ir's size.",)
    FUNCTION = "back_to_size"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The decoded stage-2 result (VAE Decode), at the canvas size."}),
            "plan": (PLAN_TYPE, {"tooltip": "From 'DiffBody Stage 2 Canvas'."}),
        }}

    def back_to_size(self, image, plan):
        return (glue.bchw_to_comfy(plan.from_canvas(glue.comfy_to_bchw(image))),)


NODE_CLASS_MAPPINGS = {
    "DiffBodyStage2Canvas": Stage2Canvas,
    "DiffBodyStage2BackToSize": Stage2BackToSize,
}
