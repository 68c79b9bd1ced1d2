"""Stage-1 joint sampling (pipelines/stage1.py), its sizes (pipelines/buckets.py) and the SD 2.1 parts
(models/sd21_components.py), on the CPU with the tiny joint UNet, a tiny ControlNet and a tiny SD 2.1
folder (VAE + text encoder) written by testing/tiny/sd21_components.py.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from safetensors.torch import load_file

from comfyui_diffbody.models.errors import DiffBodyError, MissingModelFile
from comfyui_diffbody.models.joint_unet import BRANCHES, JointUNet, JointUNetConfig, Stage1ControlResiduals
from comfyui_diffbody.models.sd21_components import DiffusersVAE, load_sd21_components
from comfyui_diffbody.models.stage1_controlnet import Stage1ControlNet
from comfyui_diffbody.pipelines.buckets import BUCKETS, UnknownSizeMode, nearest_bucket, plan_resize
from comfyui_diffbody.pipelines.image import EmptyImage, WrongChannelCount
from comfyui_diffbody.pipelines.sampling import UnknownScheduler
from comfyui_diffbody.pipelines.stage1 import (
    SCHEDULERS,
    CaptionCountMismatch,
    ComponentMismatch,
    ImageSizeMismatch,
    Stage1Pipeline,
    make_scheduler,
    sample_joint,
)
from comfyui_diffbody.testing.tiny.sd21_components import write_tiny_sd21_components

CONTEXT_DIM = JointUNetConfig.tiny().cross_attention_dim
LATENT = (4, 8, 8)  # (C, h, w): a 64x64 px canvas


def seeded(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def unet() -> JointUNet:
    torch.manual_seed(0)
    return JointUNet(JointUNetConfig.tiny()).eval()


@pytest.fixture(scope="module")
def controlnet(unet) -> Stage1ControlNet:
    """A ControlNet whose zero convs are NOT zero, so it visibly changes the UNet's prediction."""
    net = Stage1ControlNet.from_unet(unet)
    torch.manual_seed(1)
    with torch.no_grad():
        for conv in (net.image_latent_in, net.controlnet_mid_block, *net.controlnet_down_blocks):
            conv.weight.normal_(0, 0.05)
            conv.bias.normal_(0, 0.05)
    return net.eval()


@pytest.fixture(scope="module")
def sd21_folder(tmp_path_factory) -> str:
    return write_tiny_sd21_components(str(tmp_path_factory.mktemp("sd21") / "stable-diffusion-2-1-base"),
                                      context_dim=CONTEXT_DIM)


@pytest.fixture(scope="module")
def components(sd21_folder):
    return load_sd21_components(sd21_folder)


def conditions(batch: int = 1, seed: int = 0) -> dict:
    return dict(pose_latent=seeded((batch, *LATENT), seed), context=seeded((batch, 77, CONTEXT_DIM), seed + 1),
                uncond_context=seeded((batch, 77, CONTEXT_DIM), seed + 2))


