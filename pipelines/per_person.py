"""Per-person restoration of group photos (`restore --per-person`), paper section 5's "multi-human images".

The paper samples one person per bucket-sized crop; a group picture put through one bucket leaves each
person a few hundred pixels. Here, for each picture:

1. Stage 0 on the whole picture: I_ir and every person's keypoints (SwinIR and the pose model, once).
2. One crop per person (pipelines/group.py: the keypoints' extent with context, cut to the nearest bucket's
   aspect, resized to the bucket), with that person's own skeleton drawn on it and its own caption (LLaVA on
   the crop); stages 1-2 restore each crop as a picture of its own.
3. The global pass restores the rest: the whole pipeline on the picture (`global_pass="full"`), or I_ir alone
   (`"swinir"`).
4. Each restored person is pasted over the global pass with a feathered mask that follows the person (group.py:
   people lower in the picture, nearer the camera, are pasted last and end on top).
5. Optionally, the face pass: each face region (a square around the head, 512x512, so a face of a few dozen
   pixels is sampled large) runs stage 2 again from the pasted picture's face with `face_denoise` (low: the
   face is kept, the priors refine it), guided by the face in I_ir and its skeleton (strengths a1, a2; no
   depth or normal prior), the colour adapter on the face as restored (diffbody mode, where the adapter reads
   I_res; the public mode's adapter reads I_ir's face, as it always does), and pasted back with an elliptical
   feathered mask. The face jobs start from given captions, so they load no LLaVA.

Networks: steps 2-3 run in one restore_jobs call (each network loaded once, LLaVA for every caption); stage 0
before them loads only SwinIR and the pose model; the face pass, which needs the pasted picture, loads SDXL a
second time (keeping it through the pasting would hold it beside everything else).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .group import GroupCrops, MaskSettings, crop_frames, crop_regions, find_regions, paste_regions
from .presets import FACE_DENOISE, GLOBAL_PASSES, PERSON_CONTEXT
from .restore import (FROM_PRIORS, FROM_STAGE0, ModelPaths, NetworkConfigs, Progress, RestoreJob, RestoreOptions,
                      RestoreResult, restore_jobs, tqdm_progress)


@dataclass(frozen=True)
class PerPersonOptions:
    context: float = PERSON_CONTEXT  # context around each person, a fraction of the person's longer side
    global_pass: str = "full"  # one of GLOBAL_PASSES
    face_pass: bool = False
    face_denoise: float = FACE_DENOISE
    mask: MaskSettings = field(default_factory=MaskSettings)

    def __post_init__(self):
        if self.global_pass not in GLOBAL_PASSES:
            raise ValueError(f"unknown global pass {self.global_pass!r}; choose one of {', '.join(GLOBAL_PASSES)}")
        if not 0 < self.face_denoise <= 1:
            raise ValueError(f"face denoise must be in (0, 1], got {self.face_denoise}")


@dataclass
class PerPersonResult:
    """One picture's results, (3, H, W) float in 0..1 on the CPU at I_ir's size."""

    restored: torch.Tensor  # the people pasted over the global pass (and the faces over them)
    global_result: RestoreResult  # the whole picture: I_ir, keypoints; restored = the global pass
    people: GroupCrops  # the person regions (crop order = their order in `person_results`)
    person_results: list[RestoreResult]  # per crop: I_ir crop, its skeleton, caption, priors, restored crop
    faces: GroupCrops | None = None
    face_results: list[RestoreResult] = field(default_factory=list)


def restore_per_person(images: list[torch.Tensor], models: ModelPaths, options: RestoreOptions,
                       per_person: PerPersonOptions = PerPersonOptions(), progress: Progress = tqdm_progress, *,
                       network_configs: NetworkConfigs | None = None) -> list[PerPersonResult]:
    """Degraded pictures, each (1, 3, H, W) float in 0..1 -> one PerPersonResult each (see the module doc)."""
    if options.stage0_only:
        raise ValueError("per-person restoration runs stages 1-2 on each person: it cannot stop after stage 0")
    configs = dict(network_configs or {})
    # 1. stage 0 of the whole pictures, without captions (LLaVA loads once, with the crops')
    whole = RestoreJob(images, dataclasses.replace(models, llava=None), dataclasses.replace(options, stage0_only=True),
                       configs)
    restore_jobs([whole], progress)
    if models.llava is None:
        pictures = whole.results
    else:
        pictures = [dataclasses.replace(result, caption="") for result in whole.results]
    # 2. every person's crop
    people = [_people(result, per_person, options) for result in pictures]
    crop_jobs = [RestoreJob([], models, options, configs, given=given, start_at=FROM_STAGE0)
                 for _, given in people if given]
    # 3. the global pass, in the same call
    global_job = None
    if per_person.global_pass == "full":
        global_job = RestoreJob([], models, options, configs, given=pictures, start_at=FROM_STAGE0)
    restore_jobs([job for job in (global_job, *crop_jobs) if job is not None], progress)
    globals_ = global_job.results if global_job else [dataclasses.replace(p, restored=p.cleaned) for p in pictures]
    crop_results = iter(crop_jobs)
    results = []
    for picture, (crops, given) in zip(globals_, people):
        person_results = next(crop_results).results if given else []
        pasted = paste_regions(picture.restored[None], [r.restored for r in person_results], crops)[0]
        results.append(PerPersonResult(pasted, picture, crops, person_results))
    # 5. the face pass
    if per_person.face_pass:
        _face_pass(results, models, options, per_person, progress, configs)
    return results


def _people(picture: RestoreResult, per_person: PerPersonOptions,
            options: RestoreOptions) -> tuple[GroupCrops, list[RestoreResult]]:
    """The picture's person regions and, per crop, stage 0's results for it: the I_ir crop, that person's
    skeleton alone drawn on it, its keypoints; the caption left empty for LLaVA."""
    crops = find_regions([picture.keypoints], tuple(picture.cleaned.shape[-2:]), "person",
                         context=per_person.context, mask=per_person.mask)
    return crops, _crop_results(picture.cleaned, crops, options)


def _crop_results(cleaned: torch.Tensor, crops: GroupCrops, options: RestoreOptions, **fields) -> list[RestoreResult]:
    from .pose.draw import draw_pose
    from .image import uint8_to_chw

    s0 = options.stage0
    results = []
    for crop, frame in zip(crop_regions(cleaned[None], crops), crop_frames(crops)):
        height, width = crop.shape[-2:]
        pose = uint8_to_chw(draw_pose(frame, height, width, hands=s0.draw_hands, face=s0.draw_face,
                                      xinsir_sticks=s0.xinsir_sticks))
        results.append(RestoreResult(crop, pose, frame, **fields))
    return results


def _face_pass(results: list[PerPersonResult], models: ModelPaths, options: RestoreOptions,
               per_person: PerPersonOptions, progress: Progress, configs: NetworkConfigs) -> None:
    """Stage 2 again on every face, from the pasted picture, and the faces pasted back (module doc, step 5)."""
    a1, a2, _, _ = options.strengths
    face_options = dataclasses.replace(options, denoise=per_person.face_denoise, strengths=(a1, a2, 0.0, 0.0))
    # no LLaVA: the faces take their person's caption (restore_jobs would load it before seeing `given`)
    face_models = dataclasses.replace(models, llava=None)
    jobs = []
    for result in results:
        picture = result.global_result
        faces = find_regions([picture.keypoints], tuple(picture.cleaned.shape[-2:]), "face",
                             context=per_person.context, mask=per_person.mask)
        captions = _person_captions(result)
        starts = crop_regions(result.restored[None], faces)
        given = []
        for region, crop, start in zip([faces.regions[i] for i in faces.crop_order()],
                                       _crop_results(picture.cleaned, faces, options), starts):
            caption = captions.get(region.index, picture.recaption or picture.caption)
            given.append(dataclasses.replace(crop, caption=caption, stage1=start, start=start))
        result.faces = faces
        jobs.append(RestoreJob([], face_models, face_options, configs, given=given, start_at=FROM_PRIORS)
                    if given else None)
    restore_jobs([job for job in jobs if job is not None], progress)
    for result, job in zip(results, jobs):
        if job is not None:
            result.face_results = job.results
            result.restored = paste_regions(result.restored[None], [r.restored for r in job.results],
                                            result.faces)[0]


def _person_captions(result: PerPersonResult) -> dict[int, str]:
    """Each person's prompt (p', else p) by their index in the picture's frame."""
    order = [result.people.regions[i] for i in result.people.crop_order()]
    return {region.index: crop.recaption or crop.caption for region, crop in zip(order, result.person_results)}
