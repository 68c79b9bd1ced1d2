"""The shared training infrastructure: the manifest dataset, bucketed batches, degraded inputs, the loop's
command-line flags, checkpoints and exact resume (on a one-layer network, so these run in seconds)."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_diffbody.testing.tiny.dataset import build_tiny_dataset
from comfyui_diffbody.training.dataset import (
    BucketBatchSampler,
    DatasetError,
    ManifestDataset,
    bucket_batches,
    collate_items,
    make_degraded,
)
from comfyui_diffbody.training.loop import (
    TrainConfig,
    TrainingError,
    add_training_arguments,
    config_from_args,
    list_checkpoints,
    read_log,
    run_training,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_tiny_dataset(str(tmp_path_factory.mktemp("data")), n=6, shards=2)


def test_dataset_reads_every_shard_with_the_contract_fields(data):
    dataset = ManifestDataset(data, fields=("image", "pose", "depth", "normal", "keypoints", "caption", "source"))
    assert sorted(os.listdir(data)) == sorted(["images", "pose", "keypoints", "depth", "normal",
                                               "manifest-0-of-2.jsonl", "manifest-1-of-2.jsonl"])
    assert len(dataset) == 6 and sorted(i["id"] for i in dataset.items) == [f"tiny{i:04d}" for i in range(6)]
    item = dataset[0]
    height, width = dataset.bucket_sizes[0]
    for field in ("image", "pose", "depth", "normal"):
        tensor = item[field]
        assert tensor.shape == (3, height, width) and tensor.dtype == torch.float32, field
        assert 0 <= tensor.min() and tensor.max() <= 1 and tensor.std() > 0.01, field
    assert torch.equal(item["depth"][0], item["depth"][1])  # grey repeated over three channels
    assert item["keypoints"]["canvas_width"] == width and len(item["keypoints"]["people"]) == 1
    assert "person" in item["caption"] and item["source"] == "synthetic"
    assert set(dataset.bucket_sizes) == {(64, 64), (128, 64)}


def test_dataset_names_what_is_wrong(data, tmp_path):
    with pytest.raises(DatasetError, match="no manifest"):
        ManifestDataset(str(tmp_path))
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"id": "a", "width": 64, "height": 64}) + "\n")
    with pytest.raises(DatasetError, match="lacks image, pose"):
        ManifestDataset(str(tmp_path))
    with pytest.raises(DatasetError, match="unknown dataset field"):
        ManifestDataset(data, fields=("image", "mask"))
    # an image whose size is not the manifest's bucket
    copy = tmp_path / "copy"
    build_tiny_dataset(str(copy), n=1, sizes=((64, 64),))
    Image.new("RGB", (64, 128)).save(copy / "pose" / "tiny0000.png")
    with pytest.raises(DatasetError, match="64x128, the manifest says 64x64"):
        ManifestDataset(str(copy))[0]


def test_bucketed_batches_hold_one_size_and_split_evenly_across_processes():
    keys = [(64, 64)] * 7 + [(128, 64)] * 5 + [(64, 128)] * 2
    shards = [BucketBatchSampler(keys, 3, seed=1, num_replicas=2, rank=r) for r in range(2)]
    for epoch in range(3):
        per_rank = [s.epoch_batches(epoch) for s in shards]
        assert len(per_rank[0]) == len(per_rank[1]) == len(shards[0])
        seen = [i for batches in per_rank for batch in batches for i in batch]
        assert len(seen) == len(set(seen))  # no item twice in an epoch
        for batches in per_rank:
            for batch in batches:
                assert len({keys[i] for i in batch}) == 1 and 1 <= len(batch) <= 3
    assert shards[0].epoch_batches(0) != shards[0].epoch_batches(1)  # reshuffled every epoch
    assert shards[0].epoch_batches(1, start=2) == shards[0].epoch_batches(1)[2:]
    again = BucketBatchSampler(keys, 3, seed=1, num_replicas=2, rank=0)
    assert again.epoch_batches(2) == shards[0].epoch_batches(2)  # a function of (seed, epoch) only
    dropping = bucket_batches(keys, 3, drop_last=True)
    assert all(len(batch) == 3 for batch in dropping.epoch_batches(0)) and len(dropping) == 2 + 1
    with pytest.raises(DatasetError, match="no batch"):
        BucketBatchSampler([0, 0], 3, drop_last=True)


def test_collate_refuses_mixed_sizes(data):
    dataset = ManifestDataset(data)
    by_size = {}
    for i, size in enumerate(dataset.bucket_sizes):
        by_size.setdefault(size, i)
    batch = collate_items([dataset[0], dataset[0]])
    assert batch["image"].shape[0] == 2 and isinstance(batch["caption"], list)
    with pytest.raises(DatasetError, match="bucket_batches"):
        collate_items([dataset[i] for i in by_size.values()])


def test_make_degraded_is_seeded_per_item_and_keeps_the_size(data):
    images = collate_items([ManifestDataset(data)[i] for i in (0, 2)])["image"]
    first = make_degraded(images, torch.Generator().manual_seed(3))
    again = make_degraded(images, torch.Generator().manual_seed(3))
    other = make_degraded(images, torch.Generator().manual_seed(4))
    assert first.shape == images.shape and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (first - images).abs().mean() > 0.01  # really degraded


def test_every_config_field_is_a_flag_with_the_phase_defaults():
    parser = argparse.ArgumentParser()
    add_training_arguments(parser, learning_rate=3e-5, train_batch_size=4, max_steps=7)
    config = config_from_args(parser.parse_args(["--output_dir", "out"]))
    assert (config.learning_rate, config.train_batch_size, config.max_steps) == (3e-5, 4, 7)
    assert config == TrainConfig(output_dir="out", max_steps=7, learning_rate=3e-5, train_batch_size=4)
    config = config_from_args(parser.parse_args([
        "--output_dir", "o", "--gradient_checkpointing", "--mixed_precision", "bf16", "--resume_from_checkpoint",
        "latest", "--max_grad_norm", "0.5", "--checkpoints_total_limit", "2"]))
    assert config.gradient_checkpointing and config.mixed_precision == "bf16" and config.weight_dtype == torch.bfloat16
    assert (config.resume_from_checkpoint, config.max_grad_norm, config.checkpoints_total_limit) == ("latest", 0.5, 2)
    with pytest.raises(TrainingError, match="mixed_precision"):
        TrainConfig(output_dir="o", max_steps=1, learning_rate=1e-4, train_batch_size=1, mixed_precision="fp8")


def _regression(data, out, steps, **overrides):
    """A 3x3 conv learning depth from the noisy photo: the loop's behaviour without a diffusion model."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    saved = []

    def loss(batch):
        noise = torch.randn(batch["image"].shape, generator=batch["generator"])
        prediction = batch["model"](batch["image"] + 0.2 * noise)
        return torch.nn.functional.mse_loss(prediction, batch["depth"]), {"items": float(len(batch["id"]))}

    def save(model, folder):
        saved.append(folder)
        torch.save(model.state_dict(), os.path.join(folder, "weights.pt"))

    settings = dict(output_dir=str(out), max_steps=steps, learning_rate=1e-2, train_batch_size=2,
                    gradient_accumulation_steps=2, checkpointing_steps=2, log_every=1, **overrides)
    losses = run_training(TrainConfig(**settings), trainable=net, dataset=ManifestDataset(data),
                          collate_fn=collate_items, compute_loss=loss, save_weights=save)
    return losses, saved


def test_resume_gives_the_same_losses_and_the_checkpoints_are_complete(data, tmp_path):
    straight, saved = _regression(data, tmp_path / "a", 7)
    assert saved == [str(tmp_path / "a" / f"checkpoint-{s}") for s in (2, 4, 6)] + [str(tmp_path / "a")]
    head, _ = _regression(data, tmp_path / "b", 3)
    tail, _ = _regression(data, tmp_path / "b", 7, resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    np.testing.assert_allclose(head[:2] + tail, straight, rtol=1e-6)
    log = read_log(str(tmp_path / "a"))
    assert [r["step"] for r in log] == list(range(1, 8))
    assert all(1.0 <= r["items"] <= 2.0 for r in log)  # extra values: averaged over the micro-batches
    with pytest.raises(TrainingError, match="not a checkpoint folder"):
        _regression(data, tmp_path / "c", 2, resume_from_checkpoint=str(tmp_path / "a"))


def test_checkpoints_total_limit_keeps_the_newest(data, tmp_path):
    _regression(data, tmp_path, 8, checkpoints_total_limit=2)
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [6, 8]
