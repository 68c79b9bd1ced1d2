"""Before/after comparison: the input and the restored image in one node, with a draggable split
drawn by the frontend extension (js/diffbody_compare.js)."""

from __future__ import annotations

from . import glue

CATEGORY = "DiffBody/Compare"


def _match_size(before, after):
    """`before` resized (bicubic) to `after`'s size, so a low-resolution input lines up with its
    upscaled restoration pixel for pixel under the split."""
    import torch.nn.functional as F

    if before.shape[1:3] == after.shape[1:3]:
        return before
    resized = F.interpolate(glue.comfy_to_bchw(before), size=after.shape[1:3], mode="bicubic", align_corners=False,
                            antialias=True)
    return glue.bchw_to_comfy(resized)


class BeforeAfter:
    DISPLAY_NAME = "DiffBody Before/After"
    DESCRIPTION = ("Shows the input and the restored image on top of each other, with a split you drag across "
                   "the node to compare them. The input is resized to the result's size. Nothing is written to "
                   "the output folder (previews go to ComfyUI's temp folder).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    OUTPUT_TOOLTIPS = ()
    FUNCTION = "compare"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "before": ("IMAGE", {"tooltip": "The degraded input (I_LQ), or any image to compare against."}),
            "after": ("IMAGE", {"tooltip": "The restored image."}),
        }}

    def compare(self, before, after):
        # grey, grey+alpha, RGBA or unbatched images: RGB batches, as every node takes them
        before, after = (glue.bchw_to_comfy(glue.comfy_to_bchw(image)) for image in (before, after))
        if before.shape[0] != after.shape[0] and before.shape[0] != 1:
            raise ValueError(f"DiffBody Before/After: {before.shape[0]} 'before' images for {after.shape[0]} "
                             "'after' images; connect batches of the same size (or one 'before' image).")
        before = _match_size(before, after).expand(after.shape[0], -1, -1, -1)
        before_files = glue.save_temp_images(before, "diffbody_before")
        after_files = glue.save_temp_images(after, "diffbody_after")
        # Only our own key: an "images" list would make the frontend draw its stock preview under the
        # comparison (LiteGraph canvas and Nodes 2.0 alike). API clients read the pairs from the history.
        return {"ui": {"diffbody_compare": [{"before": b, "after": a} for b, a in zip(before_files, after_files)]}}


NODE_CLASS_MAPPINGS = {"DiffBodyBeforeAfter": BeforeAfter}
