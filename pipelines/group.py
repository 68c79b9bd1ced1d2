"""Group photos: one crop per person (or per face), each restored on its own, pasted back with a mask that
follows the person rather than the box.

The paper trains and samples on one person per bucket-sized crop; a group picture put through one bucket gives
each person a few hundred pixels. Here every person of a pose frame (keypoints.py's POSE_KEYPOINT, pixels, c = 1
found) becomes a region:

- **Head.** Centre and radius `r` of the head from the face keypoints, ears, eyes, nose-neck distance or
  shoulders (`head_circle`; the largest of the estimates found, since a turned head shortens the others).
  `r` is the person's unit: limb widths, dilation and feather are fractions of it, so a mask looks the same at
  any resolution.
- **Mask** (`region_mask`): the person's skeleton drawn solid with OpenCV (limbs 0.6 r wide each side, the
  torso polygon, the head disc, a disc for each hand and foot, hand keypoints when there are any), dilated by
  `MaskSettings.dilation` r (a Euclidean distance threshold, cv2.distanceTransform) and feathered with a
  Gaussian of sigma `MaskSettings.feather` r (cv2.GaussianBlur). A face region's mask is a filled ellipse
  around the head (r wide, 1.25 r tall each side), dilated and feathered alike.
- **Box** (`_place_box`): the mask's extent (where the feathered mask is non-zero) clipped to the image, grown
  by `context` times its longer side on every side, extended (never cut) to the aspect of the nearest training
  bucket (buckets.nearest_bucket; faces always 512x512). A box larger than the image first shrinks about its
  centre, never below the bucket-aspect box of the mask's extent; then it is shifted inside the image; only a
  box still larger than the image reaches outside it, and those pixels repeat the image's edges (as the
  stage-2 canvas pads). The box always holds the whole mask that lies inside the image.
- **Crop** (`crop_regions`): the box resized to exactly its bucket (buckets.resize: bicubic, antialiased).
- **Paste** (`paste_regions`): each restored crop, at any size, is resized back to its box and blended over the
  global image with its mask, in paste order. What is blended is the restored crop plus the detail of the
  global image that a trip through the crop's size loses (global box - resize(resize(global box, crop size),
  box size)): a box smaller than its bucket loses only the resampling error, a larger one the detail finer than
  the bucket, which the global pass keeps. So an unrestored crop pastes back as the input itself, and a
  restored one brings its own picture at its own resolution and the global pass's finer detail.
- **Order**: people are pasted by their lowest keypoint, highest first: the person whose feet (or lowest
  visible point) are lower in the picture - usually nearer the camera - is pasted later and ends up on top
  where masks overlap; equal ones by their index in the frame. Faces follow the same order.
- **No people**: `find_regions` returns no regions; `with_placeholder` gives one "picture" region (the whole
  picture on its bucket, an empty mask) for graphs that must run on something: its paste changes nothing.

`GroupCrops` is the crop data: plain numbers and the keypoints, so it goes through ComfyUI as a custom type and
to JSON beside the crops (`to_dict` / `from_dict`); it also holds the batches the crops travel in (crops sharing
a bucket, `bucket_batches`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..models.errors import DiffBodyError
from .buckets import nearest_bucket
from .presets import PERSON_CONTEXT
from .pose.keypoints import (BODY_LIMBS, L_ANKLE, L_EAR, L_EYE, L_HIP, L_SHOULDER, L_WRIST, NECK, NOSE, PART_KEYS,
                             R_ANKLE, R_EAR, R_EYE, R_HIP, R_SHOULDER, R_WRIST, Frame, Person,
                             check_frame, flatten_part, frame_in_pixels, make_frame, make_person, part_arrays,
                             scale_frame)

if TYPE_CHECKING:
    import torch

KINDS = ("person", "face")
PLACEHOLDER_KIND = "picture"
FACE_BUCKET = (512, 512)  # a face region is square
DEFAULT_CONTEXT = PERSON_CONTEXT  # presets.py: one default for the node, the command line and the workflow
CROP_DATA_VERSION = 1

# Shapes of the person mask, in head radii (r).
LIMB_RADIUS = 0.6
HAND_RADIUS = 0.8  # a disc at each wrist: the hand, when its keypoints are missing
FOOT_RADIUS = 0.7  # a disc at each ankle: the foot
FINGER_RADIUS = 0.25
FACE_ELLIPSE = (1.0, 1.25)  # semi-axes (x, y) of a face region's ellipse
HEAD_RAISE = 0.1  # the skull's centre sits a little above the mean of eyes, ears and nose
BLUR_REACH = 4.0  # cv2.GaussianBlur's kernel reaches 4 sigma on float images: the mask is 0 beyond
# Head radius from a distance between keypoints (adult proportions: head 23 cm tall, 15 cm ear to ear,
# pupils 6.3 cm apart, shoulders 38 cm, nose to the shoulders' midpoint about 16 cm, face keypoints 17 cm).
HEAD_FROM = {"face": 0.7, "ears": 0.75, "eyes": 1.8, "shoulders": 0.3, "neck": 0.7}
TORSO = (NECK, R_SHOULDER, R_HIP, L_HIP, L_SHOULDER)
HEAD_POINTS = (NOSE, R_EYE, L_EYE, R_EAR, L_EAR)


class GroupCropError(DiffBodyError):
    """Crop data and crops that do not fit together (or crop data the pack cannot read)."""


@dataclass(frozen=True)
class MaskSettings:
    """dilation: how far the mask reaches past the drawn skeleton; feather: the Gaussian sigma of its edge;
    both in head radii."""

    dilation: float = 0.75
    feather: float = 0.25

    def __post_init__(self):
        if not (self.dilation >= 0 and self.feather >= 0):
            raise ValueError(f"mask dilation and feather must be >= 0, got {self.dilation} and {self.feather}")


@dataclass(frozen=True)
class CropRegion:
    """One crop. box: (top, left, height, width) in image pixels, possibly reaching outside the image (padded by
    its edges); bucket: the crop's (H, W); person: that person's keypoints (POSE_KEYPOINT person, image pixels);
    image: index in the batch; index: the person's index in its frame (-1 for the placeholder)."""

    kind: str
    image: int
    index: int
    box: tuple[int, int, int, int]
    bucket: tuple[int, int]
    person: Person


