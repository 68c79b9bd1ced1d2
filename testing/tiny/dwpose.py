"""Tiny stand-ins for DWPose's two ONNX files, with their real interfaces.

- `yolox_l.onnx`: input "images" float32 (1,3,640,640) in 0..255 -> "output" float32 (1,8400,85):
  per anchor (stride-8, then 16, then 32 grid, row-major) the box offsets and log sizes in grid
  units, then the sigmoid objectness and 80 sigmoid class scores.
- `dw-ll_ucoco_384.onnx`: input "input" float32 (1,3,384,288), normalised RGB -> "simcc_x"
  (1,133,576) and "simcc_y" (1,133,768), SimCC split ratio 2.

The tiny detector pools the image at the three strides and runs a 1x1 convolution (so its output
depends on the image), plus a fixed per-anchor prior that makes it report the given person boxes
confidently. The tiny pose model projects the row/column means of the crop through a 1x1 convolution
and adds a per-keypoint prior peaked at a standing-person template, so its keypoints land inside the
person box. Written with `onnx.helper`; opset 17.
"""

from __future__ import annotations

import math

import numpy as np

DET_SIZE = 640
STRIDES = (8, 16, 32)
NUM_CLASSES = 80
POSE_W, POSE_H, SPLIT_RATIO = 288, 384, 2
NUM_KEYPOINTS = 133
OPSET = 17

# (cx, cy, w, h) in the 640x640 letterbox: two people side by side, inside a 480x640 (h, w) image.
DEFAULT_BOXES = ((200.0, 300.0, 160.0, 360.0), (440.0, 300.0, 160.0, 360.0))

# COCO-17 body of a person facing the camera, in crop pixels (288 x 384).
_BODY_TEMPLATE = (
    (144, 70), (150, 64), (138, 64), (158, 68), (130, 68), (170, 110), (118, 110), (182, 160),
    (106, 160), (186, 205), (102, 205), (160, 210), (128, 210), (162, 270), (126, 270), (164, 330),
    (124, 330),
)
_FEET_TEMPLATE = ((172, 340), (168, 342), (162, 336), (116, 340), (120, 342), (126, 336))


def _hand_template(wrist: tuple[float, float], direction: float) -> list[tuple[float, float]]:
    """21 hand points: the wrist, then 4 joints for each of 5 fingers fanning downwards."""
    points = [wrist]
    for finger in range(5):
        angle = math.radians(90 + direction * (finger - 2) * 15)
        points += [(wrist[0] + 4 * j * math.cos(angle), wrist[1] + 4 * j * math.sin(angle)) for j in range(1, 5)]
    return points


def keypoint_template() -> np.ndarray:
    """(133, 2) crop-pixel positions of a COCO-WholeBody person, used as the tiny model's prior."""
    face = [(144 + 13 * math.cos(2 * math.pi * i / 68), 72 + 15 * math.sin(2 * math.pi * i / 68)) for i in range(68)]
    left_hand = _hand_template(_BODY_TEMPLATE[9], 1)
    right_hand = _hand_template(_BODY_TEMPLATE[10], -1)
    points = list(_BODY_TEMPLATE) + list(_FEET_TEMPLATE) + face + left_hand + right_hand
    return np.array(points, np.float32)


def write_tiny_dwpose(det_path: str, pose_path: str, seed: int = 0,
                      boxes: tuple[tuple[float, float, float, float], ...] = DEFAULT_BOXES,
                      pose_batch: int | str = 1) -> None:
    """Write the tiny detector to `det_path` and the tiny whole-body model to `pose_path`.

    `boxes` are the (cx, cy, w, h) person boxes, in 640x640 letterbox pixels, that the detector
    reports. `pose_batch` is the pose model's batch dimension: 1 (fixed, as DWPose's own loop
    assumes) or a name such as "batch" for a dynamic one.
    """
    import onnx

    rng = np.random.default_rng(seed)
    onnx.save(_detector(rng, boxes), det_path)
    onnx.save(_pose_model(rng, pose_batch), pose_path)


def _tensor(name: str, array: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def _int64(name: str, values) -> "object":
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array(values, np.int64), name)


