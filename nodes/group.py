"""Group photos in a workflow: "DiffBody Crop People" cuts one crop per person (or face) with pipelines/group.py,
any stage-2 setup restores them, "DiffBody Paste People" puts them back over the global pass.

Crops of different buckets cannot share an IMAGE batch, so the crops leave as a list (OUTPUT_IS_LIST): each item a
batch of crops that share a bucket, `batch_size` at most. ComfyUI runs the nodes after it once per item, so with
batch_size 1 (the default) each person gets their own caption, skeleton and sampling run, one crop on the device
at a time; larger batches are faster on a GPU, but ComfyUI's text conditioning is one per run, so the people of a
batch share a caption. Paste People takes the whole list back (INPUT_IS_LIST); a stage 2 that made k images per crop (a latent batch of
k) gives k results.

No people found: one crop, the whole picture on its bucket, with an empty mask, so the nodes after it run as
usual; Paste People then returns the global image unchanged, and the console says why.
"""

from __future__ import annotations

import logging

from . import glue

logger = logging.getLogger(__name__)

CATEGORY = "DiffBody/Group"
CROPS_TYPE = "DIFFBODY_CROPS"


class CropPeople:
    DISPLAY_NAME = "DiffBody Crop People"
    DESCRIPTION = ("One crop per person of a group photo (or per face), each at the nearest training bucket: the "
                   "person's keypoint extent and mask, padded with context. Restore the crops with any stage-2 "
                   "setup (it runs once per crop batch) and put them back with 'DiffBody Paste People'.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", CROPS_TYPE, "MASK", "POSE_KEYPOINT")
    RETURN_NAMES = ("crops", "crop_data", "masks", "keypoints")
    OUTPUT_IS_LIST = (True, False, True, True)
    OUTPUT_TOOLTIPS = ("A list of crop batches, each sharing one bucket size (512x512 ... 1024x512).",
                       "Where each crop came from, for 'DiffBody Paste People'.",
                       "Each crop's person (or face) mask, feathered, in the crop's pixels (same list layout).",
                       "Each crop's person alone, in the crop's pixels: draw that person's own skeleton.")
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls):
        from ..pipelines.group import DEFAULT_CONTEXT, MaskSettings

        return {"required": {
            "image": ("IMAGE", {"tooltip": "The picture to cut (usually I_ir, the cleaned image)."}),
            "keypoints": ("POSE_KEYPOINT", {"tooltip": "The people of the picture, from 'DiffBody Pose' (any "
                                                       "pose node writing OpenPose JSON; its canvas may be another "
                                                       "size)."}),
            "regions": (["person", "face"], {
                "default": "person", "tooltip": "person: a crop per person, masked along their skeleton. face: a "
                                                "square 512x512 crop per head with an elliptical mask, for a "
                                                "face pass."}),
            "context": ("FLOAT", {"default": DEFAULT_CONTEXT, "min": 0.0, "max": 2.0, "step": 0.05,
                                  "tooltip": "Surroundings added on every side, as a fraction of the person's "
                                             "longer side."}),
            "max_people": ("INT", {"default": 0, "min": 0, "max": 256,
                                   "tooltip": "Keep only this many people per picture, the largest; 0 keeps all."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                   "tooltip": "Crops sharing a bucket travel together, this many at most. 1: each "
                                              "person sampled alone with their own caption; more: faster on a GPU, "
                                              "but a batch shares one caption in ComfyUI."}),
            "dilation": ("FLOAT", {"default": MaskSettings.dilation, "min": 0.0, "max": 5.0, "step": 0.05,
                                   "tooltip": "How far the mask reaches past the skeleton, in head radii."}),
            "feather": ("FLOAT", {"default": MaskSettings.feather, "min": 0.0, "max": 5.0, "step": 0.05,
                                  "tooltip": "Softness of the mask's edge (Gaussian sigma), in head radii."}),
        }}

    def crop(self, image, keypoints, regions, context, max_people, batch_size, dilation, feather):
        import torch

        from ..pipelines.group import (GroupCropError, MaskSettings, bucket_batches, crop_frames, crop_masks,
                                       crop_regions, find_regions, with_placeholder)

        images = glue.comfy_to_bchw(image)
        frames = glue.frames_per_image(keypoints, images.shape[0])  # no frames: no people (the placeholder below)
        if frames is None:
            raise GroupCropError(f"DiffBody Crop People: {len(keypoints)} keypoint frames for {images.shape[0]} "
                                 "images; give one frame per image, or one for all")
        crops = find_regions(frames, tuple(images.shape[-2:]), regions, context=context, max_people=max_people,
                             mask=MaskSettings(dilation=dilation, feather=feather))
        if not crops.regions:
            logger.warning("DiffBody Crop People: no people in the keypoints; passing the whole picture on with an "
                           "empty mask, so 'DiffBody Paste People' returns the global image unchanged")
        crops = bucket_batches(with_placeholder(crops), batch_size)
        pictures, masks, poses = iter(crop_regions(images, crops)), iter(crop_masks(crops)), iter(crop_frames(crops))
        sizes = [len(batch) for batch in crops.batches]
        return ([glue.bchw_to_comfy(torch.stack([next(pictures) for _ in range(n)])) for n in sizes], crops,
                [torch.stack([next(masks) for _ in range(n)]) for n in sizes],
                [[next(poses) for _ in range(n)] for n in sizes])


