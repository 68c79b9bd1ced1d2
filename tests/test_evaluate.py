"""`python -m comfyui_diffbody evaluate`: degrade, restore, score, report; a rerun does nothing again.

The end-to-end run: two real photos (scikit-image's astronaut and coffee, made small) x the five Table-1
presets x bicubic, stage0, public, diffbody (tiny random weights) and folder: (the HQ photos themselves)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from comfyui_diffbody import cli
from comfyui_diffbody.evaluation import methods as eval_methods
from comfyui_diffbody.evaluation.methods import MethodError, parse_method, parse_methods
from comfyui_diffbody.evaluation.run import Case, EvalConfig, case_seed, conform, prepare_cases
from comfyui_diffbody.evaluation.scoring import NEURAL, Scorer
from comfyui_diffbody.training.degradations import PRESETS

PHOTOS = {"astronaut": (128, 128), "coffee": (144, 96)}  # (width, height), multiples of 4


@pytest.fixture(scope="module")
def hq_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hq")
    for name, size in PHOTOS.items():
        Image.fromarray(getattr(data, name)()).resize(size, Image.Resampling.LANCZOS).save(folder / f"{name}.png")
    return folder


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class Counter:
    def __init__(self, monkeypatch, module, name):
        self.calls = 0
        original = getattr(module, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


# Every loader a pipeline method's run can call: (module, name). Each call is recorded with the file it loads.
PIPELINE_LOADERS = (("models.swinir", "load_swinir"), ("pipelines.pose.backends", "make_estimator"),
                    ("models.single_file", "load_sd21"), ("models.stage1_weights", "load_stage1_unet"),
                    ("models.stage1_weights", "load_stage1_controlnet"),
                    ("pipelines.depth_normal", "load_depth_normal_estimator"), ("models.single_file", "load_sdxl"),
                    ("models.union_controlnet", "load_union_controlnet"), ("models.stage2_weights", "load_multiprior"),
                    ("models.colour_adapter", "load_colour_adapter"), ("models.sdxl_components", "load_clip_vision"))


class LoadLog:
    """Every network load of the run: (loader, what it was given), the captioner's class method included."""

    def __init__(self, monkeypatch):
        import importlib

        from comfyui_diffbody.pipelines.caption import LlavaCaptioner

        self.loads: list[tuple[str, str]] = []
        for module_name, name in PIPELINE_LOADERS:
            module = importlib.import_module(f"comfyui_diffbody.{module_name}")
            monkeypatch.setattr(module, name, self._logged(name, getattr(module, name)))
        load_captioner = LlavaCaptioner.load.__func__
        monkeypatch.setattr(LlavaCaptioner, "load", classmethod(
            lambda cls, *args, **kwargs: self._logged("LlavaCaptioner.load", load_captioner)(cls, *args, **kwargs)))

    def _logged(self, name, loader):
        def logged(*args, **kwargs):
            given = [arg for arg in args if not isinstance(arg, type)]
            self.loads.append((name, repr(given[:2])))
            return loader(*args, **kwargs)

        return logged


def count_work(monkeypatch) -> dict[str, Counter]:
    """Restore calls, and model loads the run could make outside the pipelines: the tiny factory, spandrel's
    loader (sr:); the pipelines' loads are in LoadLog."""
    from comfyui_diffbody.evaluation import run
    from comfyui_diffbody.models import swinir
    from comfyui_diffbody.testing import tiny

    return {"restore": Counter(monkeypatch, run, "restore_jobs"),
            "image_model": Counter(monkeypatch, swinir, "load_image_model"),
            "tiny_factory": Counter(monkeypatch, tiny, "build_models_dir")}


METHODS = ["bicubic", "stage0", "public", "diffbody"]


