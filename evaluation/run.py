"""The evaluation run: degrade, restore, score; each step skips what an earlier run left in `--out`.

Layout of `--out`:
- lq/<preset>/<stem>.png: each HQ photo under each Table-1 preset (training/degradations.py), seeded per
  photo and preset, at the preset's own size (x4 smaller for the SR presets): the inputs for other tools.
- results/<method>/<preset>/<stem>.png: each method's result (folder: methods are read where they are).
- metrics.csv: one row per photo x preset x method, a column per metric; an empty cell is a metric that
  could not be computed (the `missing` column says why), never a 0.
- the report (evaluation/report.py): summary.md, plots/, sheets/.

The HQ photo is cropped at its bottom and right edges to multiples of 4 (the presets' x4 downscale) and
that crop is the reference. With `no_reference` (real low-quality photos, as the paper's Market-1501) the
photos are the LQ themselves (preset "real"), brought up by `scale` and scored with no-reference metrics.
"""

from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..pipelines.image import chw_to_uint8, uint8_to_chw
from ..pipelines.restore import Progress, restore_jobs, tqdm_progress
from ..training.degradations import PRESETS, SR_FACTOR, apply_preset, quantize_8bit, resize
from ..training.prepare_data import IMAGE_SUFFIXES, save_png
from .methods import Method
from .scoring import Scorer

REAL = "real"  # the preset name of real low-quality photos (no-reference mode)
KEY_COLUMNS = ("image", "preset", "method")
METRICS_CSV = "metrics.csv"
SCORE_BATCH = 8  # results scored together on the device


@dataclass(frozen=True)
class EvalConfig:
    photos: Path  # folder of HQ photos (of LQ photos with no_reference)
    out: Path
    presets: tuple[str, ...] = tuple(PRESETS)
    limit: int = 0  # 0: every photo
    no_reference: bool = False
    scale: int = SR_FACTOR  # no_reference: how much the methods enlarge a real LQ photo
    seed: int = 0
    device: str = "cpu"


@dataclass
class Case:
    """One photo under one preset."""

    stem: str
    preset: str
    lq: torch.Tensor  # (1, 3, h, w)
    upsampled: torch.Tensor  # (1, 3, H, W): the LQ bicubically at the HQ's size (what the pipelines restore)
    reference: torch.Tensor | None  # (1, 3, H, W) HQ; None for a real LQ photo
    original_size: tuple[int, int]  # the HQ before its crop to multiples of 4


def find_photos(folder: Path, limit: int = 0) -> list[Path]:
    if not folder.is_dir():
        raise SystemExit(f"error: no such folder: {folder}")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise SystemExit(f"error: no images in {folder}")
    return photos[:limit] if limit else photos


def read_image(path: Path) -> torch.Tensor:
    """(1, 3, H, W) float 0..1."""
    from PIL import Image

    with Image.open(path) as image:
        return uint8_to_chw(np.asarray(image.convert("RGB"))).unsqueeze(0)


def case_seed(seed: int, preset: str, stem: str) -> int:
    """A photo's seed under a preset: fixed by the names, so adding photos changes no other photo's LQ."""
    return (seed * 1_000_003 + zlib.crc32(f"{preset}/{stem}".encode("utf-8"))) % (2 ** 63)


def prepare_cases(config: EvalConfig, progress: Progress = tqdm_progress) -> list[Case]:
    """Every photo x preset, the LQ read from lq/ when an earlier run wrote it, else made and written."""
    photos = find_photos(config.photos, config.limit)
    presets = (REAL,) if config.no_reference else config.presets
    cases = []
    with progress("degrading", len(photos) * len(presets), "image") as bar:
        for path in photos:
            photo = read_image(path)
            for preset in presets:
                cases.append(_real_case(path.stem, photo, config.scale) if preset == REAL
                             else _degraded_case(path.stem, photo, preset, config))
                bar.update(1)
    return cases


def _degraded_case(stem: str, photo: torch.Tensor, preset: str, config: EvalConfig) -> Case:
    h, w = photo.shape[-2:]
    hq = photo[..., :h - h % SR_FACTOR, :w - w % SR_FACTOR]
    lq_path = config.out / "lq" / preset / f"{stem}.png"
    if lq_path.is_file():
        lq = read_image(lq_path)
    else:
        generator = torch.Generator().manual_seed(case_seed(config.seed, preset, stem))
        lq = apply_preset(preset, hq, generator)
        save_png(lq_path, chw_to_uint8(lq[0]))
    return Case(stem, preset, lq, upsample(lq, tuple(hq.shape[-2:])), hq, (h, w))


def _real_case(stem: str, photo: torch.Tensor, scale: int) -> Case:
    h, w = photo.shape[-2:]
    return Case(stem, REAL, photo, upsample(photo, (h * scale, w * scale)), None, (h * scale, w * scale))


