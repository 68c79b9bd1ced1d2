"""One source of defaults per mode (pipelines/presets.py): the command line and every bundled workflow run
with exactly those values unless the user picks others."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from comfyui_diffbody.cli import build_parser, restore_options
from comfyui_diffbody.pipelines.presets import (FAST, KSAMPLER_NAMES, MODE_DEFAULTS, MODES, PUBLIC_DEPTH_MODEL,
                                                PUBLIC_NORMAL_SOURCE, with_speed)
from workflow_tools import API_DIR

WORKFLOW_MODES = {"diffbody_full": "diffbody", "diffbody_priors": "diffbody", "diffbody_public": "public",
                  "diffbody_full_fast": "diffbody", "diffbody_public_fast": "public", "diffbody_group": "public"}
FAST_SUFFIX = "_fast"  # a workflow with presets.FAST over its mode's defaults
STRENGTH_INPUTS = ("image_strength", "pose_strength", "depth_strength", "normal_strength")


def cli_options(*argv: str):
    return restore_options(build_parser().parse_args(["restore", "photo.png", *argv]), torch.device("cpu"))


@pytest.mark.parametrize("mode", MODES)
def test_command_line_defaults_are_the_modes(mode):
    preset = MODE_DEFAULTS[mode]
    options = cli_options("--mode", mode)
    assert options.stage0.upscale == preset.upscale
    assert options.strengths == preset.strengths
    assert options.adapter_weight == preset.adapter_weight
    assert (options.stage1_scheduler, options.stage1_steps, options.stage1_cfg) == \
        (preset.stage1_scheduler, preset.stage1_steps, preset.stage1_cfg)
    assert (options.stage2_scheduler, options.stage2_steps, options.cfg) == \
        (preset.stage2_scheduler, preset.stage2_steps, preset.stage2_cfg)
    assert options.seed == options.stage0.seed == preset.seed
    assert options.stage0.xinsir_sticks == preset.xinsir_sticks


def test_command_line_choices_override_the_mode():
    options = cli_options("--mode", "public", "--strengths", "0.1", "0.2", "0.3", "0.4", "--adapter-weight", "0",
                          "--upscale", "2", "--cfg", "3", "--seed", "7", "--stage2-scheduler", "ddim")
    assert options.strengths == (0.1, 0.2, 0.3, 0.4) and options.adapter_weight == 0
    assert options.stage0.upscale == 2 and options.cfg == 3 and options.seed == options.stage0.seed == 7
    # Another scheduler keeps its own usual step count rather than the preset's DDPM 200.
    assert options.stage2_scheduler == "ddim" and options.stage2_steps is None
    assert cli_options("--mode", "public", "--no-xinsir-sticks").stage0.xinsir_sticks is False
    assert cli_options("--mode", "diffbody", "--xinsir-sticks").stage0.xinsir_sticks is True


@pytest.mark.parametrize("mode", MODES)
def test_fast_takes_the_speed_profile_and_reuses_the_first_caption(mode):
    options = cli_options("--mode", mode, "--fast")
    assert (options.stage1_scheduler, options.stage1_steps) == (FAST.stage1_scheduler, FAST.stage1_steps)
    assert (options.stage2_scheduler, options.stage2_steps) == (FAST.stage2_scheduler, FAST.stage2_steps)
    assert options.recaption is FAST.recaption is False
    preset = MODE_DEFAULTS[mode]
    assert (options.strengths, options.adapter_weight, options.cfg) == \
        (preset.strengths, preset.adapter_weight, preset.stage2_cfg)
    assert cli_options("--mode", mode).recaption  # without --fast: the paper's re-caption
    chosen = cli_options("--mode", mode, "--fast", "--stage2-steps", "12", "--stage1-scheduler", "ddim")
    assert chosen.stage2_steps == 12 and chosen.stage1_scheduler == "ddim" and chosen.stage1_steps is None


def test_the_fast_schedulers_exist_in_both_stages_and_in_comfyui():
    from comfyui_diffbody.nodes.stage1 import Stage1Sampler
    from comfyui_diffbody.pipelines.stage1 import SCHEDULERS as STAGE1_SCHEDULERS
    from comfyui_diffbody.pipelines.stage2 import SCHEDULERS as STAGE2_SCHEDULERS

    assert FAST.stage1_scheduler in STAGE1_SCHEDULERS and FAST.stage2_scheduler in STAGE2_SCHEDULERS
    assert FAST.stage2_scheduler in KSAMPLER_NAMES
    assert Stage1Sampler.INPUT_TYPES()["required"]["scheduler"][0] == list(STAGE1_SCHEDULERS)


def test_the_two_modes_differ_where_the_presets_say():
    """The pin below compares against the presets; this keeps it from passing on a mode mix-up."""
    assert MODE_DEFAULTS["diffbody"].strengths != MODE_DEFAULTS["public"].strengths
    assert MODE_DEFAULTS["diffbody"].adapter_weight != MODE_DEFAULTS["public"].adapter_weight
    # our ControlNets learnt the pack's own skeleton; xinsir's union learnt scaled sticks
    assert MODE_DEFAULTS["diffbody"].xinsir_sticks is False and MODE_DEFAULTS["public"].xinsir_sticks is True


def workflow_settings(graph: dict) -> dict:
    """The mode-defaulted widget values of an API-format workflow, by what they mean."""
    found = {}
    for node in graph.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "DiffBodySwinIRCleanup":
            found["upscale"] = inputs["upscale"]
        elif kind in ("DiffBodyPoseEstimator", "DiffBodyDrawPose"):  # every skeleton drawn alike
            found.setdefault("xinsir_sticks", set()).add(inputs["xinsir_sticks"])
        elif kind == "DiffBodyStage1Sampler":
            found["stage1"] = (inputs["scheduler"], inputs["steps"], inputs["cfg"], inputs["seed"])
        elif kind == "DiffBodyApplyMultiPriorControlNet":
            found["strengths"] = tuple(inputs[name] for name in STRENGTH_INPUTS)
        elif kind == "DiffBodyApplyColourAdapter":
            found["adapter_weight"] = inputs["weight"]
        elif kind == "KSampler":
            found["stage2"] = (inputs["sampler_name"], inputs["scheduler"], inputs["steps"], inputs["cfg"],
                               inputs["seed"])
        elif kind == "DiffBodyDepthNormalEstimator":
            found["estimators"] = (inputs["depth_model"], inputs["normal_source"])
        elif kind == "DiffBodyLlavaCaption":
            found["captions"] = found.get("captions", 0) + 1
    return found


def expected_settings(name: str) -> dict:
    preset = MODE_DEFAULTS[WORKFLOW_MODES[name]]
    if name.endswith(FAST_SUFFIX):
        preset, name = with_speed(preset, FAST), name[:-len(FAST_SUFFIX)]
        recaption = FAST.recaption
    else:
        recaption = name == "diffbody_full"  # the paper's p' = LLaVA(I_res); there is no I_res in the others
    expected = {"upscale": preset.upscale, "captions": 2 if recaption else 1,
                "xinsir_sticks": {preset.xinsir_sticks}}
    public_estimators = name in ("diffbody_public", "diffbody_group")  # no stage 1: public depth and normal
    if not public_estimators:
        expected["stage1"] = (preset.stage1_scheduler, preset.stage1_steps, preset.stage1_cfg, preset.seed)
    if name != "diffbody_priors":
        expected["strengths"] = preset.strengths
        expected["adapter_weight"] = preset.adapter_weight
        expected["stage2"] = (*KSAMPLER_NAMES[preset.stage2_scheduler], preset.stage2_steps, preset.stage2_cfg,
                              preset.seed)
    if public_estimators:
        expected["estimators"] = (PUBLIC_DEPTH_MODEL, PUBLIC_NORMAL_SOURCE)
    return expected


@pytest.mark.parametrize("name", sorted(WORKFLOW_MODES))
def test_bundled_workflows_carry_their_modes_defaults(name):
    graph = json.loads((API_DIR / f"{name}_api.json").read_text())
    assert workflow_settings(graph) == expected_settings(name)


def test_every_bundled_workflow_has_its_mode():
    bundled = {path.name.removesuffix("_api.json") for path in API_DIR.glob("*_api.json")} - {"diffbody_stage0"}
    assert bundled == set(WORKFLOW_MODES)


def test_a_changed_workflow_value_is_caught():
    graph = json.loads((API_DIR / "diffbody_public_api.json").read_text())
    crossed = copy.deepcopy(graph)
    for node in crossed.values():
        if node["class_type"] == "DiffBodyApplyMultiPriorControlNet":
            node["inputs"]["pose_strength"] = MODE_DEFAULTS["diffbody"].strengths[1]  # the other mode's value
    assert workflow_settings(graph) == expected_settings("diffbody_public")
    assert workflow_settings(crossed) != expected_settings("diffbody_public")
