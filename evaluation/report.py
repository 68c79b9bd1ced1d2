"""The report in `--out`, from metrics.csv's rows: summary.md, plots/, sheets/.

- summary.md: the paper's layout (Table 1, with Table 5's CPSNR and CSSIM after it): one block of rows per
  degradation preset, a row per method, the mean over the photos per metric, the best of our methods per
  column in bold (LPIPS: the lowest). Below each block, the paper's own Table-1 rows for that preset
  (evaluation/paper_table1.csv), for comparison; they come from SHHQ photos, ours from the photos given.
  A metric no row could compute reads "missing", with the reason under the table.
- plots/<preset>_<metric>.png: one bar chart per preset and metric (ours, and the paper's where it has one).
- sheets/<photo>.png: per photo, a row per preset: LQ (its pixels enlarged to the HQ's size) | each method | HQ.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..models.errors import MissingDependency
from .scoring import LOWER_IS_BETTER, METRICS, TITLES

if TYPE_CHECKING:
    from .methods import Method
    from .run import Case, EvalConfig

PAPER_TABLE = Path(__file__).with_name("paper_table1.csv")
SHEET_HEIGHT = 192  # pixels of one image in a contact sheet
LABEL_HEIGHT = 18


def write_report(config: "EvalConfig", methods: list["Method"], cases: list["Case"], rows: list[dict]) -> Path:
    """Write summary.md, the plots and the contact sheets; returns summary.md's path."""
    presets = list(dict.fromkeys(case.preset for case in cases))
    labels = [method.label for method in methods]
    means = mean_table(rows, presets, labels)
    summary = config.out / "summary.md"
    summary.write_text(summary_markdown(means, presets, labels, rows, len({c.stem for c in cases})),
                       encoding="utf-8")
    write_plots(config.out / "plots", means, presets, labels)
    write_sheets(config, methods, cases)
    return summary


def mean_table(rows: list[dict], presets: list[str], methods: list[str]) -> dict:
    """{(preset, method): {metric: mean over the photos, or None when no photo has it}}."""
    table = {}
    for preset in presets:
        for method in methods:
            chosen = [row for row in rows if row["preset"] == preset and row["method"] == method]
            table[(preset, method)] = {metric: _mean([row[metric] for row in chosen]) for metric in METRICS}
    return table


def _mean(cells: list) -> float | None:
    values = [float(cell) for cell in cells if cell not in ("", None)]
    return sum(values) / len(values) if values else None


def read_paper_table() -> dict:
    """{(preset, method): {metric: value}} of the paper's Table 1."""
    with open(PAPER_TABLE, encoding="utf-8") as f:
        lines = [line for line in f if not line.startswith("#")]
    return {(row["preset"], row["method"]): {metric: float(row[metric]) for metric in METRICS if metric in row}
            for row in csv.DictReader(lines)}


