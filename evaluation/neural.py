"""The neural metrics: LPIPS, MANIQA, CLIPIQA and MUSIQ, from local files.

Each network comes from a library and its weights from the files models/files.py names in the models folder's
diffbody/metrics/ (`--download` fetches them); each is loaded on its first call, and a rerun with every row
scored loads none. A metric whose files (or package) are missing is reported missing, never 0.
- LPIPS: models/lpips_network.py (the lpips package, AlexNet v0.1).
- MANIQA, CLIPIQA, MUSIQ: models/no_reference_iqa.py (pyiqa's MANIQA and MUSIQ, both trained on KonIQ-10k; piq's
  CLIPIQA on OpenAI CLIP RN50), with their definitions.
- Identity: models/face_identity.py, with an insightface pack the user has in insightface/models/antelopev2/ or
  insightface/models/buffalo_l/ (never downloaded), on onnxruntime. It compares the result with the ground
  truth, so it needs a reference: I_ir, the issue's other choice, is not something the evaluation keeps (each
  pipeline makes its own), so with --no-reference the identity is missing like every full-reference metric.
All take (B, 3, H, W) in 0..1 on the Scorer's device and give (B,) scores.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..models.errors import MissingModelFiles
from ..models.face_identity import IMAGE_REASONS, PACKS, FaceIdentity, face_model_paths
from ..models.lpips_network import LPIPS_FILES, load_lpips
from ..models.no_reference_iqa import (CLIPIQA_FILE, MANIQA_FILE, MUSIQ_FILE, load_clipiqa, load_maniqa,
                                       load_musiq)
from ..pipelines.image import chw_to_uint8
from .scoring import NEURAL, ImageScores, NeuralMetric


@dataclass(frozen=True)
class NetworkMetric:
    files: tuple[tuple[str, str], ...]  # (file name, folder), in the loader's argument order
    load: Callable[..., torch.nn.Module]  # file paths -> the network on the CPU
    packages: tuple[str, ...]  # the libraries with the network's code
    install: str  # how to install them
    full_reference: bool = False


NETWORKS = {
    "lpips": NetworkMetric((LPIPS_FILES["backbone"], LPIPS_FILES["linear"]), load_lpips, ("lpips",),
                           "pip install lpips", full_reference=True),
    # --no-deps: pyiqa's declared requirements bring a second OpenCV and training tools (models/no_reference_iqa.py)
    "maniqa": NetworkMetric((MANIQA_FILE,), load_maniqa, ("pyiqa", "timm"),
                            "pip install timm; pip install --no-deps pyiqa"),
    "clipiqa": NetworkMetric((CLIPIQA_FILE,), load_clipiqa, ("piq",), "pip install piq"),
    "musiq": NetworkMetric((MUSIQ_FILE,), load_musiq, ("pyiqa",), "pip install --no-deps pyiqa"),
}


def neural_metrics(models_dir: Path, *, download: bool, device: str) -> tuple[dict[str, NeuralMetric], dict[str, str]]:
    """({metric: callable} of those whose files are there, {metric: why not} of the others). A missing file
    is named with where to get it, on stderr, and its metric reported missing; --download fetches it."""
    from ..models.files import resolve_model_files

    available, unavailable = {}, {}
    identity = identity_metric(models_dir, device)
    (unavailable if isinstance(identity, str) else available)["identity"] = identity
    for name in [name for name in NEURAL if name != "identity"]:
        metric = NETWORKS[name]
        absent = [package for package in metric.packages if importlib.util.find_spec(package) is None]
        if absent:  # found now, not as a crash at the first image
            unavailable[name] = f"needs {' and '.join(absent)} ({metric.install})"
            continue
        try:
            paths = resolve_model_files(list(metric.files), models_dir, download_missing=download,
                                        hint=f"without them {name.upper()} is reported missing; ")
        except MissingModelFiles as error:
            print(f"{name.upper()} will be missing from the report:\n{error}", file=sys.stderr)
            unavailable[name] = f"no weights ({', '.join(file for file, _ in metric.files)} in diffbody/metrics/)"
            continue
        available[name] = LazyNetwork(metric, [paths[file] for file, _ in metric.files], device)
    return available, unavailable


class LazyNetwork:
    """A metric's network loaded on its first call (a rerun with every row scored loads nothing)."""

    def __init__(self, metric: NetworkMetric, paths: list[str], device: str):
        self.metric, self.paths, self.device, self.network = metric, paths, device, None

    @torch.no_grad()
    def __call__(self, result: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        if self.network is None:
            self.network = self.metric.load(*self.paths).to(self.device)
        if self.metric.full_reference:
            return self.network(result.float(), reference.float(), normalize=True).flatten()
        return self.network(result.float()).flatten()


def identity_metric(models_dir: Path, device: str) -> "LazyIdentity | str":
    """The identity metric when a pack's files and onnxruntime are there, else why not (the missing files named
    on stderr with where to put them)."""
    try:
        paths = face_model_paths(models_dir)
    except MissingModelFiles as error:
        print(f"The identity metric will be missing from the report:\n{error}", file=sys.stderr)
        packs = " or ".join(f"{' + '.join(name for name, _ in files)} in insightface/models/{pack}/"
                             for pack, files in PACKS.items())
        return f"no face models ({packs})"
    if importlib.util.find_spec("onnxruntime") is None:
        return "needs onnxruntime (pip install onnxruntime, or onnxruntime-gpu)"
    return LazyIdentity(paths, device)


class LazyIdentity:
    """The identity metric loaded on its first call. Per image pair: the cosine similarity, or a reason
    (IMAGE_REASONS: no face found) that the row records."""

    image_reasons = IMAGE_REASONS

    def __init__(self, paths: dict[str, str], device: str):
        self.paths, self.device, self.metric = paths, device, None

    def __call__(self, result: torch.Tensor, reference: torch.Tensor | None) -> ImageScores:
        if self.metric is None:
            self.metric = FaceIdentity(self.paths["detector"], self.paths["recognition"], self.device)
        found = [self.metric(chw_to_uint8(r), chw_to_uint8(ref)) for r, ref in zip(result, reference)]
        values = [math.nan if one.similarity is None else one.similarity for one in found]
        return ImageScores(torch.tensor(values, dtype=torch.float64), [one.missing for one in found])
