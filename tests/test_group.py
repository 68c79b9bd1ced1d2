"""Group photos (pipelines/group.py, nodes/group.py): crops per person or face, masks, paste back.

Real photos: a collage of scikit-image's photos of people in one row, 320x320 each (testing/photos.py): the
astronaut, the cameraman, the astronaut mirrored, the cameraman mirrored - FOUR people, one per tile. Their
keypoints come from the pack's MediaPipe backend (mediapipe 0.10.21 with its bundled weights), which runs in its
own cached venv (scripts/mediapipe_venv.sh, tests/mediapipe_pose_check.py --frame; marker `mediapipe_venv`). The
other tests use keypoints written by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_diffbody.nodes.group import CropPeople, PastePeople
from comfyui_diffbody.pipelines import group
from comfyui_diffbody.pipelines.buckets import BUCKETS, resize
from comfyui_diffbody.pipelines.pose import keypoints as kp
from comfyui_diffbody.testing.photos import PEOPLE_IN_COLLAGE, people_collage

REPO = Path(__file__).resolve().parent.parent
TILE = 320
QUANTUM = 1 / 255


# ---------------------------------------------------------------- helpers

def standing_person(cx: float, top: float, unit: float) -> dict:
    """A person facing the camera, head at `top`, about 8 `unit`s tall, every body keypoint found."""
    layout = {kp.NOSE: (0, 0.5), kp.NECK: (0, 1.5), kp.R_SHOULDER: (-1, 1.5), kp.L_SHOULDER: (1, 1.5),
              kp.R_ELBOW: (-1.2, 3), kp.L_ELBOW: (1.2, 3), kp.R_WRIST: (-1.3, 4.3), kp.L_WRIST: (1.3, 4.3),
              kp.R_HIP: (-0.6, 4.5), kp.L_HIP: (0.6, 4.5), kp.R_KNEE: (-0.6, 6.2), kp.L_KNEE: (0.6, 6.2),
              kp.R_ANKLE: (-0.6, 7.8), kp.L_ANKLE: (0.6, 7.8), kp.R_EYE: (-0.2, 0.35), kp.L_EYE: (0.2, 0.35),
              kp.R_EAR: (-0.4, 0.4), kp.L_EAR: (0.4, 0.4)}
    xy = np.zeros((18, 2))
    for i, (x, y) in layout.items():
        xy[i] = (cx + x * unit, top + y * unit)
    return kp.person_from_openpose18(xy, np.ones(18))


def comfy_image(array: np.ndarray) -> torch.Tensor:
    """(H,W,C) uint8 -> ComfyUI IMAGE (1,H,W,C) float."""
    return torch.from_numpy(array.astype(np.float32) / 255.0)[None]


def crop_node(image, frames, **options):
    settings = dict(regions="person", context=0.1, max_people=0, batch_size=1, dilation=0.75, feather=0.25)
    settings.update(options)
    return CropPeople().crop(image, frames, **settings)


def paste_node(image, crops, crop_data):
    return PastePeople().paste([image], crops, [crop_data])[0]


def flat_crops(crop_batches) -> list[torch.Tensor]:
    return [crop for batch in crop_batches for crop in batch]


def mask_support(crop_data: group.GroupCrops) -> np.ndarray:
    return group.image_masks(crop_data)[0]


def changed(a: torch.Tensor, b: torch.Tensor, atol: float = 0.0) -> np.ndarray:
    """(H, W) bool: pixels where two IMAGEs (1,H,W,3) differ by more than atol in any channel."""
    return ((a - b).abs().amax(dim=-1)[0] > atol).numpy()


# ---------------------------------------------------------------- the collage and its keypoints

@pytest.fixture(scope="module")
def collage() -> np.ndarray:
    return people_collage(TILE)


def mediapipe_frame(image: np.ndarray, work: Path) -> dict:
    """The MediaPipe backend's POSE_KEYPOINT frame for an RGB image, computed in the mediapipe venv."""
    from PIL import Image

    path = work / "image.png"
    Image.fromarray(image).save(path)
    build = subprocess.run(["bash", str(REPO / "scripts" / "mediapipe_venv.sh")], capture_output=True, text=True)
    assert build.returncode == 0, f"building the mediapipe venv failed:\n{build.stderr[-4000:]}"
    python = build.stdout.strip().splitlines()[-1]
    run = subprocess.run([python, str(REPO / "tests" / "mediapipe_pose_check.py"), "--repo", str(REPO),
                          "--frame", str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""}, timeout=600)
    assert run.returncode == 0, f"the mediapipe backend failed:\n{run.stderr[-4000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def collage_frame(collage, tmp_path_factory) -> dict:
    return mediapipe_frame(collage, tmp_path_factory.mktemp("collage"))


