"""Public-weights stage 2 on the diffusers path: ControlNet-Union SDXL (models/union_controlnet.py) as
UnionPriorControl in Stage2Pipeline, on the tiny union in xinsir's file layout; and, across hosts, its
residuals against ComfyUI's own union ControlNet chained by the pack's node logic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comfyui_diffbody.models.errors import MissingModelFile, WrongModelFile
from comfyui_diffbody.models.multiprior_controlnet import PRIORS
from comfyui_diffbody.models.union_controlnet import UNION_TYPES, load_union_controlnet
from comfyui_diffbody.pipelines.stage2 import Stage2Pipeline, Stage2Settings
from comfyui_diffbody.pipelines.stage2_errors import Stage2Error
from comfyui_diffbody.pipelines.union_control import UnionPriorControl
from comfyui_diffbody.testing.tiny.stage2 import CONTEXT_DIM, POOLED_DIM, build_tiny_stage2_components
from comfyui_diffbody.testing.tiny.union import tiny_union_config, write_tiny_union_controlnet

SIZE = 64


@pytest.fixture(scope="module")
def union_file(tmp_path_factory) -> Path:
    return Path(write_tiny_union_controlnet(str(tmp_path_factory.mktemp("union") / "union.safetensors"), seed=0))


@pytest.fixture(scope="module")
def union(union_file) -> UnionPriorControl:
    return UnionPriorControl(load_union_controlnet(str(union_file), config=tiny_union_config()))


def prior_images(batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(batch, 3, SIZE, SIZE, generator=g) for name in PRIORS}


def unet_inputs(batch: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return dict(sample=torch.randn(batch, 4, SIZE // 8, SIZE // 8, generator=g), timestep=torch.tensor(600),
                context=torch.randn(batch, 77, CONTEXT_DIM, generator=g),
                pooled=torch.randn(batch, POOLED_DIM, generator=g),
                time_ids=torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * batch, dtype=torch.float32))


def residuals(union, priors, strengths, scale=1.0, batch=1, seed=1):
    inputs = unet_inputs(batch, seed)
    images = union.prepare_priors(priors, strengths)
    return union(inputs["sample"], inputs["timestep"], inputs["context"], inputs["pooled"], inputs["time_ids"],
                 images, strengths, scale)


def test_control_types_are_xinsirs():
    assert UNION_TYPES == {"image": 6, "pose": 0, "depth": 1, "normal": 4}  # tile, openpose, depth, normal


def test_loader_refuses_wrong_and_missing_files(tmp_path, union_file):
    from comfyui_diffbody.models.stage2_weights import save_multiprior
    from comfyui_diffbody.testing.tiny.stage2 import build_tiny_multiprior

    with pytest.raises(WrongModelFile, match="another size"):  # the tiny file against SDXL's config
        load_union_controlnet(str(union_file))
    ours = save_multiprior(build_tiny_multiprior(seed=0), str(tmp_path / "multiprior.safetensors"))
    with pytest.raises(WrongModelFile, match="Multi-Prior ControlNet Loader"):
        load_union_controlnet(ours, config=tiny_union_config())
    with pytest.raises(MissingModelFile):
        load_union_controlnet(str(tmp_path / "absent.safetensors"))


def test_six_type_file_refuses_tile_but_takes_the_other_priors(tmp_path):
    path = write_tiny_union_controlnet(str(tmp_path / "six.safetensors"), num_control_type=6)
    six = UnionPriorControl(load_union_controlnet(path, config=tiny_union_config()))
    assert six.num_control_type == 6
    with pytest.raises(WrongModelFile, match="ProMax"):
        six.prepare_priors(prior_images(), {"image": 1.0})
    assert set(six.prepare_priors(prior_images(), {"pose": 1.0, "depth": 0.5, "normal": 1.0})) == {
        "pose", "depth", "normal"}


def test_priors_with_strength_zero_are_not_prepared_and_bad_input_is_refused(union):
    assert set(union.prepare_priors(prior_images(), {"image": 1.0, "pose": 0.0, "depth": 0.3})) == {"image", "depth"}
    with pytest.raises(Stage2Error, match="unknown"):
        union.prepare_priors(prior_images(), {"segmentation": 1.0})
    with pytest.raises(Stage2Error, match="not given"):
        union.prepare_priors({"image": prior_images()["image"]}, {"image": 1.0, "pose": 1.0})


def test_residuals_add_up_over_priors_and_scale_with_strength(union):
    priors = prior_images()
    both = residuals(union, priors, {"pose": 0.5, "depth": 2.0}, scale=0.8)
    pose = residuals(union, priors, {"pose": 0.4})  # 0.5 * 0.8
    depth = residuals(union, priors, {"depth": 1.6})
    for got, a, b in zip(both[0] + [both[1]], pose[0] + [pose[1]], depth[0] + [depth[1]]):
        torch.testing.assert_close(got, a + b, rtol=1e-5, atol=1e-5)
    assert float(pose[1].abs().mean()) > 1e-3  # the tiny union's zero layers are randomised: it acts


def test_diffusers_union_transformer_mixes_a_batch(union):
    """Why UnionPriorControl goes image by image: the condition transformer (a sequence-first
    nn.MultiheadAttention fed (batch, tokens, width)) attends across the batch. If diffusers changes
    this, the image-by-image loop can go."""
    layer = union.model.transformer_layes[0]
    tokens = torch.randn(4, 2, union.model.config.num_trans_channel, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = layer(tokens)
        one_by_one = torch.cat([layer(tokens[i:i + 1]) for i in range(4)])
    assert (batched - one_by_one).abs().max() > 1e-2


def test_an_image_does_not_depend_on_the_rest_of_its_batch(union):
    """diffusers' union transformer mixes a batched call's items; UnionPriorControl runs image by image."""
    strengths = {"image": 1.0, "normal": 0.5}
    pair, inputs = prior_images(batch=2), unet_inputs(batch=2)
    together = union(*inputs.values(), union.prepare_priors(pair, strengths), strengths)
    first = {k: v[:1] if v.ndim else v for k, v in inputs.items()}
    alone = union(*first.values(), union.prepare_priors({k: v[:1] for k, v in pair.items()}, strengths), strengths)
    for got, expected in zip(together[0] + [together[1]], alone[0] + [alone[1]]):
        assert torch.equal(got[:1], expected)


@pytest.fixture(scope="module")
def pipeline_parts(union):
    parts = build_tiny_stage2_components(seed=0)
    del parts["controlnet"]
    return parts


def sample(parts, controlnet, **settings):
    g = torch.Generator().manual_seed(5)
    restored = torch.rand(1, 3, SIZE, SIZE, generator=g)
    pipe = Stage2Pipeline(**parts, controlnet=controlnet)
    base = dict(prompt="a person", negative_prompt="blurry", scheduler="ddim", steps=2, cfg=4.0, seed=3)
    return pipe.sample_latents(prior_images(), restored, Stage2Settings(**{**base, **settings}))


def test_pipeline_zero_strengths_give_exactly_plain_sdxl_and_each_prior_acts(pipeline_parts, union):
    plain = sample(pipeline_parts, None, strengths={}, adapter_weight=0.7)
    zero = sample(pipeline_parts, union, strengths={p: 0.0 for p in PRIORS}, adapter_weight=0.7)
    assert torch.equal(plain, zero)
    for name in PRIORS:
        controlled = sample(pipeline_parts, union, strengths={name: 1.0}, adapter_weight=0.7)
        assert (controlled - plain).abs().max() > 1e-3, name
    outside = sample(pipeline_parts, union, strengths={"image": 1.0}, adapter_weight=0.7, control_end=0.1)  # DDIM's 501, 1
    assert torch.equal(plain, outside)


CROSS_HOST = r'''
import json, sys
comfy_dir, tests_dir, work = sys.argv[1:4]
sys.path.insert(0, comfy_dir)
sys.path.insert(0, tests_dir)
import torch
torch.set_num_threads(1)
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.model_detection, comfy.supported_models, comfy.utils
from comfy_test_nodes.union_stand_in import tiny_union_control
from comfyui_diffbody.models.multiprior_controlnet import MultiPriorControlNet
from comfyui_diffbody.models.union_controlnet import load_union_controlnet
from comfyui_diffbody.nodes.stage2 import union_priors_control
from comfyui_diffbody.pipelines.union_control import UnionPriorControl
from comfyui_diffbody.testing.tiny import stage2 as tiny
from comfyui_diffbody.testing.tiny.union import tiny_union_config, write_tiny_union_controlnet

union_file = write_tiny_union_controlnet(work + "/union.safetensors", seed=0)
unet_file = tiny.write_tiny_sdxl(None, work + "/unet.safetensors", seed=0)["single_file"]
prefix = "model.diffusion_model."
sd = comfy.utils.load_torch_file(unet_file)
model = comfy.supported_models.SDXL(comfy.model_detection.detect_unet_config(sd, prefix)).get_model(sd, prefix)
sampling = model.model_sampling

STRENGTHS = {"image": 1.0, "pose": 0.5, "depth": 0.75, "normal": 0.0}
SCALE = 0.8
g = torch.Generator().manual_seed(3)
# IMAGE at latent * 8: two images, a dark and a bright one
priors = {name: torch.cat([0.2 * torch.rand(1, 64, 64, 3, generator=g), 1 - 0.2 * torch.rand(1, 64, 64, 3, generator=g)])
          for name in STRENGTHS}
x = torch.randn(4, 4, 8, 8, generator=g)  # two images, both CFG halves, as ComfyUI batches them
sigma = sampling.sigma(torch.tensor([700.0] * 4))
context = torch.randn(4, 77, tiny.CONTEXT_DIM, generator=g)
pooled = torch.randn(4, tiny.POOLED_DIM, generator=g)
time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 4)
y = MultiPriorControlNet.sdxl_added_vector(pooled, time_ids)  # = ComfyUI's SDXL encode_adm (tested elsewhere)

with torch.no_grad():
    chain = union_priors_control(tiny_union_control(union_file), priors, STRENGTHS, SCALE, (0.0, 1.0))
    chain.pre_run(model, sampling.percent_to_sigma)
    native = chain.get_control(x, sigma, {"c_crossattn": context, "y": y}, 2, {})
    ours = UnionPriorControl(load_union_controlnet(union_file, config=tiny_union_config()))
    images = ours.prepare_priors({name: p.movedim(-1, 1) for name, p in priors.items()}, STRENGTHS, repeats=2)
    down, mid = ours(sampling.calculate_input(sigma, x), sampling.timestep(sigma)[0], context, pooled, time_ids,
                     images, STRENGTHS, SCALE)
from comfy.cldm.control_types import UNION_CONTROLNET_TYPES
from comfyui_diffbody.models.union_controlnet import UNION_TYPES
type_names = {number: name for name, number in UNION_CONTROLNET_TYPES.items()}
out = {"types": {prior: type_names[number] for prior, number in UNION_TYPES.items()},
       "counts": [len(native["output"]), len(down), len(native["middle"])],
       "down": max(float((a - b).abs().max()) for a, b in zip(native["output"], down)),
       "mid": float((native["middle"][0] - mid).abs().max()), "effect": float(mid.abs().mean())}
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def cross_host(tmp_path_factory):
    from comfy_harness import run_comfy_script

    work = tmp_path_factory.mktemp("union_cross_host")
    return run_comfy_script(CROSS_HOST, work, Path(__file__).resolve().parent, work)


def test_priors_map_to_comfyuis_union_type_names(cross_host):
    assert cross_host["types"] == {"image": "tile", "pose": "openpose", "depth": "depth", "normal": "normal"}


def test_residuals_equal_comfyuis_union_chained_by_the_node(cross_host):
    """Same file, same priors and strengths: the node's chain on ComfyUI's union ControlNet and the
    diffusers path give the same residuals (control types, key layout, per-image semantics)."""
    assert cross_host["counts"] == [9, 9, 1]
    assert cross_host["down"] < 1e-4 and cross_host["mid"] < 1e-4
    assert cross_host["effect"] > 1e-3
