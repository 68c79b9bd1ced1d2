"""Training-data preparation on tiny models: bucket sizes, the manifest contract (read back by the
training dataset), resuming, sharding, and items cut off half-way."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_diffbody.testing.tiny import TINY_DEPTH_NAME, TINY_NORMALS_NAME
from comfyui_diffbody.training import prepare_data
from comfyui_diffbody.training.dataset import ManifestDataset

# (height, width) of the photos -> (width, height) of the bucket each must land in.
PHOTOS = {"square.png": ((300, 310), (512, 512)),
          "people/tall.jpg": ((400, 190), (512, 1024)),
          "wide photo.png": ((300, 460), (768, 512))}
FIELDS = ("image", "pose", "keypoints", "depth", "normal")


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for name, ((height, width), _) in PHOTOS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / name)
    return root


def run(photos, data_root, tiny_models_dir, *extra: str) -> int:
    return prepare_data.main([str(photos), str(data_root), "--models-dir", str(tiny_models_dir),
                              "--depth-model", TINY_DEPTH_NAME, "--normal-source", TINY_NORMALS_NAME,
                              "--device", "cpu", *extra])


def manifest_lines(data_root, name="manifest.jsonl") -> list[dict]:
    return [json.loads(line) for line in (data_root / name).read_text(encoding="utf-8").splitlines()]


def file_times(data_root) -> dict[str, int]:
    return {str(p.relative_to(data_root)): p.stat().st_mtime_ns for p in data_root.rglob("*") if p.is_file()}


def test_items_land_in_their_buckets_with_a_valid_manifest(photos, tmp_path, tiny_models_dir):
    data_root = tmp_path / "data"
    assert run(photos, data_root, tiny_models_dir) == 0
    entries = {e["source"]: e for e in manifest_lines(data_root)}
    assert sorted(entries) == sorted(PHOTOS)
    for source, entry in entries.items():
        width, height = PHOTOS[source][1]
        assert (entry["width"], entry["height"]) == (width, height), source
        assert set(entry) == {"id", "width", "height", *FIELDS, "caption", "source"}
        assert entry["caption"].strip(), "captions are on by default"
        for field in ("image", "pose", "depth", "normal"):
            assert entry[field] == f"{prepare_data.SUBFOLDERS[field]}/{entry['id']}.png"
            with Image.open(data_root / entry[field]) as image:
                assert image.size == (width, height), (source, field)
                assert image.mode == ("L" if field == "depth" else "RGB"), (source, field)
        frame = json.loads((data_root / entry["keypoints"]).read_text())
        assert (frame["canvas_width"], frame["canvas_height"]) == (width, height)
    with Image.open(data_root / entries["square.png"]["depth"]) as depth:  # normalised to the full range
        assert depth.getextrema() == (0, 255)
    assert not list(data_root.rglob("*.tmp")), "no temporary file is left behind"
    # The training side reads it back.
    dataset = ManifestDataset(str(data_root), fields=("image", "pose", "depth", "normal", "keypoints", "caption"))
    assert len(dataset) == 3
    sizes = sorted(dataset.bucket_sizes)
    assert sizes == sorted((h, w) for _, (w, h) in PHOTOS.values())


def test_rerun_skips_done_items(photos, tmp_path, tiny_models_dir, capsys):
    data_root = tmp_path / "data"
    run(photos, data_root, tiny_models_dir, "--no-caption")
    before, manifest = file_times(data_root), (data_root / "manifest.jsonl").read_bytes()
    capsys.readouterr()
    assert run(photos, data_root, tiny_models_dir, "--no-caption") == 0
    assert "0 to annotate" in capsys.readouterr().out
    assert file_times(data_root) == before
    assert (data_root / "manifest.jsonl").read_bytes() == manifest
    assert all(e["caption"] == "" for e in manifest_lines(data_root))


def test_shards_split_the_items_without_overlap(photos, tmp_path, tiny_models_dir):
    data_root = tmp_path / "data"
    for index in range(2):
        run(photos, data_root, tiny_models_dir, "--no-caption", "--normal-source", "from depth",
            "--num-shards", "2", "--shard-index", str(index))
    shards = [{e["source"] for e in manifest_lines(data_root, f"manifest-{i}-of-2.jsonl")} for i in range(2)]
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == set(PHOTOS)
    assert not (data_root / "manifest.jsonl").exists()
    assert len(ManifestDataset(str(data_root))) == 3  # readers take every manifest*.jsonl
    for index, shard in enumerate(shards):
        assert all(prepare_data.shard_of(source, 2) == index for source in shard)


def test_an_item_cut_off_before_its_manifest_line_is_redone(photos, tmp_path, tiny_models_dir):
    data_root = tmp_path / "data"
    run(photos, data_root, tiny_models_dir, "--no-caption")
    lines = (data_root / "manifest.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    [cut] = [json.loads(line) for line in lines if json.loads(line)["source"] == "square.png"]
    kept = [line for line in lines if json.loads(line)["id"] != cut["id"]]
    # Killed after writing the item's files, halfway through writing its manifest line.
    (data_root / "manifest.jsonl").write_text("".join(kept) + json.dumps(cut)[:40], encoding="utf-8")
    (data_root / cut["depth"]).write_bytes(b"half a png")
    before = file_times(data_root)
    run(photos, data_root, tiny_models_dir, "--no-caption")
    after = file_times(data_root)
    entries = manifest_lines(data_root)
    assert sorted(e["source"] for e in entries) == sorted(PHOTOS)  # the partial line is gone, no duplicate
    assert all(after[cut[field]] != before[cut[field]] for field in FIELDS)  # every file of it rewritten
    others = [e for e in entries if e["id"] != cut["id"]]
    assert all(after[e[field]] == before[e[field]] for e in others for field in FIELDS)
    with Image.open(data_root / cut["depth"]) as depth:
        assert depth.size == (512, 512)


def test_limit_and_unreadable_files(photos, tmp_path, tiny_models_dir, capsys):
    (photos / "broken.png").write_bytes(b"not an image")
    data_root = tmp_path / "data"
    run(photos, data_root, tiny_models_dir, "--no-caption", "--limit", "2")
    assert len(manifest_lines(data_root)) <= 2
    run(photos, data_root, tiny_models_dir, "--no-caption")
    assert sorted(e["source"] for e in manifest_lines(data_root)) == sorted(PHOTOS)
    assert "broken.png" in capsys.readouterr().err


def test_missing_model_folder_lists_where_to_get_it(photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        prepare_data.main([str(photos), str(tmp_path / "data"), "--models-dir", str(tmp_path / "models"),
                           "--device", "cpu"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Depth-Anything-V2-Large-hf" in err and "marigold-normals-v1-1" in err and "llava-1.5-7b-hf" in err
    assert os.path.join("diffbody", "priors") in err and "https://huggingface.co/prs-eth/marigold-normals-v1-1" in err


@pytest.mark.parametrize("size, bucket", [((300, 310), (512, 512)), ((1000, 500), (512, 1024)),
                                          ((500, 1000), (1024, 512)), ((600, 400), (512, 768)),
                                          ((400, 600), (768, 512))])
def test_bucket_crop_keeps_the_bucket_aspect(size, bucket):
    height, width = size
    (bucket_w, bucket_h), (left, top, right, bottom) = prepare_data.bucket_crop(width, height)
    assert (bucket_w, bucket_h) == bucket
    assert abs((right - left) / (bottom - top) - bucket_w / bucket_h) < 1e-9
    assert 0 <= left and 0 <= top and right <= width and bottom <= height
    assert right - left == width or bottom - top == height  # the largest such box


def test_ids_are_safe_unique_and_stable():
    ids = {prepare_data.item_id(p) for p in ("a.jpg", "a.png", "x/y.png", "x_y.png", "ü b.png")}
    assert len(ids) == 5
    assert all(all(c.isalnum() or c in "._-" for c in i) and i.isascii() for i in ids)
    assert prepare_data.item_id("people/tall.jpg") == prepare_data.item_id("people/tall.jpg")


# ---- the I_res step (training/prepare_ires.py) -----------------------------------------------------------

def run_ires(data_root, *extra: str) -> int:
    from comfyui_diffbody.training import prepare_ires

    return prepare_ires.main([str(data_root), "--tiny", "--device", "cpu", "--steps", "1", "--cfg", "1", *extra])


def test_the_ires_step_stores_one_seeded_bucket_sized_i_res_per_item_by_shard_and_resumes(
        photos, tmp_path, tiny_models_dir, capsys):
    """prepare_data, then the I_res step in two shards: every item gets ires/<id>.png at its bucket size, each
    shard writes only its own items, a rerun skips them, and a file cut off is redone to the same bytes (the
    degradation and the stage-1 noise are seeded by the item id)."""
    from comfyui_diffbody.training.prepare_ires import shard_indices

    data_root = tmp_path / "data"
    run(photos, data_root, tiny_models_dir, "--no-caption", "--normal-source", "from depth")
    entries = {e["id"]: e for e in manifest_lines(data_root)}
    dataset = ManifestDataset(str(data_root), fields=("image",))
    assert set(dataset.missing("ires")) == set(entries)  # before the step, every item lacks it
    written_by = {}
    for index in range(2):
        before = {p.name for p in (data_root / "ires").glob("*.png")} if (data_root / "ires").exists() else set()
        assert run_ires(data_root, "--num-shards", "2", "--shard-index", str(index)) == 0
        written_by[index] = {p.name for p in (data_root / "ires").glob("*.png")} - before
        assert {f"{dataset.items[i]['id']}.png" for i in shard_indices(dataset, 2, index)} == written_by[index]
    assert not written_by[0] & written_by[1], "the shards overlap"
    assert written_by[0] | written_by[1] == {f"{i}.png" for i in entries}
    assert dataset.missing("ires") == []
    for item_id, entry in entries.items():
        with Image.open(data_root / "ires" / f"{item_id}.png") as image:
            assert (image.size, image.mode) == ((entry["width"], entry["height"]), "RGB")
    assert not list(data_root.rglob("*.tmp")), "no temporary file is left behind"
    # Rerun: nothing to do, nothing touched.
    times = file_times(data_root)
    capsys.readouterr()
    assert run_ires(data_root) == 0
    assert "3 already done, 0 to restore" in capsys.readouterr().out
    assert file_times(data_root) == times
    # A file cut off half-way is redone, to the same bytes: the item's randomness is its own.
    victim = data_root / "ires" / f"{sorted(entries)[0]}.png"
    whole = victim.read_bytes()
    victim.write_bytes(whole[:len(whole) // 2])
    assert run_ires(data_root) == 0
    assert "2 already done, 1 to restore" in capsys.readouterr().out
    assert victim.read_bytes() == whole
    others = [p for p in (data_root / "ires").glob("*.png") if p != victim]
    assert all(file_times(data_root)[str(p.relative_to(data_root))] == times[str(p.relative_to(data_root))]
               for p in others)
    # The dataset reads the optional field back as an image of the item's size.
    item = ManifestDataset(str(data_root), fields=("image", "ires"))[0]
    assert item["ires"].shape == item["image"].shape and not torch.equal(item["ires"], item["image"])


def test_the_ires_step_needs_its_models_unless_tiny(tmp_path):
    from comfyui_diffbody.testing.tiny.dataset import build_tiny_dataset
    from comfyui_diffbody.training import prepare_ires

    data_root = build_tiny_dataset(str(tmp_path / "data"), n=1)
    with pytest.raises(SystemExit, match="--pretrained_sd21, --unet, --controlnet required"):
        prepare_ires.main([data_root])