class Spy(torch.nn.Module):
    """Wraps a network, records its inputs, counts its calls."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.calls: list[tuple] = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.net(*args, **kwargs)


# ---------------------------------------------------------------- schedulers


def test_schedulers_use_sd21_base_training_schedule():
    for name in SCHEDULERS:
        config = make_scheduler(name).config
        assert (config.num_train_timesteps, config.beta_start, config.beta_end) == (1000, 0.00085, 0.012)
        assert config.beta_schedule == "scaled_linear" and config.prediction_type == "epsilon"
        assert config.steps_offset == 1 and config.timestep_spacing == "leading"
    ddpm = make_scheduler("ddpm")
    ddpm.set_timesteps(200)  # the paper's sampler: every 5th of the 1000 training steps, offset by 1
    assert ddpm.timesteps[0] == 996 and ddpm.timesteps[-1] == 1 and len(ddpm.timesteps) == 200
    ddim = make_scheduler("ddim")
    assert ddim.final_alpha_cumprod == ddim.alphas_cumprod[0]  # set_alpha_to_one=False
    assert make_scheduler("dpmpp_2m").config.algorithm_type == "dpmsolver++"
    with pytest.raises(UnknownScheduler, match="dpmpp_2m"):
        make_scheduler("euler")


@pytest.mark.parametrize("name", ["dpmpp_2m", "ddim"])
def test_stacked_step_equals_one_scheduler_per_branch(name):
    """One instance stepping the stacked (B,3,C,h,w) tensor == a separate instance per branch (multistep
    history included)."""
    stacked = make_scheduler(name)
    stacked.set_timesteps(6)
    copies = [copy.deepcopy(stacked) for _ in BRANCHES]
    sample = seeded((2, 3, *LATENT), 0)
    per_branch = [sample[:, i].clone() for i in range(3)]
    for k, t in enumerate(stacked.timesteps):
        eps = seeded((2, 3, *LATENT), 100 + k)
        sample = stacked.step(eps, t, sample).prev_sample
        per_branch = [s.step(eps[:, i], t, x).prev_sample for i, (s, x) in enumerate(zip(copies, per_branch))]
    torch.testing.assert_close(sample, torch.stack(per_branch, dim=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_returns_finite_latents(unet, name):
    latents = sample_joint(unet, **conditions(batch=2), steps=4, scheduler=name, seed=3)
    assert latents.shape == (2, 3, *LATENT) and latents.dtype == torch.float32
    assert torch.isfinite(latents).all()


# ---------------------------------------------------------------- the sampling loop


@pytest.mark.parametrize("name", SCHEDULERS)
def test_same_seed_same_result_different_seed_different(unet, name):
    first = sample_joint(unet, **conditions(), steps=3, scheduler=name, seed=11)
    again = sample_joint(unet, **conditions(), steps=3, scheduler=name, seed=11)
    other = sample_joint(unet, **conditions(), steps=3, scheduler=name, seed=12)
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 0.1


def test_branches_and_items_start_from_independent_gaussian_noise(unet):
    spy = Spy(unet)
    latent = (4, 32, 32)
    sample_joint(spy, pose_latent=torch.zeros(2, *latent), context=seeded((2, 77, CONTEXT_DIM), 0),
                 uncond_context=torch.zeros(2, 77, CONTEXT_DIM), steps=1, scheduler="ddim", seed=5)
    noisy = spy.calls[0][0][0]
    assert noisy.shape == (4, 3, *latent)  # cond + uncond halves
    torch.testing.assert_close(noisy[:2], noisy[2:], rtol=0, atol=0)  # both halves see the same latents
    slices = [noisy[b, i].flatten() for b in range(2) for i in range(3)]
    for s in slices:
        assert abs(s.mean()) < 0.05 and abs(s.std() - 1) < 0.05
    for i in range(len(slices)):
        for j in range(i + 1, len(slices)):
            assert abs(torch.corrcoef(torch.stack([slices[i], slices[j]]))[0, 1]) < 0.06


def test_one_timestep_for_all_branches_and_guidance_halves(unet):
    spy = Spy(unet)
    sample_joint(spy, **conditions(batch=2), steps=3, scheduler="ddpm", seed=0)
    timesteps = [call[0][2] for call in spy.calls]
    assert [t.tolist() for t in timesteps] == [[t] * 4 for t in (667, 334, 1)]


def test_batch_items_do_not_depend_on_the_rest_of_the_batch(unet):
    both = conditions(batch=2, seed=7)
    batch = sample_joint(unet, **both, steps=4, scheduler="ddpm", seed=20)
    second_alone = sample_joint(unet, **{k: v[1:] for k, v in both.items()}, steps=4, scheduler="ddpm", seed=21)
    # equal up to float rounding of batched kernels (the noise itself is identical)
    torch.testing.assert_close(batch[1:], second_alone, rtol=1e-3, atol=2e-4)
    assert (batch[1:] - batch[:1]).abs().mean() > 0.1


def test_cfg_one_skips_the_unconditional_pass(unet):
    spy = Spy(unet)
    with_uncond = sample_joint(spy, **conditions(), steps=3, cfg=1.0, seed=4)
    assert all(call[0][0].shape[0] == 1 for call in spy.calls)  # no doubled batch
    without = sample_joint(unet, **{**conditions(), "uncond_context": None}, steps=3, cfg=1.0, seed=4)
    assert torch.equal(with_uncond, without)


def test_guidance_formula(unet):
    cond = conditions()
    plain = sample_joint(unet, **{**cond, "uncond_context": None}, steps=3, scheduler="ddim", cfg=1.0, seed=4)
    # uncond == cond: eps_u + s * (eps_c - eps_u) == eps_c for any s
    same = sample_joint(unet, **{**cond, "uncond_context": cond["context"]}, steps=3, scheduler="ddim", cfg=7.5,
                        seed=4)
    torch.testing.assert_close(same, plain, rtol=1e-4, atol=1e-5)
    guided = sample_joint(unet, **cond, steps=3, scheduler="ddim", cfg=7.5, seed=4)
    assert (guided - plain).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="uncond_context"):
        sample_joint(unet, **{**cond, "uncond_context": None}, steps=3, cfg=7.5)


def _swap_guidance_halves(value):
    """The two halves of a doubled guidance batch swapped (tensors, ControlNet residuals); other values as is."""
    if isinstance(value, Stage1ControlResiduals):
        return Stage1ControlResiduals(down=[_swap_guidance_halves(d) for d in value.down],
                                      mid=_swap_guidance_halves(value.mid))
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return torch.cat(value.chunk(2)[::-1])
    return value


class FormerGuidanceOrder(torch.nn.Module):
    """Runs the wrapped network on the guidance batch in stage 1's former order, [conditional, unconditional],
    and hands its output back in the shared order of pipelines/sampling.py, [unconditional, conditional]."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs):
        output = self.net(*map(_swap_guidance_halves, args),
                          **{name: _swap_guidance_halves(value) for name, value in kwargs.items()})
        return _swap_guidance_halves(output)


