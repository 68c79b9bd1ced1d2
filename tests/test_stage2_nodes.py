"""Stage-2 node logic that needs no ComfyUI: the public-weights (ControlNet-Union) chaining and how
controls are attached to CONDITIONING."""

from __future__ import annotations

import pytest
import torch

from comfyui_diffbody.nodes.stage2 import UNION_TYPES, ApplyMultiPriorControlNet, _with_control, union_priors_control
from comfyui_diffbody.pipelines.stage2_errors import Stage2Error


class FakeUnion:
    """Records what ComfyUI's ControlNet would be told (copy, set_extra_arg, set_cond_hint, chaining)."""

    def __init__(self):
        self.extra, self.hint, self.strength, self.range, self.previous = {}, None, None, None, None

    def copy(self):
        return FakeUnion()

    def set_extra_arg(self, name, value):
        self.extra[name] = value

    def set_cond_hint(self, hint, strength, percent_range, vae=None):
        self.hint, self.strength, self.range = hint, strength, percent_range
        return self

    def set_previous_controlnet(self, previous):
        self.previous = previous
        return self


def chain_of(control):
    chain = []
    while control is not None:
        chain.append(control)
        control = control.previous
    return chain[::-1]


def priors(height=16, width=24):
    return {name: torch.full((1, height, width, 3), i / 4) for i, name in enumerate(("image", "pose", "depth", "normal"))}


def test_union_mode_applies_each_prior_with_its_type_and_strength():
    strengths = {"image": 1.0, "pose": 0.5, "depth": 0.0, "normal": 0.25}
    last = union_priors_control(FakeUnion(), priors(), strengths, 0.8, (0.1, 0.9))
    chain = chain_of(last)
    assert [c.extra["control_type"] for c in chain] == [[UNION_TYPES["image"]], [UNION_TYPES["pose"]],
                                                        [UNION_TYPES["normal"]]]
    assert [c.strength for c in chain] == [0.8, 0.4, 0.2]
    assert all(c.range == (0.1, 0.9) and c.hint.shape == (1, 3, 16, 24) for c in chain)
    assert torch.all(chain[1].hint == 0.25)  # the pose image went to the pose copy


def test_union_mode_keeps_earlier_controls_in_the_chain():
    earlier = FakeUnion()
    last = union_priors_control(FakeUnion(), priors(), {"pose": 1.0}, 1.0, (0.0, 1.0), previous=earlier)
    assert chain_of(last)[0] is earlier


def test_attaching_shares_one_control_per_previous_and_never_mutates_inputs():
    positive = [[torch.zeros(1, 77, 8), {"pooled_output": torch.zeros(1, 4)}], [torch.ones(1, 77, 8), {}]]
    negative = [[torch.zeros(1, 77, 8), {}]]
    made = []

    def attach(previous):
        made.append(previous)
        return f"control after {previous}"

    new_positive, new_negative = _with_control(positive, negative, attach)
    assert made == [None]  # all entries had no control: one shared new control
    assert all(options["control"] == "control after None" for _, options in new_positive + new_negative)
    assert all("control" not in options for _, options in positive + negative)


def test_zero_strengths_return_the_inputs_untouched():
    positive, negative = [[torch.zeros(1, 77, 8), {}]], [[torch.zeros(1, 77, 8), {}]]
    node = ApplyMultiPriorControlNet()
    images = priors(64, 64)
    out = node.apply(positive, negative, FakeUnion(), images["image"], images["pose"], images["depth"],
                     images["normal"], 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0)
    assert out[0] is positive and out[1] is negative


@pytest.mark.parametrize("height,width", [(1, 1), (9, 17), (2048, 8), (8, 2048), (63, 512)])
def test_images_too_small_for_stage_2_get_a_message_naming_size_and_remedy(height, width):
    """The bundled workflows sample SDXL at I_ir's size; a 1x1 photo used to reach the KSampler and fail there
    with ZeroDivisionError. The apply node (the first stage-2 node to see I_ir) says what is wrong instead."""
    positive, negative = [[torch.zeros(1, 77, 8), {}]], [[torch.zeros(1, 77, 8), {}]]
    images = priors(height, width)
    with pytest.raises(Stage2Error, match=rf"image prior is {width}x{height} px.*at least 64 px.*upscale"):
        ApplyMultiPriorControlNet().apply(positive, negative, FakeUnion(), images["image"], images["pose"],
                                          images["depth"], images["normal"], 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0)


def test_the_canvas_takes_grey_rgba_and_unbatched_images_as_batched_rgb():
    """Every pack node takes what other nodes hand it; the canvas read its size from shape[1:3], which for an
    unbatched (H, W, C) IMAGE is (W, C)."""
    from comfyui_diffbody.nodes.canvas import Stage2Canvas

    rgb = torch.rand(1, 40, 24, 3, generator=torch.Generator().manual_seed(0))
    grey = rgb[..., :1]
    variants = {"batched RGB": rgb, "unbatched": rgb[0], "RGBA": torch.cat([rgb, torch.ones_like(grey)], -1)}
    results = {name: Stage2Canvas().to_canvas(image, image, image, image, image, "bucket")
               for name, image in variants.items()}
    reference = results["batched RGB"]
    for name, result in results.items():
        for placed, expected in zip(result[:5], reference[:5]):
            assert placed.shape == expected.shape == (1, 768, 512, 3) and torch.equal(placed, expected), name
    grey_result = Stage2Canvas().to_canvas(grey, grey, grey, grey, grey, "native")[0]
    assert grey_result.shape[-1] == 3 and torch.equal(grey_result[..., 0], grey_result[..., 2])