class PastePeople:
    DISPLAY_NAME = "DiffBody Paste People"
    DESCRIPTION = ("Puts restored crops from 'DiffBody Crop People' back over the global image, each with its "
                   "feathered person (or face) mask; where people overlap, the one lower in the picture (nearer the "
                   "camera) ends up on top.")
    CATEGORY = CATEGORY
    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The global image with every person pasted back.",)
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The global pass: the whole picture restored (or just cleaned); another "
                                           "size than the cropped picture is fine (an upscaled one)."}),
            "crops": ("IMAGE", {"tooltip": "The restored crops, as 'DiffBody Crop People' listed them; any size."}),
            "crop_data": (CROPS_TYPE, {"tooltip": "From the 'DiffBody Crop People' that cut the crops."}),
        }}

    def paste(self, image, crops, crop_data):
        import torch

        from ..pipelines.group import GroupCropError, paste_regions

        if len(image) != 1 or len(crop_data) != 1:
            raise GroupCropError("DiffBody Paste People takes one global image batch and one crop data")
        global_images = glue.comfy_to_bchw(image[0])
        results = [paste_regions(global_images, restored, crop_data[0])
                   for restored in _variants([glue.comfy_to_bchw(batch) for batch in crops], crop_data[0])]
        return (glue.bchw_to_comfy(torch.cat(results)),)


def _variants(batches, crop_data) -> list[list]:
    """The restored crops as k lists in crop order: a stage 2 that made k images per crop (a latent batch of k, as
    Repeat Latent Batch lays it out: the crop batch k times over) gives k results, the j-th from each crop's j-th
    image. k is 1 when every crop came back once."""
    from ..pipelines.group import GroupCropError

    sizes = [len(batch) for batch in crop_data.batches] or [1] * len(crop_data.regions)
    if len(batches) == len(sizes) and all(len(b) % n == 0 for b, n in zip(batches, sizes)):
        repeats = {len(b) // n for b, n in zip(batches, sizes)}
        if len(repeats) == 1 and 0 not in repeats:
            (k,) = repeats
            return [[crop for b, n in zip(batches, sizes) for crop in b[j * n:(j + 1) * n]] for j in range(k)]
    flat = [crop for batch in batches for crop in batch]
    if len(flat) == len(crop_data.regions):  # the same crops, batched another way
        return [flat]
    raise GroupCropError(f"{len(flat)} crop(s) in {len(batches)} batch(es) for {len(crop_data.regions)} region(s) "
                         f"in {len(sizes)} batch(es) of the crop data; connect the crops that came from the same "
                         "'DiffBody Crop People', in the same order (or k images for each)")


NODE_CLASS_MAPPINGS = {
    "DiffBodyCropPeople": CropPeople,
    "DiffBodyPastePeople": PastePeople,
}
