"""OpenPose body (COCO-18) through controlnet_aux's network definition and inference.

controlnet_aux's own `Body(model_path)` unpickles the file with a plain `torch.load`; we never do.
We read the weights ourselves (safetensors, or a .pth with `torch.load(weights_only=True)`), build
`bodypose_model` on the meta device, give each convolution the width its weights have (so the same
loader takes the real 200 MB file and the narrow test copy), check the shapes with a meta forward
pass, and hand the loaded network to controlnet_aux's `Body.__call__` (heatmaps + part affinity
fields, greedy limb assembly).

Keys follow `body_pose_model.pth` (lllyasviel/Annotators): `conv1_1.weight`, `Mconv7_stage6_L2.bias`,
... (the network's block prefixes `model0.`, `model1_1.` ... are absent); prefixed keys are accepted too.
"""

from __future__ import annotations

import os

import numpy as np

from ...models.errors import MissingDependency, MissingModelFile, WrongModelFile
from ...models.loading import read_weights
from .keypoints import NUM_BODY, Frame, check_rgb_uint8, make_frame, make_person, flatten_part

DETECT_RESOLUTION = 512  # short side the image is resized to, as controlnet_aux's OpenPose node does


def _controlnet_aux_openpose():
    try:
        import warnings

        with warnings.catch_warnings():  # importing controlnet_aux warns about every optional extra
            warnings.simplefilter("ignore")
            from controlnet_aux.open_pose.body import Body
            from controlnet_aux.open_pose.model import bodypose_model
    except ImportError as e:
        raise MissingDependency("The OpenPose backend needs controlnet_aux: pip install controlnet_aux "
                                "(or choose the DWPose backend)") from e
    return Body, bodypose_model


def load_state_dict(path: str) -> dict:
    """Tensors of a body-pose checkpoint, read without unpickling code."""
    import torch

    if not os.path.isfile(path):
        raise MissingModelFile(f"DiffBody: OpenPose body model not found: {path}")
    state = read_weights(path, expected="OpenPose's body model (body_pose_model.pth)")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WrongModelFile(f"DiffBody: '{path}' does not hold a state dict of tensors")
    return state


def build_body_network(state_dict: dict):
    """controlnet_aux's `bodypose_model` with each conv's width taken from `state_dict`, loaded."""
    import torch
    from torch import nn

    _, bodypose_model = _controlnet_aux_openpose()
    with torch.device("meta"):
        net = bodypose_model()
    weights = {}
    for name, module in list(net.named_modules()):
        if not isinstance(module, nn.Conv2d):
            continue
        block, layer = name.split(".", 1)
        key = layer if f"{layer}.weight" in state_dict else name
        if f"{key}.weight" not in state_dict or f"{key}.bias" not in state_dict:
            raise WrongModelFile(f"DiffBody: the OpenPose body model has no weights for layer '{layer}'; "
                                 "is this body_pose_model.pth?")
        w = state_dict[f"{key}.weight"]
        if w.ndim != 4 or tuple(w.shape[2:]) != module.kernel_size:
            raise WrongModelFile(f"DiffBody: OpenPose layer '{layer}' has weights of shape {tuple(w.shape)}")
        with torch.device("meta"):
            conv = nn.Conv2d(w.shape[1], w.shape[0], module.kernel_size, module.stride, module.padding)
        getattr(net, block)._modules[layer] = conv
        weights[f"{name}.weight"], weights[f"{name}.bias"] = w.float(), state_dict[f"{key}.bias"].float()
    try:  # shapes only: the meta device computes nothing
        paf, heat = net(torch.empty(1, 3, 64, 64, device="meta"))
    except RuntimeError as e:
        raise WrongModelFile(f"DiffBody: the OpenPose body weights do not fit together ({e})") from e
    if paf.shape[1] != 38 or heat.shape[1] != 19:
        raise WrongModelFile(f"DiffBody: an OpenPose body model gives 38 PAF and 19 heatmap channels, "
                             f"this one {paf.shape[1]} and {heat.shape[1]}")
    net.load_state_dict(weights, strict=True, assign=True)
    return net.eval()


class OpenPoseBodyEstimator:
    """OpenPose body keypoints of every person found: `estimator(rgb_uint8_image) -> frame` (no hands/face)."""

    def __init__(self, model_path: str, device: str = "cpu", detect_resolution: int = DETECT_RESOLUTION):
        Body, _ = _controlnet_aux_openpose()
        self.body = Body.__new__(Body)  # Body.__init__ would unpickle the file itself
        self.body.model = build_body_network(load_state_dict(model_path)).to(device)
        self.detect_resolution = detect_resolution

    def __call__(self, image: np.ndarray) -> Frame:
        import cv2

        image = check_rgb_uint8(image)
        h, w = image.shape[:2]
        scale = self.detect_resolution / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
        bgr = np.ascontiguousarray(resized[:, :, ::-1])  # the Caffe-trained network wants BGR
        candidate, subset = self.body(bgr)
        sx, sy = w / size[0], h / size[1]
        return make_frame(people_from_assembly(candidate, subset, sx, sy), h, w)


def people_from_assembly(candidate: np.ndarray, subset: np.ndarray, sx: float = 1.0, sy: float = 1.0) -> list[dict]:
    """OpenPose's (candidate, subset) -> persons, coordinates scaled by (sx, sy).

    candidate: (P, 4) rows of x, y, score, id; subset: (N, 20) rows of 18 candidate indices (-1 when
    the part is missing), total score, part count.
    """
    people = []
    for row in np.asarray(subset).reshape(-1, 20):
        index = row[:NUM_BODY].astype(int)
        found = index >= 0
        xy = np.zeros((NUM_BODY, 2), np.float32)
        xy[found] = np.asarray(candidate)[index[found], :2] * np.float32([sx, sy])
        people.append(make_person(flatten_part(xy, found.astype(np.float32), threshold=0.5)))
    return people