def test_end_to_end_on_two_photos_five_presets_and_every_kind_of_method(hq_folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval"
    # --models-dir: where the metrics' files would be (none there: LPIPS missing); the pipelines are tiny
    argv = ["evaluate", str(hq_folder), "--out", str(out), "--methods", *METHODS, f"folder:{hq_folder}",
            "--tiny", "--size-mode", "native", "--device", "cpu", "--models-dir", str(tmp_path / "models")]
    counts, log = count_work(monkeypatch), LoadLog(monkeypatch)
    assert cli.main(argv) == 0
    assert counts["restore"].calls == 1  # the three pipeline methods together, over all photos x presets
    assert counts["tiny_factory"].calls == 1
    # No network loaded twice in the run, though stage0, public and diffbody all need SwinIR and the pose model,
    # and public and diffbody LLaVA and SDXL; every loader was watched (else the count proves nothing).
    assert {name for name, _ in log.loads} == {name for _, name in PIPELINE_LOADERS} | {"LlavaCaptioner.load"}
    assert sorted(log.loads) == sorted(set(log.loads)), [load for load in log.loads if log.loads.count(load) > 1]

    rows = read_csv(out / "metrics.csv")
    labels = [*METHODS, parse_method(f"folder:{hq_folder}").label]
    assert len(rows) == len(PHOTOS) * len(PRESETS) * len(labels)
    assert {(r["image"], r["preset"], r["method"]) for r in rows} == {
        (photo, preset, label) for photo in PHOTOS for preset in PRESETS for label in labels}
    for row in rows:
        assert all(row[metric] for metric in ("psnr", "ssim", "cpsnr", "cssim")), row
        assert all(row[metric] == "" for metric in NEURAL), row  # missing, never 0
        assert all(metric in row["missing"] for metric in NEURAL)
        if row["method"] == labels[-1]:  # the HQ photos themselves
            assert float(row["ssim"]) == pytest.approx(1.0, abs=1e-9)
            assert float(row["cssim"]) == pytest.approx(1.0, abs=1e-9)
        else:
            assert float(row["ssim"]) < 0.99
    for preset in PRESETS:
        for photo, (width, height) in PHOTOS.items():
            lq = Image.open(out / "lq" / preset / f"{photo}.png")
            assert lq.size == ((width // 4, height // 4) if "sr4" in preset else (width, height))
            for label in METHODS:
                assert Image.open(out / "results" / label / preset / f"{photo}.png").size == (width, height)
    summary = (out / "summary.md").read_text()
    assert "| blur2_sr4 | bicubic |" in summary and "*paper: DiffBody*" in summary and "missing" in summary
    assert (out / "plots" / "blur2_sr4_psnr.png").is_file()
    assert Image.open(out / "sheets" / "coffee.png").size[1] > len(PRESETS) * 100
    first = {path: path.read_bytes() for path in (out / "results").rglob("*.png")}

    rerun, log = count_work(monkeypatch), LoadLog(monkeypatch)
    assert cli.main(argv) == 0
    assert {name: counter.calls for name, counter in rerun.items()} == {"restore": 0, "image_model": 0,
                                                                         "tiny_factory": 0}
    assert log.loads == []
    assert read_csv(out / "metrics.csv") == rows
    assert {path: path.read_bytes() for path in (out / "results").rglob("*.png")} == first
    assert "Restored 0 image(s)" in capsys.readouterr().out


def test_an_sr_network_runs_on_the_lq_and_loads_once(hq_folder, tmp_path, monkeypatch):
    """sr:FILE with a random-weight Real-ESRGAN Compact x4 (spandrel detects it from its keys); LPIPS missing
    until its files are put in place, then filled in by a rerun that restores nothing."""
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    network = tmp_path / "tiny-compact-x4.safetensors"
    save_file(Compact(num_feat=8, num_conv=2, upscale=4).state_dict(), str(network))
    counts = count_work(monkeypatch)
    out = tmp_path / "eval"
    argv = ["evaluate", str(hq_folder), "--out", str(out), "--methods", f"sr:{network}", "--presets", "1,3",
            "--device", "cpu", "--models-dir", str(tmp_path / "models")]
    assert cli.main(argv) == 0
    assert counts["image_model"].calls == 1
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == len(PHOTOS) * 2
    notes = {row["preset"]: row["note"] for row in rows}
    assert notes["blur2_sr4"] == ""  # x4 of the x4-smaller LQ: the HQ's size
    assert notes["blur2_noise40"].startswith("resized from")  # x4 of a full-size LQ: brought back, and said
    assert all(row["lpips"] == "" and "lpips: no weights" in row["missing"] for row in rows)

    pytest.importorskip("lpips")
    from test_neural_metrics import write_lpips_files

    write_lpips_files(tmp_path / "models")
    rerun = count_work(monkeypatch)
    assert cli.main(argv) == 0
    assert rerun["image_model"].calls == 0
    filled = read_csv(out / "metrics.csv")
    assert all(float(row["lpips"]) > 0 and "lpips" not in row["missing"] for row in filled)
    assert [row["psnr"] for row in filled] == [row["psnr"] for row in rows]


def test_real_low_quality_photos_get_no_reference_metrics_only(hq_folder, tmp_path):
    out = tmp_path / "real"
    assert cli.main(["evaluate", str(hq_folder), "--out", str(out), "--no-reference", "--methods", "bicubic",
                     "--scale", "2", "--device", "cpu"]) == 0
    rows = read_csv(out / "metrics.csv")
    assert [(row["preset"], row["psnr"]) for row in rows] == [("real", "")] * len(PHOTOS)
    assert all("psnr, ssim, lpips, cpsnr, cssim, identity: no reference image" in row["missing"] for row in rows)
    assert not (out / "lq").exists()
    assert Image.open(out / "results" / "bicubic" / "real" / "coffee.png").size == (288, 192)


def test_the_lq_is_seeded_per_photo_and_preset(hq_folder, tmp_path):
    first = prepare_cases(EvalConfig(hq_folder, tmp_path / "a"), progress=_no_progress)
    again = prepare_cases(EvalConfig(hq_folder, tmp_path / "b"), progress=_no_progress)
    other = prepare_cases(EvalConfig(hq_folder, tmp_path / "c", seed=1), progress=_no_progress)
    assert all(torch.equal(a.lq, b.lq) for a, b in zip(first, again))
    assert not torch.equal(first[1].lq, other[1].lq)  # noise40_sr4: the seed matters
    assert case_seed(0, "noise40_sr4", "a") != case_seed(0, "noise40_sr4", "b")
    limited = prepare_cases(EvalConfig(hq_folder, tmp_path / "a", presets=("blur2_sr4",), limit=1),
                            progress=_no_progress)
    assert [(case.stem, case.preset) for case in limited] == [("astronaut", "blur2_sr4")]


def _no_progress(description, total, unit):
    import contextlib

    class Bar:
        def update(self, n):
            pass

    return contextlib.nullcontext(Bar())


def test_results_of_another_size_are_cropped_like_the_hq_or_resized_and_said():
    reference = torch.rand(1, 3, 64, 96)
    case = Case("x", "blur2_sr4", reference[..., ::4, ::4], reference, reference, original_size=(66, 97))
    assert conform(reference, case) == (reference, "")
    uncropped = torch.rand(1, 3, 66, 97)
    assert torch.equal(conform(uncropped, case)[0], uncropped[..., :64, :96])
    resized, note = conform(torch.rand(1, 3, 128, 192), case)
    assert resized.shape == reference.shape and note == "resized from 192x128"


@pytest.mark.parametrize("text, kind, argument, settings", [
    ("bicubic", "bicubic", "", {}),
    ("diffbody@adapter_weight=0", "diffbody", "", {"adapter_weight": 0.0}),
    ("diffbody@strengths=1/1/0/1,stage2_steps=30", "diffbody", "", {"strengths": [1, 1, 0, 1], "stage2_steps": 30}),
    ("sr:/models/RealESRGAN_x4plus.pth", "sr", "/models/RealESRGAN_x4plus.pth", {}),
    ("folder:/results/supir", "folder", "/results/supir", {}),
])
def test_method_entries_parse(text, kind, argument, settings):
    spec = parse_method(text)
    assert (spec.kind, spec.argument, spec.settings) == (kind, argument, settings)


@pytest.mark.parametrize("text, message", [
    ("esrgan", "unknown method"), ("sr:", "needs a file"), ("bicubic@cfg=3", "only stage0, public and diffbody"),
    ("diffbody@colour=0", "not setting=value"), ("diffbody@strengths=1/1", "four values"),
    ("public@stage2_steps=many", "stage2_steps"),
])
def test_bad_method_entries_say_what_is_wrong(text, message):
    with pytest.raises(MethodError, match=message):
        parse_method(text)


def test_a_method_named_twice_is_refused():
    with pytest.raises(MethodError, match="named twice"):
        parse_methods(["bicubic", "bicubic"])


def test_an_entrys_settings_override_the_commands_for_it_alone():
    args = cli.build_parser().parse_args(["evaluate", "hq", "--adapter-weight", "0.5", "--stage2-steps", "9"])
    ablation = cli.pipeline_method_args(parse_method("diffbody@adapter_weight=0"), args)
    assert (ablation.mode, ablation.adapter_weight, ablation.stage2_steps, ablation.upscale) == ("diffbody", 0, 9, 1)
    stage0 = cli.pipeline_method_args(parse_method("stage0"), args)
    assert stage0.stage0_only and stage0.no_caption and args.adapter_weight == 0.5 and not args.no_caption
    options = cli.restore_options(ablation, torch.device("cpu"))
    assert options.adapter_weight == 0 and options.stage2_steps == 9 and options.stage0.upscale == 1


@pytest.mark.parametrize("text, expected", [("1,2,3,4,5", tuple(PRESETS)), ("5,1", ("blur2_noise20_sr4_jpeg50",
                                                                                     "blur2_sr4"))])
def test_presets_are_table_1_rows(text, expected):
    assert cli.parse_presets(text) == expected


@pytest.mark.parametrize("text", ["0", "6", "one", ""])
def test_a_preset_outside_table_1_is_refused(text):
    with pytest.raises(SystemExit, match="Table-1 rows from 1 to 5"):
        cli.parse_presets(text)


def test_every_neural_metric_is_either_available_or_missing_with_a_reason():
    with pytest.raises(ValueError, match="either available or unavailable"):
        Scorer({}, {})
    scorer = Scorer({}, {name: "no weights" for name in NEURAL})
    batch = torch.rand(3, 3, 32, 32)
    rows = scorer.score(batch, batch.flip(0))
    assert [row["ssim"] == 1.0 for row in rows] == [False, True, False]  # each image its own row
    row = rows[0]
    assert row["lpips"] == "" and row["missing"] == "lpips, maniqa, clipiqa, musiq, identity: no weights"
    assert not scorer.needs_work(row, has_reference=True)
    assert scorer.needs_work({**row, "psnr": ""}, has_reference=True)


def test_folder_results_are_matched_by_name_preset_folder_first(tmp_path):
    (tmp_path / "blur2_sr4").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "blur2_sr4" / "a.jpg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    method = eval_methods.folder_method(parse_method(f"folder:{tmp_path}"))
    assert method.found_result("blur2_sr4", "a") == tmp_path / "blur2_sr4" / "a.jpg"
    assert method.found_result("noise40_sr4", "a") == tmp_path / "a.png"
    assert method.found_result("noise40_sr4", "b") is None
    with pytest.raises(MethodError, match="no such folder"):
        eval_methods.folder_method(parse_method(f"folder:{tmp_path / 'nothing'}"))


def test_without_matplotlib_the_command_stops_before_any_work(hq_folder, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(SystemExit, match="plots need matplotlib: pip install matplotlib"):
        cli.main(["evaluate", str(hq_folder), "--out", str(tmp_path / "out"), "--methods", "bicubic", "--device", "cpu"])
    assert not (tmp_path / "out").exists()