def summary_markdown(means: dict, presets: list[str], methods: list[str], rows: list[dict], photos: int) -> str:
    paper = read_paper_table()
    header = "| Degradation | Method | " + " | ".join(TITLES[m] for m in METRICS) + " |"
    lines = [f"# Evaluation: {photos} photo(s), {len(presets)} preset(s), {len(methods)} method(s)", "",
             "Means over the photos; **bold**: our best per preset and column (LPIPS↓: lowest). Rows marked "
             "*paper* are the paper's Table 1 on SHHQ, for comparison.", "",
             header, "|" + " --- |" * (len(METRICS) + 2)]
    for preset in presets:
        ours = {method: means[(preset, method)] for method in methods}
        best = {metric: _best([values[metric] for values in ours.values()], metric) for metric in METRICS}
        for index, method in enumerate(methods):
            cells = [_cell(ours[method][m], bold=ours[method][m] is not None and ours[method][m] == best[m])
                     for m in METRICS]
            lines.append(f"| {preset if index == 0 else ''} | {method} | " + " | ".join(cells) + " |")
        for (paper_preset, paper_method), values in paper.items():
            if paper_preset == preset:
                cells = [_cell(values.get(m), paper=True) for m in METRICS]
                lines.append(f"| | *paper: {paper_method}* | " + " | ".join(cells) + " |")
    missing = sorted({row["missing"] for row in rows if row.get("missing")})
    if missing:
        lines += ["", "Missing metrics (empty in metrics.csv, never 0):", *[f"- {reason}" for reason in missing]]
    notes = sorted({f"{row['method']}: {row['note']}" for row in rows if row.get("note")})
    if notes:
        lines += ["", "Notes:", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def _best(values: list, metric: str) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return None
    return min(present) if metric in LOWER_IS_BETTER else max(present)


def _cell(value: float | None, *, bold: bool = False, paper: bool = False) -> str:
    if value is None:
        return "" if paper else "missing"
    text = "inf" if math.isinf(value) else f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return f"**{text}**" if bold else text


def pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise MissingDependency("the evaluation's plots need matplotlib: pip install matplotlib "
                                "(or pip install 'comfyui-diffbody[eval]')") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(folder: Path, means: dict, presets: list[str], methods: list[str]) -> list[Path]:
    """One bar chart per preset and metric that some method has; the paper's methods as hatched bars."""
    plt = pyplot()
    paper = read_paper_table()
    written = []
    folder.mkdir(parents=True, exist_ok=True)
    for preset in presets:
        for metric in METRICS:
            ours = [(method, means[(preset, method)][metric]) for method in methods]
            ours = [(name, value) for name, value in ours if value is not None and math.isfinite(value)]
            if not ours:
                continue
            theirs = [(f"paper: {m}", v[metric]) for (p, m), v in paper.items() if p == preset and metric in v]
            figure, axes = plt.subplots(figsize=(1.2 + 0.7 * (len(ours) + len(theirs)), 3.2))
            bars = axes.bar([n for n, _ in ours + theirs], [v for _, v in ours + theirs],
                            color=["tab:blue"] * len(ours) + ["lightgrey"] * len(theirs))
            for bar in bars[len(ours):]:
                bar.set_hatch("//")
            arrow = " (lower is better)" if metric in LOWER_IS_BETTER else ""
            axes.set_title(f"{TITLES[metric].rstrip('↓')} - {preset}{arrow}", fontsize=9)
            axes.tick_params(axis="x", labelrotation=45, labelsize=7)
            figure.tight_layout()
            path = folder / f"{preset}_{metric}.png"
            figure.savefig(path, dpi=100)
            plt.close(figure)
            written.append(path)
    return written


def write_sheets(config: "EvalConfig", methods: list["Method"], cases: list["Case"]) -> list[Path]:
    """sheets/<photo>.png: a row per preset, LQ | each method's result | HQ, each labelled."""
    from PIL import Image

    from ..pipelines.image import chw_to_uint8
    from ..training.prepare_data import atomic_write
    from .run import result_path

    written = []
    for stem in dict.fromkeys(case.stem for case in cases):
        rows = []
        for case in [c for c in cases if c.stem == stem]:
            lq = Image.fromarray(chw_to_uint8(case.lq[0]))  # its own pixels, enlarged as blocks
            tiles = [(f"LQ {case.preset}", lq.resize(tuple(case.upsampled.shape[:-3:-1]), Image.Resampling.NEAREST))]
            for method in methods:
                path = result_path(config, method, case)
                tiles.append((method.label, Image.open(path).convert("RGB") if path and path.is_file() else None))
            if case.reference is not None:
                tiles.append(("HQ", Image.fromarray(chw_to_uint8(case.reference[0]))))
            rows.append(tiles)
        path = config.out / "sheets" / f"{stem}.png"
        sheet = _compose(rows)
        atomic_write(path, lambda f, sheet=sheet: sheet.save(f, format="PNG"))
        written.append(path)
    return written


def _compose(rows: list[list[tuple]]):
    """Rows of (label, PIL image or None) -> one image: each tile SHEET_HEIGHT high, its label above it, a
    missing result as a grey tile."""
    from PIL import Image, ImageDraw

    def width_of(image) -> int:
        return max(1, round(image.width * SHEET_HEIGHT / image.height)) if image is not None else SHEET_HEIGHT

    widths = [[width_of(image) for _, image in row] for row in rows]
    sheet = Image.new("RGB", (max(sum(w) for w in widths), len(rows) * (SHEET_HEIGHT + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        x, y = 0, r * (SHEET_HEIGHT + LABEL_HEIGHT)
        for (label, image), width in zip(row, widths[r]):
            draw.text((x + 3, y + 3), label, fill="black")
            tile = image.resize((width, SHEET_HEIGHT), Image.Resampling.LANCZOS) if image is not None else \
                Image.new("RGB", (width, SHEET_HEIGHT), "lightgrey")
            sheet.paste(tile, (x, y + LABEL_HEIGHT))
            x += width
    return sheet
