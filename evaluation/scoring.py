"""Which metrics a row gets, and the one place that turns images into a row's values.

The paper's columns (Table 1, then Table 5's colour metrics): PSNR, SSIM, LPIPS (lower is better), MANIQA,
CLIPIQA, MUSIQ, CPSNR, CSSIM; then ours beyond the paper: identity (the cosine similarity of the faces'
ArcFace embeddings, models/face_identity.py). The pixel metrics (pipelines/metrics.py) are always there; a
neural metric is there when its network is (evaluation/neural.py); one that is not is left empty in the row
and named, with the reason, in its `missing` column: a missing metric is never a 0. A metric may also have no
value for one image (identity: no face in it), with that image's reason in its row's `missing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..pipelines.metrics import PIXEL_METRICS, pixel_metrics

METRICS = ("psnr", "ssim", "lpips", "maniqa", "clipiqa", "musiq", "cpsnr", "cssim", "identity")
FULL_REFERENCE = frozenset({"psnr", "ssim", "lpips", "cpsnr", "cssim", "identity"})
LOWER_IS_BETTER = frozenset({"lpips"})
NEURAL = tuple(name for name in METRICS if name not in PIXEL_METRICS)
TITLES = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS↓", "maniqa": "MANIQA", "clipiqa": "CLIPIQA",
          "musiq": "MUSIQ", "cpsnr": "CPSNR", "cssim": "CSSIM", "identity": "Identity"}
NO_REFERENCE = "no reference image"


@dataclass(frozen=True)
class ImageScores:
    """A neural metric's values when some images have none: (B,) values (NaN where missing) and, per image,
    why not ("" where there is a value). The metric's `image_reasons` lists those reasons: facts of the images,
    which a rerun would find again, so a row missing a value for one of them is done."""

    values: torch.Tensor
    missing: list[str]


# A neural metric: (result (B, 3, H, W), reference (B, 3, H, W) or None) in 0..1 on one device -> (B,) scores,
# or ImageScores.
NeuralMetric = Callable[[torch.Tensor, "torch.Tensor | None"], "torch.Tensor | ImageScores"]


class Scorer:
    """neural: the neural metrics that can run ({name: metric}, loaded on first use by their own code);
    unavailable: {name: why not} for the others. Every neural metric must be in one of the two."""

    columns = list(METRICS)

    def __init__(self, neural: Mapping[str, NeuralMetric], unavailable: Mapping[str, str]):
        if set(neural) | set(unavailable) != set(NEURAL) or set(neural) & set(unavailable):
            raise ValueError(f"each of {', '.join(NEURAL)} must be either available or unavailable with a reason")
        self.neural = dict(neural)
        self.unavailable = dict(unavailable)
        self.image_reasons = {name: frozenset(getattr(metric, "image_reasons", ())) for name, metric in neural.items()}

    def reasons(self, has_reference: bool) -> dict[str, str]:
        """{metric: why it is empty} for a row with or without a reference."""
        reasons = {} if has_reference else {name: NO_REFERENCE for name in METRICS if name in FULL_REFERENCE}
        return {**self.unavailable, **reasons}

    def needs_work(self, row: Mapping[str, str] | None, has_reference: bool) -> bool:
        """No row yet, or a metric empty in it that can be computed now."""
        if row is None:
            return True
        empty = {name for name in METRICS if not row.get(name)}
        settled = {name for name, why in recorded_reasons(row.get("missing") or "").items()
                   if why in self.image_reasons.get(name, ())}
        return bool(empty - set(self.reasons(has_reference)) - settled)

    def score(self, results: torch.Tensor, references: torch.Tensor | None) -> list[dict[str, object]]:
        """(B, 3, H, W) results (and their references), one batch on one device -> per image {metric: value,
        or "" when missing; "missing": why}."""
        reasons = self.reasons(references is not None)
        values = dict(pixel_metrics(results, references)) if references is not None else {}
        per_image: list[dict[str, str]] = [{} for _ in range(results.shape[0])]
        for name, metric in self.neural.items():
            if name not in reasons:
                values[name] = metric(results, references if name in FULL_REFERENCE else None)
                if isinstance(values[name], ImageScores):
                    for i, why in enumerate(values[name].missing):
                        if why:
                            per_image[i][name] = why
                    values[name] = values[name].values
        return [{**{name: float(values[name][i]) if name in values and name not in per_image[i] else ""
                    for name in METRICS},
                 "missing": describe({**reasons, **per_image[i]})} for i in range(results.shape[0])]

    def all_missing(self, why: str) -> dict[str, object]:
        return {**{name: "" for name in METRICS}, "missing": f"all: {why}"}


def recorded_reasons(text: str) -> dict[str, str]:
    """describe()'s text read back: {metric: reason} (a reason holding "; " stays whole: a part that does not
    start with metric names continues the reason before it)."""
    found: dict[str, str] = {}
    names: list[str] = []
    for part in text.split("; ") if text else []:
        head, colon, reason = part.partition(": ")
        candidates = head.split(", ")
        if colon and all(name in METRICS for name in candidates):
            names = candidates
            found.update({name: reason for name in names})
        elif names:
            found.update({name: f"{found[name]}; {part}" for name in names})
    return found


def describe(reasons: Mapping[str, str]) -> str:
    """{metric: reason} -> "lpips, musiq: no weights (...); psnr: no reference image", one reason once."""
    by_reason: dict[str, list[str]] = {}
    for name in METRICS:
        if name in reasons:
            by_reason.setdefault(reasons[name], []).append(name)
    return "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())