@dataclass(frozen=True)
class GroupCrops:
    """The crop data: what Paste needs to put restored crops back. regions are in paste order; batches are the
    region indices of each crop batch, in the order the crops travel."""

    image_size: tuple[int, int]
    regions: tuple[CropRegion, ...]
    context: float = DEFAULT_CONTEXT
    mask: MaskSettings = field(default_factory=MaskSettings)
    batches: tuple[tuple[int, ...], ...] = ()

    def crop_order(self) -> list[int]:
        """Region index of each crop, in the order the crops travel (the batches, flattened)."""
        return [i for batch in self.batches for i in batch] if self.batches else list(range(len(self.regions)))

    def to_dict(self) -> dict[str, Any]:
        return {"version": CROP_DATA_VERSION, "image_size": list(self.image_size), "context": self.context,
                "mask": {"dilation": self.mask.dilation, "feather": self.mask.feather},
                "batches": [list(b) for b in self.batches],
                "regions": [{"kind": r.kind, "image": r.image, "index": r.index, "box": list(r.box),
                             "bucket": list(r.bucket), "person": r.person} for r in self.regions]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GroupCrops":
        try:
            if data.get("version") != CROP_DATA_VERSION:
                raise GroupCropError(f"crop data version {data.get('version')!r}; this pack reads {CROP_DATA_VERSION}")
            regions = tuple(CropRegion(kind=r["kind"], image=int(r["image"]), index=int(r["index"]),
                                       box=tuple(int(v) for v in r["box"]), bucket=tuple(int(v) for v in r["bucket"]),
                                       person=r["person"]) for r in data["regions"])
            return cls(image_size=tuple(int(v) for v in data["image_size"]), regions=regions,
                       context=float(data["context"]), mask=MaskSettings(**data["mask"]),
                       batches=tuple(tuple(int(i) for i in b) for b in data.get("batches", ())))
        except (KeyError, TypeError, ValueError) as error:
            raise GroupCropError(f"not DiffBody crop data ({error!r})") from error

    def resized_to(self, height: int, width: int) -> "GroupCrops":
        """The same regions on the picture at another size (a global pass that upscaled, say)."""
        old_h, old_w = self.image_size
        if (height, width) == (old_h, old_w):
            return self
        sy, sx = height / old_h, width / old_w
        regions = []
        for r in self.regions:
            top, left, h, w = r.box
            y0, x0 = round(top * sy), round(left * sx)
            box = (y0, x0, max(1, round((top + h) * sy) - y0), max(1, round((left + w) * sx) - x0))
            frame = scale_frame(make_frame([r.person], old_h, old_w), height, width)
            regions.append(replace(r, box=box, person=frame["people"][0]))
        return replace(self, image_size=(height, width), regions=tuple(regions))


# ------------------------------------------------------------------------------------------ geometry

def _found(person: Person, part: str) -> np.ndarray:
    xy, found = part_arrays(person, part)
    return xy[found]


def _all_found(person: Person) -> np.ndarray:
    return np.concatenate([_found(person, part) for part in PART_KEYS]).reshape(-1, 2)


def head_circle(person: Person) -> tuple[float, float, float] | None:
    """(cx, cy, r) of the person's head in pixels; r also sizes the rest of the mask. None when no keypoint was
    found. Without head keypoints the centre is a head's length above the neck (or the top keypoint)."""
    body, found = part_arrays(person, "body")
    face = _found(person, "face")
    everything = _all_found(person)
    if len(everything) == 0:
        return None

    def apart(a: int, b: int) -> float | None:
        return float(np.hypot(*(body[a] - body[b]))) if found[a] and found[b] else None

    estimates = [HEAD_FROM["face"] * float(np.ptp(face, axis=0).max())] if len(face) >= 10 else []
    for name, (a, b) in (("ears", (R_EAR, L_EAR)), ("eyes", (R_EYE, L_EYE)), ("shoulders", (R_SHOULDER, L_SHOULDER)),
                         ("neck", (NECK, NOSE))):
        distance = apart(a, b)
        if distance:
            estimates.append(HEAD_FROM[name] * distance)
    r = max(estimates) if estimates else float(np.ptp(everything, axis=0).max()) / 15  # 7.5 heads tall
    r = max(r, 2.0)
    head = [p for p in HEAD_POINTS if found[p]]
    if len(face):
        cx, cy = face.mean(axis=0)
    elif head:
        cx, cy = body[head].mean(axis=0)
    elif found[NECK]:
        cx, cy = body[NECK] - (0, 1.5 * r)
    else:
        top = everything[np.argmin(everything[:, 1])]
        cx, cy = top[0], top[1] - r
    return float(cx), float(cy) - HEAD_RAISE * r, r


@dataclass(frozen=True)
class _Shapes:
    """What a mask is drawn from, in image pixels: discs (x, y, radius), capsules (x0, y0, x1, y1, radius),
    filled polygons, ellipses (x, y, rx, ry), and the head radius its settings scale with."""

    r: float
    discs: tuple = ()
    capsules: tuple = ()
    polygons: tuple = ()
    ellipses: tuple = ()

    def extent(self) -> tuple[float, float, float, float]:
        """(y0, x0, y1, x1) of everything drawn."""
        boxes = [(y - d, x - d, y + d, x + d) for x, y, d in self.discs]
        boxes += [(min(y0, y1) - d, min(x0, x1) - d, max(y0, y1) + d, max(x0, x1) + d)
                  for x0, y0, x1, y1, d in self.capsules]
        boxes += [(y - ry, x - rx, y + ry, x + rx) for x, y, rx, ry in self.ellipses]
        arr = np.asarray(boxes, dtype=np.float64)
        return float(arr[:, 0].min()), float(arr[:, 1].min()), float(arr[:, 2].max()), float(arr[:, 3].max())


def _person_shapes(person: Person) -> _Shapes | None:
    head = head_circle(person)
    if head is None:
        return None
    cx, cy, r = head
    body, found = part_arrays(person, "body")
    discs = [(cx, cy, r)] + [(float(x), float(y), LIMB_RADIUS * r) for x, y in body[found]]
    discs += [(*map(float, body[i]), HAND_RADIUS * r) for i in (R_WRIST, L_WRIST) if found[i]]
    discs += [(*map(float, body[i]), FOOT_RADIUS * r) for i in (R_ANKLE, L_ANKLE) if found[i]]
    capsules = [(*map(float, body[a]), *map(float, body[b]), LIMB_RADIUS * r)
                for a, b in BODY_LIMBS if found[a] and found[b] and not {a, b} <= set(HEAD_POINTS)]
    for side in ("left_hand", "right_hand"):
        hand = _found(person, side)
        discs += [(float(x), float(y), FINGER_RADIUS * r) for x, y in hand]
    torso = [body[i] for i in TORSO if found[i]]
    polygons = (np.asarray(torso, np.float64),) if len(torso) >= 3 else ()
    return _Shapes(r=r, discs=tuple(discs), capsules=tuple(capsules), polygons=polygons)


def _face_shapes(person: Person) -> _Shapes | None:
    head = head_circle(person)
    if head is None:
        return None
    cx, cy, r = head
    return _Shapes(r=r, ellipses=((cx, cy, FACE_ELLIPSE[0] * r, FACE_ELLIPSE[1] * r),))


def _shapes(region: CropRegion) -> _Shapes | None:
    if region.kind == "person":
        return _person_shapes(region.person)
    if region.kind == "face":
        return _face_shapes(region.person)
    return None


def _reach(shapes: _Shapes, settings: MaskSettings) -> float:
    """How far the finished mask reaches past the drawn shapes, in pixels."""
    return settings.dilation * shapes.r + BLUR_REACH * settings.feather * shapes.r + 1


def _mask_extent(shapes: _Shapes, settings: MaskSettings) -> tuple[float, float, float, float]:
    y0, x0, y1, x1 = shapes.extent()
    reach = _reach(shapes, settings)
    return y0 - reach, x0 - reach, y1 + reach, x1 + reach


def _aspect_box(y0: float, x0: float, y1: float, x1: float, bucket: tuple[int, int]) -> tuple[float, ...]:
    """The box grown about its centre (never cut) to the bucket's aspect: (cy, cx, h, w)."""
    h, w = max(y1 - y0, 1.0), max(x1 - x0, 1.0)
    aspect = bucket[1] / bucket[0]
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    return (y0 + y1) / 2, (x0 + x1) / 2, h, w


def _place_box(extent, image_size: tuple[int, int], context: float,
               bucket: tuple[int, int] | None = None) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """(box, bucket) for a mask extent (y0, x0, y1, x1), as the module's docstring says."""
    height, width = image_size
    y0, x0, y1, x1 = max(extent[0], 0.0), max(extent[1], 0.0), min(extent[2], height), min(extent[3], width)
    pad = context * max(y1 - y0, x1 - x0)
    grown = (y0 - pad, x0 - pad, y1 + pad, x1 + pad)
    bucket = bucket or nearest_bucket(max(1, round(grown[2] - grown[0])), max(1, round(grown[3] - grown[1])))
    cy, cx, h, w = _aspect_box(*grown, bucket)
    smallest = _aspect_box(y0, x0, y1, x1, bucket)[2]
    scale = max(min(1.0, height / h, width / w), smallest / h)
    h, w = h * scale, w * scale
    box_h, box_w = max(1, math.ceil(h - 1e-6)), max(1, math.ceil(w - 1e-6))  # the aspect to within a pixel
    return (_shift_inside(cy - box_h / 2, box_h, height), _shift_inside(cx - box_w / 2, box_w, width),
            box_h, box_w), bucket


def _shift_inside(start: float, size: int, limit: int) -> int:
    """Where a box of `size` starting near `start` lies inside [0, limit): centred over it when too big."""
    if size >= limit:
        return -((size - limit) // 2)
    return int(min(max(round(start), 0), limit - size))


def _lowest_point(person: Person) -> float:
    points = _all_found(person)
    return float(points[:, 1].max()) if len(points) else 0.0


def find_regions(frames: Sequence[Frame], image_size: tuple[int, int], kind: str = "person", *,
                 context: float = DEFAULT_CONTEXT, max_people: int = 0,
                 mask: MaskSettings = MaskSettings()) -> GroupCrops:
    """The crop data for the people of each frame (one frame per batch image; their canvas may be any size, they
    are scaled to `image_size`). kind "person" or "face"; max_people > 0 keeps that many per image, the largest."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    height, width = image_size
    regions = []
    for image, frame in enumerate(frames):
        frame = scale_frame(frame_in_pixels(check_frame(frame)), height, width)
        found = []
        for index, person in enumerate(frame["people"]):
            shapes = _person_shapes(person) if kind == "person" else _face_shapes(person)
            extent = None if shapes is None else _mask_extent(shapes, mask)
            if extent is None or extent[2] <= 0 or extent[3] <= 0 or extent[0] >= height or extent[1] >= width:
                continue  # nobody found, or nobody inside the picture
            box, bucket = _place_box(extent, image_size, context, FACE_BUCKET if kind == "face" else None)
            found.append(CropRegion(kind, image, index, box, bucket, person))
        if max_people > 0:
            found = sorted(found, key=lambda r: (-_visible_area(r.box, image_size), r.index))[:max_people]
        regions += sorted(found, key=lambda r: (_lowest_point(r.person), r.index))
    return GroupCrops(image_size=(height, width), regions=tuple(regions), context=context, mask=mask)


def _visible_area(box, image_size) -> int:
    top, left, h, w = box
    return max(0, min(top + h, image_size[0]) - max(top, 0)) * max(0, min(left + w, image_size[1]) - max(left, 0))


def with_placeholder(crops: GroupCrops) -> GroupCrops:
    """The crop data unchanged if it has regions; else one "picture" region: the first image on its bucket,
    with an empty mask (its paste changes nothing)."""
    if crops.regions:
        return crops
    box, bucket = _place_box((0.0, 0.0, *map(float, crops.image_size)), crops.image_size, 0.0)
    nobody = make_person(flatten_part(np.zeros((18, 2)), np.zeros(18)))
    region = CropRegion(PLACEHOLDER_KIND, 0, -1, box, bucket, nobody)
    return replace(crops, regions=(region,), batches=())


def bucket_batches(crops: GroupCrops, max_batch: int) -> GroupCrops:
    """The crop data with its batches set: regions sharing a bucket travel together, at most max_batch at a time,
    in paste order within a bucket, the buckets in the order they first come."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i, region in enumerate(crops.regions):
        by_bucket.setdefault(region.bucket, []).append(i)
    batches = tuple(tuple(group[k:k + max_batch]) for group in by_bucket.values()
                    for k in range(0, len(group), max_batch))
    return replace(crops, batches=batches)


# ------------------------------------------------------------------------------------------ masks

def region_mask(region: CropRegion, settings: MaskSettings) -> np.ndarray:
    """The region's feathered mask over its box: (height, width) float32 in 0..1, box pixels."""
    import cv2

    top, left, h, w = region.box
    shapes = _shapes(region)
    if shapes is None:
        return np.zeros((h, w), np.float32)
    # Drawn on the box plus the blur's reach, so shapes just outside the box still feather into it.
    margin = math.ceil(_reach(shapes, settings)) + 1
    canvas = np.zeros((h + 2 * margin, w + 2 * margin), np.uint8)
    oy, ox = top - margin, left - margin

    def point(x: float, y: float) -> tuple[int, int]:
        return int(round(x - ox)), int(round(y - oy))

    for x, y, radius in shapes.discs:
        cv2.circle(canvas, point(x, y), int(round(radius)), 1, thickness=-1)
    for x0, y0, x1, y1, radius in shapes.capsules:
        cv2.line(canvas, point(x0, y0), point(x1, y1), 1, thickness=max(1, int(round(2 * radius))))
    for polygon in shapes.polygons:
        cv2.fillConvexPoly(canvas, cv2.convexHull(np.asarray([point(x, y) for x, y in polygon], np.int32)), 1)
    for x, y, rx, ry in shapes.ellipses:
        cv2.ellipse(canvas, point(x, y), (int(round(rx)), int(round(ry))), 0, 0, 360, 1, thickness=-1)
    dilation = settings.dilation * shapes.r
    if dilation > 0:
        # Dilation by a disc, as "within `dilation` of the shapes": linear time (cv2.dilate with a 270-pixel
        # elliptical kernel took a second per large person)
        canvas = cv2.distanceTransform(1 - canvas, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= dilation
    mask = canvas.astype(np.float32)
    sigma = settings.feather * shapes.r
    if sigma > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    return np.clip(mask[margin:margin + h, margin:margin + w], 0.0, 1.0)


def image_masks(crops: GroupCrops, images: int = 1) -> np.ndarray:
    """(images, H, W) float32: every region's mask in image pixels, the largest where they overlap."""
    height, width = crops.image_size
    out = np.zeros((images, height, width), np.float32)
    for region in crops.regions:
        if region.image >= images:
            continue
        (y0, y1, x0, x1), (sy, sx) = _inside(region.box, crops.image_size)
        mask = region_mask(region, crops.mask)[sy:sy + y1 - y0, sx:sx + x1 - x0]
        np.maximum(out[region.image, y0:y1, x0:x1], mask, out=out[region.image, y0:y1, x0:x1])
    return out


def _inside(box, image_size) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The part of a box inside the image, as image slices (y0, y1, x0, x1), and where it starts in the box."""
    top, left, h, w = box
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, image_size[0]), min(left + w, image_size[1])
    return (y0, max(y0, y1), x0, max(x0, x1)), (y0 - top, x0 - left)


# ------------------------------------------------------------------------------------------ crop and paste

def _box_pixels(image: "torch.Tensor", box) -> "torch.Tensor":
    """(C,H,W) -> (C,h,w): the box's pixels, the image's edge pixels repeated where the box reaches outside."""
    import torch

    top, left, h, w = box
    rows = torch.arange(top, top + h).clamp_(0, image.shape[-2] - 1)
    cols = torch.arange(left, left + w).clamp_(0, image.shape[-1] - 1)
    return image.index_select(-2, rows.to(image.device)).index_select(-1, cols.to(image.device))


def _check_images(images: "torch.Tensor", crops: GroupCrops, what: str) -> None:
    from .image import check_bchw

    check_bchw(images, what)
    if tuple(images.shape[-2:]) != tuple(crops.image_size):
        raise GroupCropError(f"{what} is {images.shape[-1]}x{images.shape[-2]}, the crop data is for "
                             f"{crops.image_size[1]}x{crops.image_size[0]}")
    needed = max((r.image for r in crops.regions), default=-1) + 1
    if images.shape[0] < needed:
        raise GroupCropError(f"{what} holds {images.shape[0]} image(s), the crop data has regions in {needed}")


def crop_regions(images: "torch.Tensor", crops: GroupCrops) -> list["torch.Tensor"]:
    """(B,3,H,W) float 0..1 -> one (3, bucket) crop per region, in the crop data's crop order."""
    from .buckets import resize

    _check_images(images, crops, "the image to crop")
    regions = [crops.regions[i] for i in crops.crop_order()]
    return [resize(_box_pixels(images[r.image], r.box)[None].float(), r.bucket)[0] for r in regions]


def crop_masks(crops: GroupCrops) -> list["torch.Tensor"]:
    """One (bucket) mask per region, in crop order: the person (or face) mask in the crop's pixels."""
    import torch

    from .buckets import resize

    regions = [crops.regions[i] for i in crops.crop_order()]
    return [resize(torch.from_numpy(region_mask(r, crops.mask))[None, None], r.bucket)[0, 0] for r in regions]


def crop_frames(crops: GroupCrops) -> list[Frame]:
    """One POSE_KEYPOINT frame per region, in crop order: that person alone, in the crop's pixels (the skeleton
    and priors of that person only)."""
    frames = []
    for i in crops.crop_order():
        region = crops.regions[i]
        top, left, h, w = region.box
        bh, bw = region.bucket
        person = {}
        for part, key in PART_KEYS.items():
            if region.person.get(key) is None:
                person[key] = None
                continue
            xy, found = part_arrays(region.person, part)
            mapped = (xy - np.float32([left, top])) * np.float32([bw / w, bh / h])
            person[key] = flatten_part(mapped, found.astype(np.float32), threshold=0.5)
        frames.append(make_frame([person] if region.kind != PLACEHOLDER_KIND else [], bh, bw))
    return frames


def paste_regions(global_images: "torch.Tensor", restored: Sequence["torch.Tensor"],
                  crops: GroupCrops) -> "torch.Tensor":
    """The global images (B,3,H,W) with each restored crop (3,h,w at any size, in crop order) pasted back."""
    import torch

    from .buckets import resize

    order = crops.crop_order()
    if len(restored) != len(order):
        raise GroupCropError(f"{len(restored)} crop(s) for {len(order)} region(s) of the crop data; connect the "
                             "crops that came from the same 'Crop People' (in the same order)")
    if tuple(global_images.shape[-2:]) != tuple(crops.image_size):
        crops = crops.resized_to(*global_images.shape[-2:])
    _check_images(global_images, crops, "the global image")
    source = global_images.float()
    out = source.clone()
    by_region = dict(zip(order, restored))
    for i, region in enumerate(crops.regions):  # paste order
        crop = by_region[i].float().to(out.device)
        if crop.ndim != 3 or crop.shape[0] != 3 or 0 in crop.shape:
            raise GroupCropError(f"crop {order.index(i)} must be (3, height, width), got {tuple(crop.shape)}")
        (y0, y1, x0, x1), (sy, sx) = _inside(region.box, crops.image_size)
        if y1 == y0 or x1 == x0:
            continue
        box_size = tuple(region.box[2:])
        base = _box_pixels(source[region.image], region.box)[None]
        # The global plus what the crop changed, both seen through the crop's size: the global keeps the detail
        # that trip loses, and an unrestored crop changes nothing, bit for bit.
        change = resize(crop[None], box_size) - resize(resize(base, tuple(crop.shape[-2:])), box_size)
        patch = (base + change).clamp_(0, 1)[0, :, sy:sy + y1 - y0, sx:sx + x1 - x0]
        mask = torch.from_numpy(region_mask(region, crops.mask)[sy:sy + y1 - y0, sx:sx + x1 - x0]).to(out.device)
        target = out[region.image, :, y0:y1, x0:x1]
        target.copy_(torch.lerp(target, patch, mask))
    return out