def _anchor_prior(boxes) -> np.ndarray:
    """(1, 8400, 85) logits/offsets: nothing anywhere except one confident person per box."""
    prior = np.zeros((1, sum((DET_SIZE // s) ** 2 for s in STRIDES), 5 + NUM_CLASSES), np.float32)
    prior[..., 4:] = -12.0  # objectness and classes, before the sigmoid
    offset = sum((DET_SIZE // s) ** 2 for s in STRIDES[:-1])
    stride, grid = STRIDES[-1], DET_SIZE // STRIDES[-1]
    for cx, cy, w, h in boxes:
        gx, gy = int(cx // stride), int(cy // stride)
        anchor = offset + gy * grid + gx
        prior[0, anchor, :4] = (cx / stride - gx, cy / stride - gy, math.log(w / stride), math.log(h / stride))
        prior[0, anchor, 4] = 8.0
        prior[0, anchor, 5] = 8.0  # class 0: person
    return prior


def _detector(rng: np.random.Generator, boxes):
    from onnx import TensorProto, helper

    channels = 5 + NUM_CLASSES
    nodes, inits, levels = [], [], []
    inits.append(_tensor("pixel_scale", np.array(1 / 255.0)))
    nodes.append(helper.make_node("Mul", ["images", "pixel_scale"], ["x01"]))
    for s in STRIDES:
        inits += [_tensor(f"head{s}.weight", rng.normal(0, 0.02, (channels, 3, 1, 1))),
                  _tensor(f"head{s}.bias", np.zeros(channels))]
        nodes += [
            helper.make_node("AveragePool", ["x01"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("Conv", [f"pool{s}", f"head{s}.weight", f"head{s}.bias"], [f"head{s}"]),
            helper.make_node("Reshape", [f"head{s}", "flat_shape"], [f"flat{s}"]),
            helper.make_node("Transpose", [f"flat{s}"], [f"level{s}"], perm=[0, 2, 1]),
        ]
        levels.append(f"level{s}")
    inits += [_int64("flat_shape", [1, channels, -1]), _tensor("anchor_prior", _anchor_prior(boxes)),
              _int64("split_sizes", [4, channels - 4])]
    nodes += [
        helper.make_node("Concat", levels, ["heads"], axis=1),
        helper.make_node("Add", ["heads", "anchor_prior"], ["raw"]),
        helper.make_node("Split", ["raw", "split_sizes"], ["reg", "logits"], axis=2),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
        helper.make_node("Concat", ["reg", "scores"], ["output"], axis=2),
    ]
    graph = helper.make_graph(
        nodes, "tiny_yolox",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, DET_SIZE, DET_SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8400, channels])],
        inits)
    return _model(graph)


def _peaks(centres: np.ndarray, bins: int, sigma: float = 3.0) -> np.ndarray:
    """(K,) bin positions -> (1, K, bins) Gaussian bumps of height 1."""
    grid = np.arange(bins, dtype=np.float32)[None]
    return np.exp(-((grid - centres[:, None]) ** 2) / (2 * sigma**2))[None]


def _pose_model(rng: np.random.Generator, batch: int | str):
    from onnx import TensorProto, helper

    template = keypoint_template() * SPLIT_RATIO
    k = NUM_KEYPOINTS
    inits = [
        _tensor("simcc_x.weight", rng.normal(0, 0.005, (k, 3, 1, 1))), _tensor("simcc_x.bias", np.zeros(k)),
        _tensor("simcc_y.weight", rng.normal(0, 0.005, (k, 3, 1, 1))), _tensor("simcc_y.bias", np.zeros(k)),
        _tensor("simcc_x.prior", _peaks(template[:, 0], POSE_W * SPLIT_RATIO)),
        _tensor("simcc_y.prior", _peaks(template[:, 1], POSE_H * SPLIT_RATIO)),
        _tensor("upsample_x", np.array([1, 1, 1, SPLIT_RATIO])),
        _tensor("upsample_y", np.array([1, 1, SPLIT_RATIO, 1])),
        _int64("squeeze_h", [2]), _int64("squeeze_w", [3]),
    ]
    nodes = []
    for axis, reduce_axis, squeeze in (("x", 2, "squeeze_h"), ("y", 3, "squeeze_w")):
        nodes += [
            helper.make_node("ReduceMean", ["input"], [f"mean_{axis}"], axes=[reduce_axis], keepdims=1),
            helper.make_node("Conv", [f"mean_{axis}", f"simcc_{axis}.weight", f"simcc_{axis}.bias"], [f"proj_{axis}"]),
            helper.make_node("Resize", [f"proj_{axis}", "", f"upsample_{axis}"], [f"up_{axis}"], mode="nearest"),
            helper.make_node("Squeeze", [f"up_{axis}", squeeze], [f"code_{axis}"]),
            helper.make_node("Add", [f"code_{axis}", f"simcc_{axis}.prior"], [f"simcc_{axis}"]),
        ]
    graph = helper.make_graph(
        nodes, "tiny_rtmpose_wholebody",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, POSE_H, POSE_W])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [batch, k, POSE_W * SPLIT_RATIO]),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [batch, k, POSE_H * SPLIT_RATIO])],
        inits)
    return _model(graph)


def _model(graph):
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="comfyui-diffbody tiny factory")
    model.ir_version = 8  # readable by every onnxruntime from 1.10 on
    onnx.checker.check_model(model, full_check=True)
    return model
