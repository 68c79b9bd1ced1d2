"""The training data: the prepared folder every phase reads, bucketed batches, and degraded inputs.

Folder layout (written by `python -m comfyui_diffbody.training.prepare_data`)::

    DATA_ROOT/manifest.jsonl            (or manifest-<i>-of-<n>.jsonl shards; every manifest*.jsonl is read)
    DATA_ROOT/images/<id>.png           the high-quality photo I_HQ, 8-bit RGB
    DATA_ROOT/pose/<id>.png             OpenPose-style skeleton on black, 8-bit RGB
    DATA_ROOT/keypoints/<id>.json       the pose keypoints (POSE_KEYPOINT frame, pipelines/pose/keypoints.py)
    DATA_ROOT/depth/<id>.png            relative depth, 8-bit grey, near = bright
    DATA_ROOT/normal/<id>.png           surface normals, 8-bit RGB
    DATA_ROOT/ires/<id>.png             optional: stage 1's restoration I_res of the item's degraded photo,
                                        8-bit RGB (written by `python -m comfyui_diffbody.training.prepare_ires`)

One JSON object per manifest line: {"id", "width": W, "height": H, "image", "pose", "keypoints", "depth",
"normal", "caption", "source"}; paths are relative to DATA_ROOT; W x H is the item's bucket (one of the
paper's five, e.g. 512x1024) and every file of the item is exactly that size. The optional field "ires"
needs no manifest key: its file is `ires/<id>.png` (a manifest's own "ires" path, if given, wins), so the
I_res step can add it later without rewriting manifests other shards may be appending to.

`ManifestDataset[i]` gives a dict: the image fields as (3, H, W) float32 tensors in 0..1 (depth's grey
repeated over three channels: the VAE encodes it as an RGB image, and stage 1 decodes it as one), the
keypoints as the parsed JSON, "caption"/"source"/"id" as strings, "width"/"height" as ints.
"""

from __future__ import annotations

import glob
import json
import os
import random
from typing import Any, Hashable, Iterator, Sequence

import torch

from ..models.errors import DiffBodyError

IMAGE_FIELDS = ("image", "pose", "depth", "normal", "ires")
OTHER_FIELDS = ("keypoints", "caption", "source")
ALL_FIELDS = IMAGE_FIELDS + OTHER_FIELDS
IRES_FOLDER = "ires"
DERIVED_FIELDS = {"ires": IRES_FOLDER}  # field -> folder: not required in the manifest, <folder>/<id>.png
DEFAULT_FIELDS = ("image", "pose", "depth", "normal", "caption")
MANIFEST_PATTERN = "manifest*.jsonl"


class DatasetError(DiffBodyError):
    """A training folder that does not follow the layout, or an item that does not fit its manifest line."""


