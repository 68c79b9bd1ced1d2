"""What `evaluate` compares: one entry per method, parsed from `--methods`.

Entries:
- `bicubic`: the LQ brought to the HQ's size by bicubic interpolation (what the pipelines are fed too).
- `stage0`, `public`, `diffbody`: the pack's own pipelines (stage 0 alone, the public-weights mode, the full
  DiffBody), run by the command line (cli.py builds them with the restore command's options and the modes'
  defaults from pipelines/presets.py); they take the bicubic image and restore it at its size (upscale 1).
- `sr:FILE`: any super-resolution network spandrel loads (Real-ESRGAN, BSRGAN, ...), run on the LQ itself;
  a result of another size than the HQ (an x4 network on a preset without downscaling) is resized to it.
- `folder:DIR`: results another tool wrote (SUPIR, DiffBIR, PASD, ...), matched by file name: for photo
  `STEM` under preset `P`, DIR/P/STEM.* (a tool run on `--out`/lq/P/), else DIR/STEM.*.

A pipeline entry may carry settings after `@`, comma-separated, which override the command's own for that
entry only: `diffbody@adapter_weight=0` (no colour adapter), `diffbody@strengths=1/1/0/1` (no depth prior),
`public@stage2_steps=30,cfg=4`. Each entry is one column of the report, named by the entry as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from ..pipelines.restore import RestoreJob

PIPELINE_METHODS = ("stage0", "public", "diffbody")
DEFAULT_METHODS = ("bicubic", "stage0", "public", "diffbody")
# setting -> how its text becomes the restore command's argument value
SETTINGS: dict[str, Callable[[str], object]] = {
    "stage1_steps": int, "stage2_steps": int, "stage1_scheduler": str, "stage2_scheduler": str,
    "stage1_cfg": float, "cfg": float, "adapter_weight": float, "seed": int, "fast": lambda text: text == "1",
    "strengths": lambda text: [float(value) for value in text.split("/")],
}


class MethodError(ValueError):
    """A --methods entry that cannot be run."""


@dataclass(frozen=True)
class MethodSpec:
    """One parsed --methods entry."""

    text: str  # as written
    kind: str  # bicubic, stage0, public, diffbody, sr, folder
    argument: str = ""  # sr's file, folder's folder
    settings: dict = field(default_factory=dict)  # restore-option name -> value (pipelines only)

    @property
    def label(self) -> str:
        """The entry as a folder name (results/<label>/) and the report's column: sr-<file's stem>,
        folder-<folder's name>, or the entry with its settings."""
        text = {"sr": f"sr-{Path(self.argument).stem}", "folder": f"folder-{Path(self.argument).name}"}.get(
            self.kind, self.text)
        return re.sub(r"[^A-Za-z0-9._=@,+-]+", "_", text).strip("_")


def parse_method(text: str) -> MethodSpec:
    kind, _, argument = text.partition(":")
    if kind in ("sr", "folder"):
        if not argument:
            raise MethodError(f"method {text!r}: {kind}: needs a {'file' if kind == 'sr' else 'folder'} after ':'")
        return MethodSpec(text, kind, argument)
    kind, _, settings = text.partition("@")
    if kind not in ("bicubic", *PIPELINE_METHODS) or argument:
        raise MethodError(f"unknown method {text!r}; choose from bicubic, stage0, public, diffbody, sr:FILE, "
                          "folder:DIR (pipelines may add @setting=value,...)")
    if settings and kind not in PIPELINE_METHODS:
        raise MethodError(f"method {text!r}: only stage0, public and diffbody take settings")
    return MethodSpec(text, kind, settings=_parse_settings(text, settings))