@pytest.mark.parametrize("scheduler", ["ddpm", "dpmpp_2m"])
def test_the_shared_guidance_order_changes_no_result(unet, controlnet, scheduler):
    """The UNet batch is [unconditional, conditional] now (stage 2's order); stage 1's former order gives
    bit-identical latents, ControlNet included."""
    cond = {**conditions(batch=2), "image_latent": seeded((2, *LATENT), 9)}
    spy = Spy(unet)
    sample_joint(spy, **cond, controlnet=controlnet, steps=1, seed=6)
    context_in = spy.calls[0][0][3]
    assert torch.equal(context_in[:2], cond["uncond_context"]) and torch.equal(context_in[2:], cond["context"])
    shared = sample_joint(unet, **cond, controlnet=controlnet, steps=3, scheduler=scheduler, seed=6)
    former = sample_joint(FormerGuidanceOrder(unet), **cond, controlnet=FormerGuidanceOrder(controlnet), steps=3,
                          scheduler=scheduler, seed=6)
    assert torch.equal(shared, former)


def test_controlnet_scale_zero_equals_no_controlnet(unet, controlnet):
    cond = conditions()
    image_latent = seeded((1, *LATENT), 9)
    none = sample_joint(unet, **cond, steps=3, scheduler="ddim", seed=1)
    zero = sample_joint(unet, **cond, image_latent=image_latent, controlnet=controlnet, control_scale=0.0, steps=3,
                        scheduler="ddim", seed=1)
    full = sample_joint(unet, **cond, image_latent=image_latent, controlnet=controlnet, control_scale=1.0, steps=3,
                        scheduler="ddim", seed=1)
    torch.testing.assert_close(zero, none, rtol=1e-5, atol=1e-6)
    assert (full - none).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="both or neither"):
        sample_joint(unet, **cond, image_latent=image_latent, steps=3)