class ManifestDataset(torch.utils.data.Dataset):
    """Every item listed in DATA_ROOT's manifest*.jsonl files (see the module docstring)."""

    def __init__(self, data_root: str, *, fields: Sequence[str] = DEFAULT_FIELDS):
        unknown = [f for f in fields if f not in ALL_FIELDS]
        if unknown:
            raise DatasetError(f"unknown dataset field(s) {unknown}; choose from {ALL_FIELDS}")
        self.data_root = data_root
        self.fields = tuple(fields)
        manifests = sorted(glob.glob(os.path.join(data_root, MANIFEST_PATTERN)))
        if not manifests:
            raise DatasetError(f"no {MANIFEST_PATTERN} in '{data_root}': is it a folder written by "
                               "`python -m comfyui_diffbody.training.prepare_data`?")
        self.items: list[dict[str, Any]] = []
        seen: dict[str, str] = {}
        for manifest in manifests:
            with open(manifest, encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    where = f"{os.path.basename(manifest)} line {number}"
                    item = self._check_line(line, where)
                    if item["id"] in seen:
                        raise DatasetError(f"item id {item['id']!r} appears twice ({seen[item['id']]} and {where})")
                    seen[item["id"]] = where
                    self.items.append(item)
        if not self.items:
            raise DatasetError(f"the manifests in '{data_root}' list no item")

    def _check_line(self, line: str, where: str) -> dict[str, Any]:
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where} of '{self.data_root}' is not JSON ({e})") from e
        required = [f for f in self.fields if f not in DERIVED_FIELDS]
        missing = [k for k in ("id", "width", "height", *required) if k not in item]
        if missing:
            raise DatasetError(f"{where} of '{self.data_root}' lacks {', '.join(missing)}")
        if not (isinstance(item["width"], int) and isinstance(item["height"], int)
                and item["width"] > 0 and item["height"] > 0):
            raise DatasetError(f"{where}: width and height must be positive integers, got "
                               f"{item['width']!r} x {item['height']!r}")
        return item

    def __len__(self) -> int:
        return len(self.items)

    @property
    def bucket_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every item, in order: what bucketed batching groups by."""
        return [(item["height"], item["width"]) for item in self.items]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        out: dict[str, Any] = {"id": str(item["id"]), "width": item["width"], "height": item["height"]}
        for field in self.fields:
            if field in IMAGE_FIELDS:
                out[field] = self._read_image(item, field)
            elif field == "keypoints":
                with open(self._path(item, field), encoding="utf-8") as f:
                    out[field] = json.load(f)
            else:
                out[field] = str(item[field])
        return out

    def relative_path(self, index: int, field: str) -> str:
        """The path of item `index`'s `field` file, relative to DATA_ROOT (whether it exists or not)."""
        return _relative(self.items[index], field)

    def missing(self, field: str) -> list[str]:
        """Ids of the items whose `field` file does not exist (e.g. "ires" before the I_res step ran)."""
        return [str(item["id"]) for item in self.items
                if not os.path.isfile(os.path.join(self.data_root, _relative(item, field)))]

    def _path(self, item: dict, field: str) -> str:
        path = os.path.join(self.data_root, _relative(item, field))
        if not os.path.isfile(path):
            hint = " (run `python -m comfyui_diffbody.training.prepare_ires`)" if field == "ires" else ""
            raise DatasetError(f"item {item['id']!r}: its {field} file '{path}' does not exist{hint}")
        return path

    def _read_image(self, item: dict, field: str) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        path = self._path(item, field)
        with Image.open(path) as image:
            if image.size != (item["width"], item["height"]):
                raise DatasetError(f"item {item['id']!r}: '{path}' is {image.size[0]}x{image.size[1]}, the manifest "
                                   f"says {item['width']}x{item['height']}")
            array = np.asarray(image.convert("L" if field == "depth" else "RGB"))
        tensor = torch.from_numpy(array.copy()).float().div_(255.0)
        if field == "depth":
            return tensor.unsqueeze(0).expand(3, -1, -1).contiguous()
        return tensor.permute(2, 0, 1).contiguous()