def tile_of(person: dict) -> int:
    xy, found = kp.part_arrays(person, "body")
    return int(np.median(xy[found, 0]) // TILE)


# ---------------------------------------------------------------- on the collage (MediaPipe)

@pytest.mark.mediapipe_venv
@pytest.mark.timeout(1800)
def test_every_person_in_the_collage_is_found(collage, collage_frame):
    crop_data = group.find_regions([collage_frame], collage.shape[:2])
    assert len(crop_data.regions) == PEOPLE_IN_COLLAGE
    assert sorted(tile_of(r.person) for r in crop_data.regions) == list(range(PEOPLE_IN_COLLAGE))
    height, width = collage.shape[:2]
    for region in crop_data.regions:  # each crop holds its person's whole mask: it fades out inside the box
        mask = group.region_mask(region, crop_data.mask)
        top, left, h, w = region.box
        assert mask.max() > 0.999
        for inside, border in ((top > 0, mask[0]), (top + h < height, mask[-1]), (left > 0, mask[:, 0]),
                               (left + w < width, mask[:, -1])):
            assert not inside or border.max() < QUANTUM


@pytest.mark.mediapipe_venv
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("regions", ["person", "face"])
def test_every_crop_is_at_a_bucket_size(collage, collage_frame, regions):
    crops, crop_data, masks, frames = crop_node(comfy_image(collage), [collage_frame], regions=regions, batch_size=4)
    assert len(crop_data.regions) == PEOPLE_IN_COLLAGE
    assert sum(len(batch) for batch in crops) == PEOPLE_IN_COLLAGE
    for batch, mask_batch, frame_batch in zip(crops, masks, frames):
        assert tuple(batch.shape[1:3]) in BUCKETS and batch.shape[3] == 3
        assert len({tuple(c.shape) for c in batch}) == 1  # a batch shares its bucket
        assert tuple(mask_batch.shape) == tuple(batch.shape[:3])
        assert [(f["canvas_height"], f["canvas_width"]) for f in frame_batch] == [tuple(batch.shape[1:3])] * len(batch)
    if regions == "face":
        assert all(tuple(batch.shape[1:3]) == (512, 512) for batch in crops)


@pytest.mark.mediapipe_venv
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("eight_bit", [False, True], ids=["float", "saved-as-8-bit"])
def test_unrestored_crops_paste_back_as_the_input(collage, collage_frame, eight_bit):
    image = comfy_image(collage)
    crops, crop_data, _, _ = crop_node(image, [collage_frame])
    if eight_bit:  # as the command line writes them to PNG and reads them back
        crops = [(batch * 255).round() / 255 for batch in crops]
    pasted = paste_node(image, crops, crop_data)
    inside = mask_support(crop_data) > 0
    assert inside.any() and not inside.all()
    assert torch.equal(pasted[0][torch.from_numpy(~inside)], image[0][torch.from_numpy(~inside)])
    assert (pasted - image).abs().max().item() <= QUANTUM


@pytest.mark.mediapipe_venv
@pytest.mark.timeout(1800)
def test_a_modified_crop_changes_pixels_only_inside_that_persons_mask(collage, collage_frame):
    image = comfy_image(collage)
    crops, crop_data, _, _ = crop_node(image, [collage_frame])
    order = crop_data.crop_order()
    for k in range(PEOPLE_IN_COLLAGE):
        restored = [batch.clone() for batch in crops]
        restored[k] = 1.0 - restored[k]  # a change everywhere in the crop
        pasted = paste_node(image, restored, crop_data)
        region = crop_data.regions[order[k]]
        own = group.image_masks(group.GroupCrops(crop_data.image_size, (region,), mask=crop_data.mask))[0]
        moved = changed(pasted, image)
        assert moved.any()
        assert not (moved & (own == 0)).any(), f"crop {k} changed pixels outside its person's mask"
        core = own > 0.999
        assert (moved[core]).mean() > 0.9, f"crop {k} did not land on its person"


def face_pass(image: torch.Tensor, frame: dict, feather: float, monkeypatch=None):
    """A face pass modelled as a low-denoise restoration: each face crop brightened by gamma 0.8 (a change of up to
    0.08), pasted back. With `monkeypatch`, also the fully restored image: every face box replaced by its restored
    crop, no mask (the image on the mask's inner side)."""
    crops, crop_data, _, _ = crop_node(image, [frame], regions="face", feather=feather)
    restored = [batch.clamp(0, 1) ** 0.8 for batch in crops]
    pasted = paste_node(image, restored, crop_data)
    if monkeypatch is None:
        return pasted, crop_data
    with monkeypatch.context() as patch:
        patch.setattr(group, "region_mask", lambda region, settings: np.ones(region.box[2:], np.float32))
        return pasted, crop_data, paste_node(image, restored, crop_data)


def seam_steps(pasted: np.ndarray, images: list[np.ndarray], mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Between 4-neighbours on the mask's edge (either inside 0 < mask < 1, or the mask differs between them: a
    hard edge): the step of the pasted image, and the images' own local gradient there: the largest step, in the
    5x5 neighbourhood, of the images blended (the global one and the fully restored one), plus 1/255 (an 8-bit
    picture's smallest step). A step is the largest of its colour channels'. The blend is seamless when no step
    exceeds the local gradient: it adds no edge of its own."""
    from scipy.ndimage import maximum_filter

    band = (mask > 0) & (mask < 1)
    steps, allowed = [], []
    for axis in (0, 1):
        step = np.abs(np.diff(pasted, axis=axis)).max(axis=-1)
        own = np.max([np.abs(np.diff(image, axis=axis)).max(axis=-1) for image in images], axis=0)
        edge = np.delete(band, 0, axis=axis) | np.delete(band, -1, axis=axis) | (np.diff(mask, axis=axis) != 0)
        steps.append(step[edge])
        allowed.append(maximum_filter(own, size=5)[edge] + QUANTUM)
    return np.concatenate(steps), np.concatenate(allowed)


@pytest.mark.mediapipe_venv
@pytest.mark.timeout(1800)
def test_the_face_pass_changes_only_the_faces_and_blends_seamlessly(collage, collage_frame, monkeypatch):
    image = comfy_image(collage)
    pasted, crop_data, restored = face_pass(image, collage_frame, group.MaskSettings.feather, monkeypatch)
    assert len(crop_data.regions) == PEOPLE_IN_COLLAGE
    faces = mask_support(crop_data)
    moved = changed(pasted, image)
    assert not (moved & (faces == 0)).any(), "the face pass changed pixels outside the face regions"
    assert moved[faces > 0.999].mean() > 0.9
    step, allowed = seam_steps(pasted[0].numpy(), [image[0].numpy(), restored[0].numpy()], faces)
    assert step.size > 10000
    assert (step <= allowed).all(), f"{(step > allowed).sum()} steps at the mask edge exceed the local gradient"


@pytest.mark.mediapipe_venv
@pytest.mark.timeout(1800)
def test_the_seam_check_catches_a_hard_edged_face_paste(collage, collage_frame, monkeypatch):
    image = comfy_image(collage)
    pasted, crop_data, restored = face_pass(image, collage_frame, 0.0, monkeypatch)
    faces = mask_support(crop_data)
    assert set(np.unique(faces)) == {0.0, 1.0}
    step, allowed = seam_steps(pasted[0].numpy(), [image[0].numpy(), restored[0].numpy()], faces)
    assert (step > allowed).sum() > 100


# ---------------------------------------------------------------- geometry, order, data (keypoints by hand)

def two_people_frame(height=300, width=400) -> dict:
    return kp.make_frame([standing_person(100, 20, 25), standing_person(250, 60, 20)], height, width)


def test_crops_are_bucket_sized_and_boxes_have_the_bucket_aspect():
    crop_data = group.find_regions([two_people_frame()], (300, 400), context=0.3)
    for region in crop_data.regions:
        _, _, h, w = region.box
        assert region.bucket in BUCKETS
        assert abs(w / h - region.bucket[1] / region.bucket[0]) <= 1.5 / min(h, w)
    crops = group.crop_regions(torch.rand(1, 3, 300, 400), crop_data)
    assert [tuple(c.shape[-2:]) for c in crops] == [r.bucket for r in crop_data.regions]


def test_a_box_near_the_edge_is_shifted_inside_the_picture():
    frame = kp.make_frame([standing_person(20, 10, 20)], 400, 400)  # reaches over the left edge
    (region,) = group.find_regions([frame], (400, 400), context=0.5).regions
    top, left, h, w = region.box
    assert left == 0 and top >= 0 and top + h <= 400 and w <= 400


def test_a_person_larger_than_the_picture_is_padded_not_cut():
    # A 4:5 picture filled by a person: the nearest bucket (2:3) is taller than the picture
    frame = kp.make_frame([standing_person(80, 0, 40)], 200, 160)
    crop_data = group.find_regions([frame], (200, 160), context=0.0)
    (region,) = crop_data.regions
    top, left, h, w = region.box
    assert region.bucket == (768, 512) and (left, w) == (0, 160)
    assert top == -20 and h == 240  # reaches outside, evenly: padded by the picture's edges
    ramp = torch.linspace(0, 1, 200)[:, None].expand(200, 160)  # brighter downwards
    (crop,) = group.crop_regions(ramp.expand(1, 3, 200, 160), crop_data)
    assert tuple(crop.shape[-2:]) == region.bucket
    padding = crop[:, :56]  # 20 of 240 rows are 64 of 768: the top row repeated
    assert (padding - padding[:, :1]).abs().max() < 1e-3 and crop[:, 100:].std() > 0.1


def test_the_mask_follows_the_person_not_the_box():
    frame = kp.make_frame([standing_person(200, 40, 30)], 400, 400)
    crop_data = group.find_regions([frame], (400, 400))
    mask = mask_support(crop_data)
    person = crop_data.regions[0].person
    xy, found = kp.part_arrays(person, "body")
    assert all(mask[int(y), int(x)] == 1.0 for x, y in xy[found])
    top, left, h, w = crop_data.regions[0].box
    box_mask = mask[top:top + h, left:left + w]
    assert box_mask[0, 0] == 0 and box_mask[-1, -1] == 0  # corners of the box are not the person
    assert (box_mask > 0).mean() < 0.6
    (crop_mask,) = group.crop_masks(crop_data)  # the same mask in the crop's pixels
    assert tuple(crop_mask.shape) == crop_data.regions[0].bucket
    back = resize(crop_mask[None, None], (h, w))[0, 0].numpy()
    assert np.abs(back - box_mask).mean() < 0.01


def test_a_wider_feather_softens_the_mask_edge():
    frame = kp.make_frame([standing_person(200, 40, 30)], 400, 400)
    soft = mask_support(group.find_regions([frame], (400, 400), mask=group.MaskSettings(feather=0.5)))
    hard = mask_support(group.find_regions([frame], (400, 400), mask=group.MaskSettings(feather=0.0)))
    assert set(np.unique(hard)) <= {0.0, 1.0}
    assert ((soft > 0) & (soft < 1)).sum() > 1000


def test_overlapping_people_the_lower_one_is_pasted_on_top():
    upper, lower = standing_person(150, 20, 20), standing_person(190, 60, 20)  # overlapping, lower feet
    frame = kp.make_frame([lower, upper], 300, 400)
    crop_data = group.find_regions([frame], (300, 400))
    assert [r.index for r in crop_data.regions] == [1, 0]  # paste order: the upper first
    flat = torch.full((1, 3, 300, 400), 0.5)  # no detail for the paste to keep
    colours = {0: (0.0, 0.0, 1.0), 1: (1.0, 0.0, 0.0)}  # lower blue, upper red
    restored = [torch.tensor(colours[crop_data.regions[i].index])[:, None, None].expand(3, *crop_data.regions[i].bucket)
                for i in crop_data.crop_order()]
    pasted = group.paste_regions(flat, restored, crop_data)
    masks = [group.region_mask(r, crop_data.mask) for r in crop_data.regions]
    both = np.ones((300, 400), bool)
    for region, mask in zip(crop_data.regions, masks):
        full = np.zeros((300, 400), np.float32)
        (y0, y1, x0, x1), (sy, sx) = group._inside(region.box, (300, 400))
        full[y0:y1, x0:x1] = mask[sy:sy + y1 - y0, sx:sx + x1 - x0]
        both &= full > 0.999
    assert both.sum() > 100
    on_top = pasted[0, :, torch.from_numpy(both)]
    assert torch.allclose(on_top, torch.tensor([0.0, 0.0, 1.0])[:, None], atol=2e-3)


def test_people_outside_the_picture_or_without_keypoints_are_skipped():
    nobody = kp.make_person([0.0] * 54)
    outside = standing_person(-500, 20, 10)
    frame = kp.make_frame([nobody, outside, standing_person(200, 20, 20)], 300, 400)
    assert [r.index for r in group.find_regions([frame], (300, 400)).regions] == [2]


def test_max_people_keeps_the_largest():
    frame = kp.make_frame([standing_person(60, 20, 10), standing_person(250, 20, 30)], 300, 400)
    (region,) = group.find_regions([frame], (300, 400), max_people=1).regions
    assert region.index == 1


def test_faces_are_square_crops_around_the_head():
    crop_data = group.find_regions([two_people_frame()], (300, 400), "face")
    assert len(crop_data.regions) == 2
    for region in crop_data.regions:
        cx, cy, r = group.head_circle(region.person)
        top, left, h, w = region.box
        assert region.bucket == (512, 512) and h == w
        assert left < cx - r and cx + r < left + w and top < cy - r and cy + r < top + h


def test_crops_are_batched_by_bucket():
    frame = kp.make_frame([standing_person(60, 10, 20), standing_person(200, 10, 20), standing_person(330, 10, 20)],
                          300, 400)
    crop_data = group.find_regions([frame], (300, 400))
    lying = group.CropRegion("person", 0, 9, (0, 0, 100, 200), (512, 1024), crop_data.regions[0].person)
    mixed = group.GroupCrops(crop_data.image_size, crop_data.regions + (lying,))
    batched = group.bucket_batches(mixed, max_batch=2)
    assert batched.batches == ((0, 1), (2,), (3,))
    assert sorted(batched.crop_order()) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        group.bucket_batches(mixed, max_batch=0)


def test_crop_data_round_trips_through_json():
    crop_data = group.bucket_batches(group.find_regions([two_people_frame()], (300, 400), context=0.2), 2)
    again = group.GroupCrops.from_dict(json.loads(json.dumps(crop_data.to_dict())))
    assert again == crop_data
    with pytest.raises(group.GroupCropError, match="crop data"):
        group.GroupCrops.from_dict({"version": 1, "regions": [{}]})


def test_crop_frames_hold_each_person_alone_in_crop_pixels():
    crop_data = group.find_regions([two_people_frame()], (300, 400))
    frames = group.crop_frames(crop_data)
    for frame, i in zip(frames, crop_data.crop_order()):
        region = crop_data.regions[i]
        assert len(frame["people"]) == 1 and (frame["canvas_height"], frame["canvas_width"]) == region.bucket
        top, left, h, w = region.box
        nose = np.asarray(region.person["pose_keypoints_2d"][:2])
        mapped = np.asarray(frame["people"][0]["pose_keypoints_2d"][:2])
        np.testing.assert_allclose(mapped, (nose - (left, top)) * (region.bucket[1] / w, region.bucket[0] / h),
                                   rtol=1e-5)


# ---------------------------------------------------------------- nodes: odd inputs

def test_no_people_gives_one_picture_crop_and_an_unchanged_paste(caplog):
    image = torch.rand(1, 48, 64, 3)
    crops, crop_data, masks, frames = crop_node(image, [kp.make_frame([], 48, 64)])
    assert len(crops) == 1 and tuple(crops[0].shape[1:3]) in BUCKETS
    assert float(masks[0].max()) == 0.0 and frames == [[kp.make_frame([], *crops[0].shape[1:3])]]
    assert "no people" in caplog.text
    assert torch.equal(paste_node(image, [1.0 - crops[0]], crop_data), image)


def test_one_frame_for_a_batch_finds_the_people_in_every_image():
    """One POSE_KEYPOINT frame with a batch (as Draw Pose reads it): the same people in each image, each
    pasted back onto its own image; a frame count that is neither 1 nor the batch's is refused."""
    images = torch.rand(2, 300, 400, 3)
    crops, crop_data, _, _ = crop_node(images, two_people_frame())
    assert sorted({region.image for region in crop_data.regions}) == [0, 1]
    assert len(crop_data.regions) == 4
    pasted = paste_node(images, [1.0 - batch for batch in crops], crop_data)
    assert all(changed(pasted[i:i + 1], images[i:i + 1]).any() for i in range(2))
    with pytest.raises(group.GroupCropError, match="3 keypoint frames for 2 images"):
        crop_node(images, [two_people_frame()] * 3)


@pytest.mark.parametrize("channels", [1, 4], ids=["grey", "rgba"])
def test_grey_and_rgba_pictures(channels):
    image = torch.rand(1, 300, 400, channels)
    crops, crop_data, _, _ = crop_node(image, [two_people_frame()])
    assert all(batch.shape[-1] == 3 for batch in crops)
    pasted = paste_node(image, crops, crop_data)
    rgb = image[..., :1].expand(1, 300, 400, 3) if channels == 1 else image[..., :3]
    assert pasted.shape == (1, 300, 400, 3) and (pasted - rgb).abs().max() <= 1e-5


def test_a_one_pixel_picture():
    image = torch.full((1, 1, 1, 3), 0.25)
    frame = kp.make_frame([kp.make_person([0.5, 0.5, 1.0] + [0.0] * 51)], 1, 1)
    crops, crop_data, _, _ = crop_node(image, [frame])
    assert tuple(crops[0].shape[1:3]) in BUCKETS
    assert paste_node(image, crops, crop_data).shape == (1, 1, 1, 3)


def test_keypoints_estimated_on_a_smaller_copy_are_scaled_to_the_picture():
    small = two_people_frame(150, 200)
    for person in small["people"]:
        xy, found = kp.part_arrays(person, "body")
        person["pose_keypoints_2d"] = kp.flatten_part(xy / 2, found.astype(np.float32), threshold=0.5)
    big = group.find_regions([small], (300, 400))
    assert [r.box for r in big.regions] == [r.box for r in group.find_regions([two_people_frame()], (300, 400)).regions]


def test_an_upscaled_global_image_is_pasted_at_its_own_size():
    image = torch.rand(1, 300, 400, 3)
    crops, crop_data, _, _ = crop_node(image, [two_people_frame()])
    upscaled = torch.rand(1, 600, 800, 3)
    pasted = paste_node(upscaled, [1.0 - batch for batch in crops], crop_data)
    assert pasted.shape == upscaled.shape
    masks = mask_support(crop_data.resized_to(600, 800))
    moved = changed(pasted, upscaled)
    assert moved.any() and not (moved & (masks == 0)).any()


def test_paste_refuses_crops_that_do_not_match_the_crop_data():
    image = torch.rand(1, 300, 400, 3)
    crops, crop_data, _, _ = crop_node(image, [two_people_frame()])
    with pytest.raises(group.GroupCropError, match="2 region"):
        paste_node(image, crops[:1], crop_data)
    with pytest.raises(group.GroupCropError, match="2 region"):
        paste_node(image, [crops[0], torch.cat([crops[1]] * 2)], crop_data)  # two images for one crop only


def test_k_images_per_crop_give_k_results():
    image = torch.rand(1, 300, 400, 3)
    crops, crop_data, _, _ = crop_node(image, [two_people_frame()])
    # as a stage 2 with a latent batch of 3 makes them: the crop itself, then two changed versions
    pasted = paste_node(image, [torch.cat([batch, 1 - batch, batch * 0.5]) for batch in crops], crop_data)
    assert pasted.shape == (3, 300, 400, 3)
    assert (pasted[0] - image[0]).abs().max() <= 1e-5
    assert changed(pasted[1:2], image).any() and changed(pasted[2:3], image).any()
    assert not torch.equal(pasted[1], pasted[2])


def test_crops_batched_another_way_are_still_pasted():
    image = torch.rand(1, 300, 400, 3)
    crops, crop_data, _, _ = crop_node(image, [two_people_frame()], batch_size=1)
    assert len(crops) == 2
    pasted = paste_node(image, [torch.cat(crops)], crop_data)  # one batch of both (same bucket)
    assert (pasted - image).abs().max() <= 1e-5


# ---------------------------------------------------------------- through a real ComfyUI server

def test_crop_restore_paste_runs_through_the_server_once_per_crop(comfy_server):
    """Crop People's lists through ComfyUI: a core node between the two runs once per crop batch (list mapping),
    Paste People gathers them (INPUT_IS_LIST). The tiny DWPose's keypoints are random: whether it finds people
    or none (the placeholder crop), the graph must give the picture back at its size."""
    from PIL import Image

    from comfy_harness import execution_error

    prompt = {
        "load": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
        "pose": {"class_type": "DiffBodyPoseEstimator",
                 "inputs": {"image": ["load", 0], "backend": "dwpose", "draw_hands": False, "draw_face": False,
                            "dwpose_detector": "yolox_l.onnx", "dwpose_estimator": "dw-ll_ucoco_384.onnx",
                            "openpose_model": "body_pose_model.pth", "auto_download": False}},
        "crop": {"class_type": "DiffBodyCropPeople",
                 "inputs": {"image": ["load", 0], "keypoints": ["pose", 1], "regions": "person", "context": 0.1,
                            "max_people": 0, "batch_size": 1, "dilation": 0.75, "feather": 0.25}},
        "restore": {"class_type": "ImageInvert", "inputs": {"image": ["crop", 0]}},
        "paste": {"class_type": "DiffBodyPastePeople",
                  "inputs": {"image": ["load", 0], "crops": ["restore", 0], "crop_data": ["crop", 1]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["paste", 0], "filename_prefix": "group"}},
        "save_masks": {"class_type": "SaveImage", "inputs": {"images": ["mask_image", 0], "filename_prefix": "masks"}},
        "mask_image": {"class_type": "MaskToImage", "inputs": {"mask": ["crop", 2]}},
    }
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    files = comfy_server.output_files(entry)
    [pasted] = [f for f in files if f.name.startswith("group")]
    masks = [f for f in files if f.name.startswith("masks")]
    assert Image.open(pasted).size == (256, 256)
    assert masks and all(Image.open(f).size[::-1] in BUCKETS for f in masks)
