"""Depth and normal priors from public estimators: the public-weights mode's I_depth / I_normal (stage 2
without stage-1 weights) and the depth/normal annotation of training data.

Depth: Depth Anything V2 or DPT/MiDaS (models/depth_estimator.py), relative inverse depth at the input
size, each image normalised to 0..1 with NEAR = BRIGHT (the MiDaS / ControlNet depth-map convention),
returned as a 3-channel grey image.

Normals: Marigold (models/normal_estimator.py), or, without a normal model, "from depth": the gradients
of the estimated depth, as ControlNet 1.0's normal-midas annotator made them.

The normal-map colour convention (the one the whole pack uses):
    colour = (n + 1) / 2 for a unit normal n = (n_x, n_y, n_z) in the camera frame with
    X pointing to the image's LEFT, Y UP and Z TOWARDS THE VIEWER;
    so red = facing left, green = facing up, blue = facing the camera, and a surface facing the camera
    is (0.5, 0.5, 1.0), lavender blue. This is ControlNet 1.1's normal convention ("blue is front, red is
    left, green is top", the NormalBae annotator's), which ControlNet 1.0's normal-from-MiDaS maps also
    follow. Stage 1's I_normal is whatever its training data taught it, and that data is annotated by
    this module (training/prepare_data.py), so I_normal, the multi-prior ControlNet's normal input and
    ControlNet-Union's "normal" type (used by the public-weights mode) all receive this convention.
    Marigold predicts X to the RIGHT, so its X is flipped here.

From-depth normals: with D the 0..1 inverse depth (near = 1) and x right / y down in pixels, the normal
is proportional to (dD/dx, dD/dy, 1) with the gradients measured per image length (the longer side),
so a surface whose depth runs over the full 0..1 range across the whole image tilts by 45 degrees,
whatever the resolution. Check of the signs: on a floor the image's bottom is nearest, D grows
downwards, dD/dy > 0, so green > 0.5: facing up; on the left flank of a body D grows towards the
body's centre (to the right), dD/dx > 0, red > 0.5: facing left.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .image import check_bchw

FROM_DEPTH = "from depth"
ProgressFn = Callable[[int, int], None]


def load_depth_normal_estimator(depth_model_dir: str, normal_model_dir: str | None = None, *,
                                device="cpu", dtype=None, normal_steps: int | None = None,
                                seed: int = 0) -> "DepthNormalEstimator":
    """Load the depth model folder and, if given, a Marigold normals folder (None: normals computed
    from the estimated depth). dtype None: float32. normal_steps (Marigold's denoising steps; None:
    the model's default) and seed (Marigold's noise) only matter with a normal model."""
    from ..models.depth_estimator import DepthEstimator

    depth = DepthEstimator.load(depth_model_dir, device=device, dtype=dtype)
    normals = None
    if normal_model_dir is not None:
        from ..models.normal_estimator import MarigoldNormals

        normals = MarigoldNormals.load(normal_model_dir, device=device, dtype=dtype)
    return DepthNormalEstimator(depth, normals, normal_steps=normal_steps, seed=seed)


class DepthNormalEstimator:
    """Depth (near = bright) and normal maps (the colour convention above) for a batch of images."""

    def __init__(self, depth, normals=None, *, normal_steps: int | None = None, seed: int = 0):
        self.depth = depth
        self.normals = normals  # None: normals from the depth
        self.normal_steps = normal_steps
        self.seed = seed

    def estimate(self, images: torch.Tensor, progress: ProgressFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B,3,H,W) float in 0..1 -> (depth (B,3,H,W) grey in 0..1, normal (B,3,H,W) in 0..1), both
        float32 on the CPU at the input size. One image at a time on the estimators' device (each result
        is independent of the batch); `progress(done, total)` after each image - an exception it raises
        (ComfyUI's cancel) stops the run."""
        check_bchw(images, "the images for depth/normal estimation", floats_only=False)
        device = self.depth.device
        depths, normals = [], []
        for index in range(images.shape[0]):
            image = images[index:index + 1].to(device)
            depth = self.depth.predict(image)
            if self.normals is None:
                normal = normals_from_depth(depth)
            else:
                predicted = self.normals.predict(image, steps=self.normal_steps, seed=self.seed + index)
                normal = marigold_to_colour(predicted)
            depths.append(depth.expand(-1, 3, -1, -1).float().cpu())
            normals.append(normal.float().cpu())
            if progress is not None:
                progress(index + 1, images.shape[0])
        return torch.cat(depths), torch.cat(normals)

    def to(self, device) -> "DepthNormalEstimator":
        self.depth.to(device)
        if self.normals is not None:
            self.normals.to(device)
        return self

    def size_bytes(self) -> int:
        return self.depth.size_bytes() + (self.normals.size_bytes() if self.normals is not None else 0)


def marigold_to_colour(normals: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) Marigold unit normals (X right, Y up, Z to the viewer) -> colours in the pack's convention."""
    flipped = normals * normals.new_tensor([-1.0, 1.0, 1.0]).view(1, 3, 1, 1)
    return ((flipped + 1) / 2).clamp(0, 1)


def normals_from_depth(depth: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) inverse depth in 0..1 (near = bright) -> (B,3,H,W) normal colours in the pack's convention
    (see the module docstring for the formula and the signs)."""
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"expected depth of shape (batch, 1, height, width), got {tuple(depth.shape)}")
    depth = depth.float()
    # Sobel kernels divided by 8: a derivative per pixel (x right, y down), with a little smoothing.
    sobel_x = depth.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    kernels = torch.stack([sobel_x, sobel_x.t()]).unsqueeze(1)  # (2, 1, 3, 3): d/dx, d/dy
    padded = F.pad(depth, (1, 1, 1, 1), mode="replicate")
    gradients = F.conv2d(padded, kernels) * max(depth.shape[-2:])  # per image length, not per pixel
    vectors = torch.cat([gradients, torch.ones_like(depth)], dim=1)
    unit = vectors / vectors.norm(dim=1, keepdim=True)
    return ((unit + 1) / 2).clamp(0, 1)