def test_progress_reports_every_step_and_cancels_within_one(unet):
    seen = []
    sample_joint(unet, **conditions(), steps=5, scheduler="dpmpp_2m", progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 5) for i in range(1, 6)]

    class Cancelled(Exception):
        pass

    def cancel_at_two(done, total):
        if done == 2:
            raise Cancelled

    spy = Spy(unet)
    with pytest.raises(Cancelled):
        sample_joint(spy, **conditions(), steps=10, progress=cancel_at_two)
    assert len(spy.calls) == 2


def test_training_mode_is_restored(unet):
    unet.train()
    try:
        sample_joint(unet, **conditions(), steps=1, scheduler="ddim")
        assert unet.training
    finally:
        unet.eval()


def test_bad_steps_are_refused(unet):
    for steps in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="steps"):
            sample_joint(unet, **conditions(), steps=steps)


# ---------------------------------------------------------------- sizes


def test_buckets_are_the_papers_five():
    assert sorted(BUCKETS) == sorted([(512, 512), (512, 768), (768, 512), (512, 1024), (1024, 512)])
    assert nearest_bucket(100, 100) == (512, 512)
    assert nearest_bucket(1000, 500) == (1024, 512)  # tall full-body photo: H 1024, W 512
    assert nearest_bucket(300, 200) == (768, 512)
    assert nearest_bucket(200, 310) == (512, 768)
    assert nearest_bucket(10, 80) == (512, 1024)


@pytest.mark.parametrize("size,mode", [((37, 53), "native"), ((64, 64), "native"), ((129, 1), "native"),
                                       ((45, 100), "bucket"), ((1001, 333), "bucket"), ((7, 5), "bucket")])
def test_plans_fit_and_come_back_to_the_input_size(size, mode):
    plan = plan_resize(*size, mode=mode)
    canvas_h, canvas_w = plan.canvas_size
    assert canvas_h % 64 == 0 and canvas_w % 64 == 0
    top, left = plan.offset
    assert top + plan.content_size[0] <= canvas_h and left + plan.content_size[1] <= canvas_w
    if mode == "bucket":
        assert plan.canvas_size in BUCKETS
        assert plan.content_size[0] == canvas_h or plan.content_size[1] == canvas_w  # fits, touching two sides
    else:
        assert plan.content_size == size and canvas_h - size[0] < 64 and canvas_w - size[1] < 64
    images = torch.rand(2, 3, *size)
    canvas = plan.to_canvas(images, fill="black")
    assert canvas.shape == (2, 3, canvas_h, canvas_w)
    back = plan.from_canvas(canvas)
    assert back.shape == images.shape
    if mode == "native":
        assert torch.equal(back, images)


def test_padding_black_for_pose_edge_for_photos():
    plan = plan_resize(40, 64, mode="native")  # 12 px of padding above and below
    images = torch.rand(1, 3, 40, 64) * 0.5 + 0.5
    black = plan.to_canvas(images, fill="black")
    edge = plan.to_canvas(images, fill="edge")
    assert plan.offset == (12, 0)
    assert black[..., :12, :].abs().max() == 0 and black[..., 52:, :].abs().max() == 0
    assert torch.equal(edge[..., :12, :], images[..., :1, :].expand(1, 3, 12, 64))
    assert torch.equal(edge[..., 52:, :], images[..., -1:, :].expand(1, 3, 12, 64))
    with pytest.raises(UnknownSizeMode):
        plan_resize(40, 64, mode="stretch")


# ---------------------------------------------------------------- SD 2.1 components