def _parse_settings(text: str, settings: str) -> dict:
    parsed = {}
    for pair in filter(None, settings.split(",")):
        name, equals, value = pair.partition("=")
        if not equals or name not in SETTINGS:
            raise MethodError(f"method {text!r}: {pair!r} is not setting=value with a setting among "
                              f"{', '.join(SETTINGS)}")
        try:
            parsed[name] = SETTINGS[name](value)
        except ValueError as error:
            raise MethodError(f"method {text!r}: {name}={value!r}: {error}") from None
        if name == "strengths" and len(parsed[name]) != 4:
            raise MethodError(f"method {text!r}: strengths takes four values a1/a2/a3/a4, got {value!r}")
    return parsed


def parse_methods(texts: list[str]) -> list[MethodSpec]:
    specs = [parse_method(text) for text in texts]
    labels = [spec.label for spec in specs]
    doubled = sorted({label for label in labels if labels.count(label) > 1})
    if doubled:
        raise MethodError(f"methods named twice: {', '.join(doubled)}")
    return specs


# A restorer: (1, 3, H, W) inputs in 0..1 -> one (3, H', W') result each, all in one call, so the networks
# are loaded once for the whole run.
Restorer = Callable[[list[torch.Tensor]], list[torch.Tensor]]


@dataclass
class Method:
    """A method ready to run. `make_restorer` is called only when some result is missing (a rerun with every
    result written loads nothing); `takes` says which image it is fed: "lq" (the degraded image itself) or
    "upsampled" (the LQ at the HQ's size). A folder method has neither: its results are found, not made.
    A pipeline method has `make_job` instead: its images -> a RestoreJob (pipelines/restore.py), so that all
    pipeline methods run in one restore_jobs call and share their networks (each loaded once in the run)."""

    spec: MethodSpec
    make_restorer: Callable[[], Restorer] | None = None
    takes: str = "upsampled"
    make_job: "Callable[[list[torch.Tensor]], RestoreJob] | None" = None
    _restorer: Restorer | None = None

    @property
    def label(self) -> str:
        return self.spec.label

    def restore(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        if self._restorer is None:
            self._restorer = self.make_restorer()
        return self._restorer(images)

    def found_result(self, preset: str, stem: str) -> Path | None:
        """folder: the other tool's file for this photo and preset, or None."""
        from ..training.prepare_data import IMAGE_SUFFIXES

        folder = Path(self.spec.argument)
        for place in (folder / preset, folder):
            matches = sorted(p for p in place.glob(f"{glob_escape(stem)}.*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if matches:
                return matches[0]
        return None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def bicubic_method(spec: MethodSpec) -> Method:
    """The bicubic image is the input itself (the runner makes it for every method)."""
    return Method(spec, lambda: lambda images: [image[0] for image in images])


def sr_method(spec: MethodSpec, device: torch.device) -> Method:
    """sr:FILE: the network is loaded on first use, then run on each whole LQ image."""
    def make() -> Restorer:
        from ..models.swinir import load_image_model

        path = Path(spec.argument)
        if not path.is_file():
            raise MethodError(f"method {spec.text!r}: no such file: {path}")
        model = load_image_model(str(path)).to(device)
        return lambda images: [_run_image_model(model, image, device) for image in images]

    return Method(spec, make, takes="lq")


@torch.no_grad()
def _run_image_model(model, image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(1, 3, H, W) -> (3, H*scale, W*scale) float32 on the CPU; the image is padded by its edges to the
    network's multiple and the padding cut off again."""
    import torch.nn.functional as F

    multiple = model.size_requirements.multiple_of
    h, w = image.shape[-2:]
    padded = F.pad(image, (0, (-w) % multiple, 0, (-h) % multiple), mode="replicate")
    out = model(padded.to(device, torch.float32)).clamp(0, 1)
    return out[0, :, :h * model.scale, :w * model.scale].float().cpu()


def folder_method(spec: MethodSpec) -> Method:
    if not Path(spec.argument).is_dir():
        raise MethodError(f"method {spec.text!r}: no such folder: {spec.argument}")
    return Method(spec, None, takes="")