def _relative(item: dict, field: str) -> str:
    if field in DERIVED_FIELDS and field not in item:
        return f"{DERIVED_FIELDS[field]}/{item['id']}.png"
    return item[field]


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of dataset items: tensors stacked (one size per batch, as bucketed batches are), other
    values as lists."""
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise DatasetError(f"a batch mixes sizes of {key!r} ({sorted(shapes)}); batch with "
                                   "bucket_batches so every batch holds one bucket")
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


# ---- bucketed batches ----------------------------------------------------------------------------------

class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of item indices, each from one bucket (paper section 4.1: five resolution buckets).

    Per epoch: each bucket's items are shuffled and cut into batches (the last one smaller unless
    `drop_last`), all batches are shuffled together, cut to a multiple of `num_replicas`, and process
    `rank` takes every num_replicas-th one, so every process gets the same number of batches. The order
    depends only on (seed, epoch): `epoch_batches(epoch, start)` re-creates any position exactly.
    Iterating the sampler itself yields the batches of `self.epoch` (set with `set_epoch`).
    """

    def __init__(self, bucket_keys: Sequence[Hashable], batch_size: int, *, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, drop_last: bool = False, shuffle: bool = True):
        if batch_size < 1:
            raise DatasetError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise DatasetError(f"rank {rank} is not among {num_replicas} processes")
        self.buckets: dict[Hashable, list[int]] = {}
        for index, key in enumerate(bucket_keys):
            self.buckets.setdefault(key, []).append(index)
        self.batch_size, self.seed, self.num_replicas, self.rank = batch_size, seed, num_replicas, rank
        self.drop_last, self.shuffle, self.epoch = drop_last, shuffle, 0
        if len(self) == 0:
            sizes = {k: len(v) for k, v in self.buckets.items()}
            raise DatasetError(f"no batch for {num_replicas} process(es): batch size {batch_size}, drop_last "
                               f"{drop_last}, items per bucket {sizes}")

    def _total_batches(self) -> int:
        count = 0
        for indices in self.buckets.values():
            count += len(indices) // self.batch_size if self.drop_last else -(-len(indices) // self.batch_size)
        return count - count % self.num_replicas

    def __len__(self) -> int:
        """Batches per epoch for this process."""
        return self._total_batches() // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def all_batches(self, epoch: int) -> list[list[int]]:
        """Every process's batches of `epoch`, before sharding."""
        rng = random.Random(f"{self.seed}-{epoch}")
        batches = []
        for key in sorted(self.buckets, key=repr):
            indices = list(self.buckets[key])
            if self.shuffle:
                rng.shuffle(indices)
            for i in range(0, len(indices), self.batch_size):
                chunk = indices[i:i + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        if self.shuffle:
            rng.shuffle(batches)
        return batches[:self._total_batches()]

    def epoch_batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        """This process's batches of `epoch`, from its `start`-th on."""
        return self.all_batches(epoch)[self.rank::self.num_replicas][start:]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.epoch_batches(self.epoch))


def bucket_batches(dataset_or_keys, batch_size: int, *, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                   drop_last: bool = False, shuffle: bool = True) -> BucketBatchSampler:
    """A BucketBatchSampler over a dataset with `bucket_sizes` (ManifestDataset) or over a list of bucket keys.
    Use it as DataLoader(dataset, batch_sampler=..., collate_fn=collate_items)."""
    keys = getattr(dataset_or_keys, "bucket_sizes", dataset_or_keys)
    return BucketBatchSampler(keys, batch_size, seed=seed, num_replicas=num_replicas, rank=rank,
                              drop_last=drop_last, shuffle=shuffle)


# ---- degraded inputs -----------------------------------------------------------------------------------

_DEFAULT_DEGRADATIONS: dict[int, Any] = {}


def make_degraded(images: torch.Tensor, generator: torch.Generator, *, degradation=None,
                  scale: int = 4) -> torch.Tensor:
    """I_LQ for a batch of I_HQ (B, 3, H, W) in 0..1: Real-ESRGAN's random second-order degradation
    (training/degradations.py; each image draws its own parameters from `generator`) at 1/scale,
    brought back to (H, W) bicubically as the restoration networks take it. H and W must be multiples of
    `scale`. `degradation`: a RealESRGANDegradation with other settings (its resize_back must be True)."""
    from .degradations import RealESRGANDegradation

    if degradation is None:
        degradation = _DEFAULT_DEGRADATIONS.get(scale)
        if degradation is None:
            degradation = _DEFAULT_DEGRADATIONS[scale] = RealESRGANDegradation(scale=scale, resize_back=True)
    elif not degradation.resize_back:
        raise DatasetError("make_degraded needs a degradation with resize_back=True (LQ at the HQ size)")
    return degradation(images.float(), generator)