def upsample(lq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The `bicubic` method: the LQ at `size`, on the 8-bit grid (as its PNG holds it)."""
    if tuple(lq.shape[-2:]) == tuple(size):
        return lq
    return quantize_8bit(resize(lq, size, "bicubic"))


def result_path(config: EvalConfig, method: Method, case: Case) -> Path | None:
    if method.spec.kind == "folder":
        return method.found_result(case.preset, case.stem)
    return config.out / "results" / method.label / case.preset / f"{case.stem}.png"


def restore_missing(config: EvalConfig, methods: list[Method], cases: list[Case],
                    progress: Progress = tqdm_progress) -> dict[str, int]:
    """Write every missing result; returns {method: results written}. Each method runs once over all its
    missing cases, and the pipeline methods all together in one restore_jobs call, so every network loads
    once in the run (SwinIR, the pose model, LLaVA and SDXL serve several methods). A folder method writes
    nothing."""
    written, jobs = {}, []
    for method in methods:
        if method.spec.kind == "folder":
            continue
        pending = [case for case in cases if not result_path(config, method, case).is_file()]
        written[method.label] = len(pending)
        if not pending:
            continue
        print(f"{method.label}: restoring {len(pending)} image(s) "
              f"({len(cases) - len(pending)} already in {config.out / 'results' / method.label})", flush=True)
        inputs = [case.lq if method.takes == "lq" else case.upsampled for case in pending]
        if method.make_job is not None:
            jobs.append((method, pending, method.make_job(inputs)))
        else:
            _save_results(config, method, pending, method.restore(inputs), progress)
    if jobs:
        restore_jobs([job for _, _, job in jobs], progress)
        for method, pending, job in jobs:
            _save_results(config, method, pending, [result.final for result in job.results], progress)
    return written


def _save_results(config: EvalConfig, method: Method, cases: list[Case], results: list[torch.Tensor],
                  progress: Progress) -> None:
    with progress(f"saving {method.label}", len(cases), "image") as bar:
        for case, result in zip(cases, results):
            save_png(result_path(config, method, case), chw_to_uint8(result))
            bar.update(1)


def conform(result: torch.Tensor, case: Case) -> tuple[torch.Tensor, str]:
    """A (1, 3, h, w) result at the case's reference size, and a note when it was not already: a result at
    the HQ's uncropped size is cropped like the HQ; any other size is resized (bicubic, antialiased)."""
    size = tuple(case.upsampled.shape[-2:])
    found = tuple(result.shape[-2:])
    if found == size:
        return result, ""
    if found == case.original_size:
        return result[..., :size[0], :size[1]], ""
    resized = quantize_8bit(resize(result, size, "bicubic", antialias=True))
    return resized, f"resized from {found[1]}x{found[0]}"


def score_missing(config: EvalConfig, methods: list[Method], cases: list[Case], scorer: Scorer,
                  progress: Progress = tqdm_progress) -> list[dict]:
    """metrics.csv's rows, every row an earlier run wrote kept and those missing scored (metrics that were
    missing then and can be computed now are filled in); the file is rewritten when anything changed."""
    table = config.out / METRICS_CSV
    rows = {tuple(row[k] for k in KEY_COLUMNS): row for row in read_rows(table)}
    todo = [(case, method) for case in cases for method in methods
            if scorer.needs_work(rows.get((case.stem, case.preset, method.label)), case.reference is not None)]
    device = torch.device(config.device)
    with progress("scoring", len(todo), "image") as bar:
        for batch in _batches(todo):
            for (case, method), row in zip(batch, _score_batch(config, batch, scorer, device)):
                rows[(case.stem, case.preset, method.label)] = row
            bar.update(len(batch))
    ordered = [rows[key] for key in sorted(rows, key=_row_order(cases, methods))]
    if todo:
        write_rows(table, ordered, scorer.columns)
    return ordered


def _batches(todo: list[tuple[Case, Method]]) -> list[list[tuple[Case, Method]]]:
    """The work in batches of up to SCORE_BATCH results of one size (the reference's), with or without a
    reference, so the metrics run batched on the device."""
    groups: dict[tuple, list] = {}
    for case, method in todo:
        groups.setdefault((tuple(case.upsampled.shape), case.reference is None), []).append((case, method))
    return [group[i:i + SCORE_BATCH] for group in groups.values() for i in range(0, len(group), SCORE_BATCH)]


def _score_batch(config: EvalConfig, batch: list[tuple[Case, Method]], scorer: Scorer,
                 device: torch.device) -> list[dict]:
    rows = [{"image": case.stem, "preset": case.preset, "method": method.label} for case, method in batch]
    paths = [result_path(config, method, case) for case, method in batch]
    found = [i for i, path in enumerate(paths) if path is not None and path.is_file()]
    for i in set(range(len(batch))) - set(found):
        case, method = batch[i]
        rows[i].update(scorer.all_missing(f"no result file for {case.stem} in {method.spec.argument}"))
    if found:
        conformed = [conform(read_image(paths[i]), batch[i][0]) for i in found]
        results = torch.cat([result for result, _ in conformed]).to(device)
        references = None if batch[0][0].reference is None else \
            torch.cat([batch[i][0].reference for i in found]).to(device)
        for i, (_, note), scores in zip(found, conformed, scorer.score(results, references)):
            rows[i].update(scores, note=note)
    return rows


def _row_order(cases: list[Case], methods: list[Method]):
    photos = {stem: i for i, stem in enumerate(dict.fromkeys(case.stem for case in cases))}
    presets = {preset: i for i, preset in enumerate([*PRESETS, REAL])}
    labels = {method.label: i for i, method in enumerate(methods)}

    def key(row_key: tuple[str, str, str]):
        stem, preset, label = row_key
        return (presets.get(preset, len(presets)), preset, labels.get(label, len(labels)), label,
                photos.get(stem, len(photos)), stem)

    return key


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict], metric_columns: list[str]) -> None:
    from ..training.prepare_data import atomic_write

    columns = [*KEY_COLUMNS, *metric_columns, "missing", "note"]

    def write(f) -> None:
        import io

        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        f.write(text.getvalue().encode("utf-8"))

    atomic_write(path, write)
