"""LPIPS (Zhang et al. 2018), version 0.1 on AlexNet (the paper's usual choice, and pyiqa's default).

The `lpips` package's network (richzhang/PerceptualSimilarity, the reference code) built with no weights,
then given two local files (models/files.py names them and their sources, folder diffbody/metrics/):
- alexnet-owt-7be5be79.pth: torchvision's ImageNet AlexNet (keys features.{0,3,6,8,10}.{weight,bias}, and the
  classifier's, which LPIPS does not use);
- LPIPS_v0.1_alex-df73285e.pth: the five linear layers (keys lin{0..4}.model.1.weight), byte for byte the
  lpips package's weights/v0.1/alex.pth, as pyiqa publishes it.
Both are read with weights_only (models/loading.py) and their keys and shapes checked before use. The
network takes RGB in 0..1 with `normalize=True` (it scales to -1..1 itself) and gives the spatial mean
distance, (B, 1, 1, 1); lower is more similar. Used by the evaluation and the DiffBody Image Metrics node.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MissingDependency
from .loading import check_state_dict, read_state_dict

LPIPS_FILES = {"backbone": ("alexnet-owt-7be5be79.pth", "diffbody_metrics"),
               "linear": ("LPIPS_v0.1_alex-df73285e.pth", "diffbody_metrics")}
ALEXNET_LAYERS = (0, 3, 6, 8, 10)  # AlexNet's conv layers; LPIPS reads one after each (its slices 1-5)
LPIPS_CHANNELS = (64, 192, 384, 256, 256)


def load_lpips(backbone_path: str, linear_path: str):
    """The lpips package's LPIPS (AlexNet, v0.1) with the weights of the two files, in eval mode on the CPU."""
    try:
        import lpips
    except ImportError as error:
        raise MissingDependency("LPIPS needs the lpips package: pip install lpips "
                                "(or pip install 'comfyui-diffbody[eval]')") from error
    backbone = read_state_dict(backbone_path, expected="torchvision's AlexNet (alexnet-owt-7be5be79.pth)")
    convs = {f"features.{layer}.{part}": backbone.get(f"features.{layer}.{part}")
             for layer in ALEXNET_LAYERS for part in ("weight", "bias")}
    check_state_dict(_alexnet_shapes(), {k: v for k, v in convs.items() if v is not None},
                     name=Path(backbone_path).name, expected="torchvision's AlexNet features", path=backbone_path)
    linear = read_state_dict(linear_path, expected="LPIPS v0.1 linear layers for AlexNet")
    check_state_dict({f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)}, linear,
                     name=Path(linear_path).name, expected="LPIPS v0.1 linear layers for AlexNet", path=linear_path)
    network = lpips.LPIPS(pretrained=False, net="alex", version="0.1", pnet_rand=True, verbose=False)
    state = network.state_dict()  # the scaling layer's constants, and the layout to fill
    for slice_index, layer in enumerate(ALEXNET_LAYERS, start=1):
        for part in ("weight", "bias"):
            state[f"net.slice{slice_index}.{layer}.{part}"] = convs[f"features.{layer}.{part}"]
    for i in range(len(LPIPS_CHANNELS)):
        state[f"lin{i}.model.1.weight"] = state[f"lins.{i}.model.1.weight"] = linear[f"lin{i}.model.1.weight"]
    network.load_state_dict(state, strict=True)
    return network.eval()


def _alexnet_shapes() -> dict[str, tuple[int, ...]]:
    shapes, channels_in = {}, 3
    for layer, channels, kernel in zip(ALEXNET_LAYERS, LPIPS_CHANNELS, (11, 5, 3, 3, 3)):
        shapes[f"features.{layer}.weight"] = (channels, channels_in, kernel, kernel)
        shapes[f"features.{layer}.bias"] = (channels,)
        channels_in = channels
    return shapes