def test_load_sd21_components(sd21_folder, components, tmp_path):
    vae = components.vae
    assert vae.scaling_factor == pytest.approx(0.18215)
    images = torch.rand(1, 3, 64, 96)
    latents = vae.encode(images)
    assert latents.shape == (1, 4, 8, 12)
    expected = vae.vae.encode(images * 2 - 1).latent_dist.mean * 0.18215  # images mapped to [-1, 1]
    torch.testing.assert_close(latents, expected)
    decoded = vae.decode(latents)
    assert decoded.shape == images.shape and 0 <= decoded.min() and decoded.max() <= 1

    text = components.text_encoder
    # the file keeps the public layout (`text_model.` keys); every tensor must arrive, none re-initialised
    written = load_file(os.path.join(sd21_folder, "text_encoder", "model.safetensors"))
    assert all(key.startswith("text_model.") for key in written)
    loaded = text.text_encoder.state_dict()
    assert len(loaded) == len(written)
    assert all(torch.equal(loaded[key.removeprefix("text_model.")], value) for key, value in written.items())
    context = text.encode(["a person in a red shirt", ""])
    assert context.shape == (2, 77, CONTEXT_DIM)
    ids = text.tokenizer(["a person in a red shirt"], padding="max_length", max_length=77, return_tensors="pt")
    out = text.text_encoder(ids.input_ids, output_hidden_states=True)
    # SD 2.x's context is the converted (already penultimate) encoder's last hidden state after the final LN.
    final_norm = getattr(text.text_encoder, "text_model", text.text_encoder).final_layer_norm  # transformers 4 / 5
    torch.testing.assert_close(context[:1], final_norm(out.hidden_states[-1]))
    assert ids.input_ids[0, -1] == text.tokenizer.convert_tokens_to_ids("!")  # SD 2 pads with "!" (id 0)

    with pytest.raises(MissingModelFile, match="not found"):
        load_sd21_components(str(tmp_path / "nowhere"))
    (tmp_path / "partial" / "vae").mkdir(parents=True)
    with pytest.raises(MissingModelFile, match="text_encoder, tokenizer"):
        load_sd21_components(str(tmp_path / "partial"))


# ---------------------------------------------------------------- the pipeline


class RecordingCodec:
    """A LatentCodec that records what it is asked to encode."""

    def __init__(self, codec: DiffusersVAE):
        self.codec = codec
        self.encoded: list[torch.Tensor] = []

    def encode(self, images):
        self.encoded.append(images)
        return self.codec.encode(images)

    def decode(self, latents):
        return self.codec.decode(latents)


