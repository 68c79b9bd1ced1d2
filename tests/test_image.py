"""Layout conversions between ComfyUI IMAGEs, (B,3,H,W) tensors and uint8 arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_diffbody.nodes.glue import bchw_to_comfy, comfy_to_bchw
from comfyui_diffbody.pipelines.image import BadImage, chw_to_uint8, uint8_to_chw


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_any_channel_count_becomes_rgb(channels):
    image = torch.rand(2, 9, 17, channels)
    rgb = comfy_to_bchw(image)
    assert rgb.shape == (2, 3, 9, 17)
    assert torch.equal(rgb[:, 0], image[..., 0])
    if channels < 3:
        assert torch.equal(rgb[:, 1], rgb[:, 0]) and torch.equal(rgb[:, 2], rgb[:, 0])


def test_single_image_without_batch_dimension_is_accepted():
    assert comfy_to_bchw(torch.rand(5, 7, 3)).shape == (1, 3, 5, 7)


@pytest.mark.parametrize("shape", [(0, 4, 4, 3), (1, 0, 4, 3), (1, 4, 4, 5), (4, 4), (1, 1, 4, 4, 3)])
def test_unusable_shapes_raise_bad_image(shape):
    with pytest.raises(BadImage):
        comfy_to_bchw(torch.rand(shape))


def test_round_trips_preserve_pixels():
    image = torch.rand(1, 6, 4, 3)
    assert torch.equal(bchw_to_comfy(comfy_to_bchw(image)), image)
    array = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    array.flags.writeable = False  # as np.asarray(PIL image) gives it
    chw = uint8_to_chw(array)
    assert chw.shape == (3, 6, 4)
    assert np.array_equal(chw_to_uint8(chw), array)
