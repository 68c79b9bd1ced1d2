"""A narrow copy of OpenPose's body model in the key layout of `body_pose_model.pth`.

The real file (lllyasviel/Annotators) is a torch-saved dict of 184 tensors, 52 M float32 parameters,
about 200 MB: far too big for a unit test, and its architecture has no size knob. So this writes the
same layers under the same keys (`conv1_1.weight`, ..., `Mconv7_stage6_L2.bias`, with no block
prefixes) and the same kernel sizes, but with the hidden widths (64/128/256/512) cut down; the 38
part-affinity and 19 heatmap outputs, and hence the stage inputs 38 + 19 + features, keep their
meaning. `pipelines.pose.openpose` reads each layer's width from its weights, so it loads this file
and the real one through the same code. The result is about 1.6 MB.

The final heatmap layer is zero with a negative bias, so the untrained network reports no keypoints at all:
random heatmaps would otherwise give OpenPose's O(n^2) limb assembly thousands of candidates.
"""

from __future__ import annotations

from collections import OrderedDict

# Real hidden widths -> tiny ones.
TINY_WIDTHS = {64: 4, 128: 8, 256: 8, 512: 8}
PAF_CHANNELS, HEATMAP_CHANNELS = 38, 19


def body_layers() -> list[tuple[str, int, int, int]]:
    """(name, in_channels, out_channels, kernel) of every conv of the real body model, in order."""
    layers = [
        ("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3),
        ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3),
        ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3), ("conv4_3_CPM", 512, 256, 3),
        ("conv4_4_CPM", 256, 128, 3),
    ]
    for branch, out in (("L1", PAF_CHANNELS), ("L2", HEATMAP_CHANNELS)):
        layers += [(f"conv5_1_CPM_{branch}", 128, 128, 3), (f"conv5_2_CPM_{branch}", 128, 128, 3),
                   (f"conv5_3_CPM_{branch}", 128, 128, 3), (f"conv5_4_CPM_{branch}", 128, 512, 1),
                   (f"conv5_5_CPM_{branch}", 512, out, 1)]
    stage_in = PAF_CHANNELS + HEATMAP_CHANNELS + 128
    for stage in range(2, 7):
        for branch, out in (("L1", PAF_CHANNELS), ("L2", HEATMAP_CHANNELS)):
            layers += [(f"Mconv1_stage{stage}_{branch}", stage_in, 128, 7)]
            layers += [(f"Mconv{i}_stage{stage}_{branch}", 128, 128, 7) for i in range(2, 6)]
            layers += [(f"Mconv6_stage{stage}_{branch}", 128, 128, 1), (f"Mconv7_stage{stage}_{branch}", 128, out, 1)]
    return layers


def _narrow(channels: int) -> int:
    if channels == PAF_CHANNELS + HEATMAP_CHANNELS + 128:
        return PAF_CHANNELS + HEATMAP_CHANNELS + TINY_WIDTHS[128]
    return TINY_WIDTHS.get(channels, channels)


def tiny_body_state_dict(seed: int = 0) -> "OrderedDict":
    import torch

    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for name, cin, cout, k in body_layers():
        cin, cout = _narrow(cin), _narrow(cout)
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * (2.0 / (cin * k * k)) ** 0.5
        state[f"{name}.bias"] = torch.zeros(cout)
    state["Mconv7_stage6_L2.weight"].zero_()
    state["Mconv7_stage6_L2.bias"] = torch.full((HEATMAP_CHANNELS,), -1.0)
    return state


def write_tiny_openpose(path: str, seed: int = 0) -> None:
    """Write the narrow body model to `path` (.pth like the real file, or .safetensors)."""
    import torch

    state = tiny_body_state_dict(seed)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(dict(state), path)
    else:
        torch.save(state, path)