def pose_and_image(height: int, width: int, batch: int = 1):
    image = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    pose = torch.zeros(batch, 3, height, width)
    pose[..., height // 4: height // 2, width // 2] = 1.0  # one white limb
    return image, pose


def test_pipeline_returns_three_maps_at_the_input_size_native(unet, controlnet, components):
    codec = RecordingCodec(components.vae)
    pipe = Stage1Pipeline(unet, controlnet, codec, components.text_encoder)
    image, pose = pose_and_image(37, 53, batch=2)
    calls = []
    out = pipe(image, pose, ["a man", "a person in a shirt"], steps=2, scheduler="ddim", size_mode="native",
               progress=lambda d, t: calls.append(d))
    assert_maps(out, (2, 3, 37, 53))
    assert calls == [1, 2]
    assert len(codec.encoded) == 4  # pose and image, one item at a time
    pose_canvas, image_canvas = codec.encoded[0], codec.encoded[2]
    plan = plan_resize(37, 53, mode="native")
    assert pose_canvas.shape[-2:] == image_canvas.shape[-2:] == plan.canvas_size == (64, 64)
    top = plan.offset[0]
    assert top > 0 and pose_canvas[..., :top, :].abs().max() == 0  # pose padded with black
    assert torch.equal(image_canvas[..., :top, :], image_canvas[..., top:top + 1, :].expand(-1, -1, top, -1))


def test_pipeline_bucket_mode_comes_back_to_an_odd_non_square_size(unet, components):
    # The smallest bucket is 512x512 px (64x64 latents): one step keeps this affordable on the CPU.
    codec = RecordingCodec(components.vae)
    pipe = Stage1Pipeline(unet, None, codec, components.text_encoder)
    image, pose = pose_and_image(33, 31)
    out = pipe(image, pose, ["a man"], steps=1, cfg=1.0, scheduler="ddim", size_mode="bucket")
    assert_maps(out, (1, 3, 33, 31))
    assert codec.encoded[0].shape[-2:] == (512, 512)


def assert_maps(out, shape):
    for result in (out.rgb, out.depth, out.normal):
        assert result.shape == shape and result.dtype == torch.float32
        assert 0 <= result.min() and result.max() <= 1


def test_pipeline_is_reproducible_and_runs_without_controlnet(unet, components):
    pipe = Stage1Pipeline(unet, None, components.vae, components.text_encoder)
    image, pose = pose_and_image(48, 40)
    first = pipe(image, pose, ["a man"], steps=2, scheduler="dpmpp_2m", seed=3, size_mode="native")
    again = pipe(image, pose, ["a man"], steps=2, scheduler="dpmpp_2m", seed=3, size_mode="native")
    assert torch.equal(first.rgb, again.rgb) and torch.equal(first.depth, again.depth)
    assert not torch.equal(first.rgb, first.depth)


def test_pipeline_input_errors(unet, components):
    pipe = Stage1Pipeline(unet, None, components.vae, components.text_encoder)
    image, pose = pose_and_image(64, 48)
    with pytest.raises(ImageSizeMismatch, match=r"1 x 64x48 px.*1 x 48x64 px"):
        pipe(image, pose.transpose(-1, -2), ["a"], steps=1)
    with pytest.raises(ImageSizeMismatch):
        pipe(image.expand(2, -1, -1, -1), pose, ["a", "b"], steps=1)
    with pytest.raises(EmptyImage):
        pipe(image[..., :0], pose[..., :0], ["a"], steps=1)
    with pytest.raises(WrongChannelCount, match="3 colour channels, got 1"):
        pipe(image[:, :1], pose[:, :1], ["a"], steps=1)
    with pytest.raises(WrongChannelCount):
        pipe(image[0], pose[0], ["a"], steps=1)
    with pytest.raises(CaptionCountMismatch, match="1 captions"):
        pipe(image, pose, ["a", "b"], steps=1)
    with pytest.raises(CaptionCountMismatch, match="single string"):
        pipe(image, pose, "a", steps=1)
    with pytest.raises(UnknownScheduler):
        pipe(image, pose, ["a"], scheduler="euler_a", steps=1)
    with pytest.raises(UnknownSizeMode):
        pipe(image, pose, ["a"], size_mode="fill", steps=1)
    with pytest.raises(DiffBodyError, match="float"):
        pipe((image * 255).to(torch.uint8), pose, ["a"], steps=1)


def test_text_encoder_width_must_match_the_unet(unet, components, tmp_path):
    narrow = load_sd21_components(write_tiny_sd21_components(str(tmp_path / "sd"), context_dim=16))
    pipe = Stage1Pipeline(unet, None, components.vae, narrow.text_encoder)
    image, pose = pose_and_image(64, 64)
    with pytest.raises(ComponentMismatch, match="16-wide.*expects 32"):
        pipe(image, pose, ["a"], steps=1)


def test_caption_and_negative_of_different_lengths(unet):
    """A long caption (two 77-token chunks) against a short negative: repeating the short one is exact."""
    cond = conditions()
    long_context = torch.cat([cond["context"], cond["context"]], dim=1)  # (1, 154, D), same tokens twice
    short = sample_joint(unet, **cond, steps=2, scheduler="ddim", seed=2)
    mixed = sample_joint(unet, **{**cond, "context": long_context}, steps=2, scheduler="ddim", seed=2)
    torch.testing.assert_close(mixed, short, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpmpp_2m"])
@pytest.mark.parametrize("steps", [1000, 999, 500, 200])
def test_every_allowed_step_count_stays_inside_the_training_schedule(scheduler, steps):
    from comfyui_diffbody.pipelines.stage1 import scheduler_for_steps

    sampler = scheduler_for_steps(scheduler, steps)
    assert len(sampler.timesteps) == steps
    assert 0 <= int(sampler.timesteps.min()) and int(sampler.timesteps.max()) <= 999
