"""The neural metrics: LPIPS here; MANIQA, CLIPIQA and MUSIQ reported as missing, with the reason.

LPIPS: models/lpips_network.py, from the two files models/files.py names in the models folder's diffbody/metrics/
(`--download` fetches them); loaded on first use.

MANIQA, CLIPIQA, MUSIQ: their only maintained PyTorch implementations are pyiqa's, and pyiqa 0.1.16 does
not fit ComfyUI's environment: it requires facexlib (which requires opencv-python, a second cv2 beside the
opencv-python-headless ComfyUI and this pack use) and installs pytest, ruff, pre-commit, tensorboard,
datasets and bitsandbytes as run-time requirements. Until a lighter source exists they are reported missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..models.errors import MissingModelFiles
from ..models.lpips_network import LPIPS_FILES, load_lpips
from .scoring import NEURAL, NeuralMetric
NOT_AVAILABLE = ("needs pyiqa's network, and pyiqa's requirements clash with ComfyUI's environment "
                 "(evaluation/neural.py)")


def neural_metrics(models_dir: Path, *, download: bool, device: str) -> tuple[dict[str, NeuralMetric], dict[str, str]]:
    """({metric: callable} of those whose files are there, {metric: why not} of the others). A missing file
    is named with where to get it, on stderr, and its metric reported missing; --download fetches it."""
    from ..models.files import resolve_model_files

    available, unavailable = {}, {name: NOT_AVAILABLE for name in NEURAL if name != "lpips"}
    try:
        paths = resolve_model_files(list(LPIPS_FILES.values()), models_dir, download_missing=download,
                                    hint="without them LPIPS is reported missing; ")
    except MissingModelFiles as error:
        print(f"LPIPS will be missing from the report:\n{error}", file=sys.stderr)
        unavailable["lpips"] = f"no weights ({', '.join(name for name, _ in LPIPS_FILES.values())} in diffbody/metrics/)"
        return available, unavailable
    available["lpips"] = LazyLpips(paths[LPIPS_FILES["backbone"][0]], paths[LPIPS_FILES["linear"][0]], device)
    return available, unavailable


class LazyLpips:
    """LPIPS loaded on its first call (a rerun with every row scored loads nothing)."""

    def __init__(self, backbone: str, linear: str, device: str):
        self.files, self.device, self.network = (backbone, linear), device, None

    @torch.no_grad()
    def __call__(self, result: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        if self.network is None:
            self.network = load_lpips(*self.files).to(self.device)
        return self.network(result.float(), reference.float(), normalize=True).flatten()
