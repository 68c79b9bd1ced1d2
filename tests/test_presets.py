"""One source of defaults per mode (pipelines/presets.py): the command line and every bundled workflow run
with exactly those values unless the user picks others."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from comfyui_diffbody.cli import build_parser, restore_options
from comfyui_diffbody.pipelines.presets import (KSAMPLER_NAMES, MODE_DEFAULTS, MODES, PUBLIC_DEPTH_MODEL,
                                                PUBLIC_NORMAL_SOURCE)
from workflow_tools import API_DIR

WORKFLOW_MODES = {"diffbody_full": "diffbody", "diffbody_priors": "diffbody", "diffbody_public": "public"}
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


def test_command_line_choices_override_the_mode():
    options = cli_options("--mode", "public", "--strengths", "0.1", "0.2", "0.3", "0.4", "--adapter-weight", "0",
                          "--upscale", "2", "--cfg", "3", "--seed", "7", "--stage2-scheduler", "ddim")
    assert options.strengths == (0.1, 0.2, 0.3, 0.4) and options.adapter_weight == 0
    assert options.stage0.upscale == 2 and options.cfg == 3 and options.seed == options.stage0.seed == 7
    # Another scheduler keeps its own usual step count rather than the preset's DDPM 200.
    assert options.stage2_scheduler == "ddim" and options.stage2_steps is None


def test_the_two_modes_differ_where_the_presets_say():
    """The pin below compares against the presets; this keeps it from passing on a mode mix-up."""
    assert MODE_DEFAULTS["diffbody"].strengths != MODE_DEFAULTS["public"].strengths
    assert MODE_DEFAULTS["diffbody"].adapter_weight != MODE_DEFAULTS["public"].adapter_weight


def workflow_settings(graph: dict) -> dict:
    """The mode-defaulted widget values of an API-format workflow, by what they mean."""
    found = {}
    for node in graph.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "DiffBodySwinIRCleanup":
            found["upscale"] = inputs["upscale"]
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
    return found


def expected_settings(name: str) -> dict:
    preset = MODE_DEFAULTS[WORKFLOW_MODES[name]]
    expected = {"upscale": preset.upscale}
    if name != "diffbody_public":
        expected["stage1"] = (preset.stage1_scheduler, preset.stage1_steps, preset.stage1_cfg, preset.seed)
    if name != "diffbody_priors":
        expected["strengths"] = preset.strengths
        expected["adapter_weight"] = preset.adapter_weight
        expected["stage2"] = (*KSAMPLER_NAMES[preset.stage2_scheduler], preset.stage2_steps, preset.stage2_cfg,
                              preset.seed)
    if name == "diffbody_public":
        expected["estimators"] = (PUBLIC_DEPTH_MODEL, PUBLIC_NORMAL_SOURCE)
    return expected


@pytest.mark.parametrize("name", sorted(WORKFLOW_MODES))
def test_bundled_workflows_carry_their_modes_defaults(name):
    graph = json.loads((API_DIR / f"{name}_api.json").read_text())
    assert workflow_settings(graph) == expected_settings(name)


def test_a_changed_workflow_value_is_caught():
    graph = json.loads((API_DIR / "diffbody_public_api.json").read_text())
    crossed = copy.deepcopy(graph)
    for node in crossed.values():
        if node["class_type"] == "DiffBodyApplyMultiPriorControlNet":
            node["inputs"]["pose_strength"] = MODE_DEFAULTS["diffbody"].strengths[1]  # the other mode's value
    assert workflow_settings(graph) == expected_settings("diffbody_public")
    assert workflow_settings(crossed) != expected_settings("diffbody_public")
