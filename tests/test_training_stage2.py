"""Training phases 3 and 4 (stage 2) on the tiny SDXL, tiny CLIP vision and a tiny synthetic dataset, on the CPU.

- phase 3 (multi-prior ControlNet) overfits four images: the loss of the last five steps is under half
  that of the first five;
- phase 4 (colour adapter) overfits four images on their stored I_res (training/prepare_ires.py, the
  paper's reference): on one fixed batch the loss falls at nearly every step and by more than 15% (the
  adapter acts only through a few tokens in the cross-attentions, so it cannot fit as far as a ControlNet can);
- what reaches the adapter's CLIP image encoder is the stored I_res (`ires`), the photo (`hq`) or the
  step's I_ir, the very image the ControlNet gets (`ir`), recorded with forward hooks; a committed
  negative test crosses that wire and checks the detector sees it;
- a run resumed from its checkpoint continues the uninterrupted run's loss curve exactly (both phases);
- a two-process accelerate launch (gloo on the CPU, bf16 autocast, gradient checkpointing, accumulation)
  of each phase completes and writes its weights, checkpoint and previews;
- the weights each phase writes load in the real DiffBody loader nodes and change the sampled image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

PHASE3_STEPS = 30
PHASE4_STEPS = 40


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory):
    """The tiny SDXL (diffusers folder + the same UNet as a single file), CLIP vision folder, IP-Adapter Plus XL
    file and SwinIR, all with the seeds build_models_dir uses, so the trained files fit the server's models."""
    from comfyui_diffbody.testing.tiny.stage2 import (write_tiny_clip_vision, write_tiny_ip_adapter_plus_xl,
                                                      write_tiny_multiprior, write_tiny_sdxl)
    from comfyui_diffbody.testing.tiny.swinir import write_tiny_swinir

    root = tmp_path_factory.mktemp("tiny-stage2")
    written = write_tiny_sdxl(str(root / "sdxl"), str(root / "sdxl_unet.safetensors"))
    return {"sdxl": written["folder"], "sdxl_unet": written["single_file"],
            "clip_vision": write_tiny_clip_vision(str(root / "clip_vision"))["folder"],
            "ip_adapter": write_tiny_ip_adapter_plus_xl(str(root / "ip-adapter-plus_sdxl_vit-h.safetensors")),
            "controlnet": write_tiny_multiprior(str(root / "diffbody_stage2_controlnet.safetensors")),
            "swinir": write_tiny_swinir(str(root / "general_swinir_v1.ckpt"))}


def with_ires(data_root: str) -> str:
    """Store every item's I_res (ires/<id>.png) with the I_res step on tiny stage-1 weights (one step, no
    guidance: a plumbing-grade I_res, different from the photo and from I_ir)."""
    from comfyui_diffbody.training import prepare_ires

    assert prepare_ires.main([data_root, "--tiny", "--device", "cpu", "--steps", "1", "--cfg", "1"]) == 0
    return data_root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Four items in two buckets (64x64, 128x64), with their I_res."""
    from comfyui_diffbody.testing.tiny.dataset import build_tiny_dataset

    return with_ires(build_tiny_dataset(str(tmp_path_factory.mktemp("tiny-data")), n=4))


@pytest.fixture(scope="module")
def tiny_square_data(tmp_path_factory):
    """Four items of one bucket (64x64), with their I_res: with batch 4 every step sees the same batch."""
    from comfyui_diffbody.testing.tiny.dataset import build_tiny_dataset

    return with_ires(build_tiny_dataset(str(tmp_path_factory.mktemp("tiny-square")), n=4, sizes=((64, 64),), seed=1))


def phase3_args(data, parts, out, *extra):
    from comfyui_diffbody.training.train_stage2_controlnet import build_parser

    return build_parser().parse_args([
        "--data_root", data, "--pretrained_sdxl", parts["sdxl"], "--swinir", parts["swinir"], "--output_dir", str(out),
        "--train_batch_size", "2", "--gradient_accumulation_steps", "1", "--log_every", "5",
        "--validation_sampler_steps", "2", *map(str, extra)])


def phase4_args(data, parts, controlnet, out, *extra):
    from comfyui_diffbody.training.train_colour_adapter import build_parser

    return build_parser().parse_args([
        "--data_root", data, "--pretrained_sdxl", parts["sdxl"], "--swinir", parts["swinir"],
        "--controlnet", controlnet, "--init_adapter", parts["ip_adapter"], "--clip_vision", parts["clip_vision"],
        "--output_dir", str(out), "--train_batch_size", "4", "--log_every", "5", "--validation_sampler_steps", "2",
        *map(str, extra)])


@pytest.fixture(scope="module")
def phase3_run(tiny_data, tiny_parts, tmp_path_factory):
    """Phase 3 from the tiny SDXL: 30 steps at lr 3e-3, each image with its own fixed noise, timestep and
    degradation (--fixed_noise): a zero-initialised ControlNet learns too slowly for a CPU test otherwise."""
    from comfyui_diffbody.training.train_stage2_controlnet import train

    out = tmp_path_factory.mktemp("phase3")
    args = phase3_args(tiny_data, tiny_parts, out, "--max_steps", PHASE3_STEPS, "--learning_rate", 3e-3,
                       "--fixed_noise", "--checkpointing_steps", 15, "--validation_steps", PHASE3_STEPS)
    return train(args), out


@pytest.fixture(scope="module")
def phase4_run(phase3_run, tiny_square_data, tiny_parts, tmp_path_factory):
    """Phase 4 on the phase-3 ControlNet: 40 steps at lr 3e-3 on one batch of four images and their stored I_res
    (the default reference when every item has one), fixed noise."""
    from comfyui_diffbody.training.train_colour_adapter import train

    out = tmp_path_factory.mktemp("phase4")
    controlnet = str(phase3_run[1] / "diffbody_stage2_controlnet.safetensors")
    args = phase4_args(tiny_square_data, tiny_parts, controlnet, out, "--max_steps", PHASE4_STEPS,
                       "--learning_rate", 3e-3, "--fixed_noise", "--checkpointing_steps", 20,
                       "--validation_steps", PHASE4_STEPS, "--validation_count", 1)
    return train(args), out


def curve(losses) -> str:
    return str(np.round(losses, 4).tolist())


def test_phase3_overfits_four_images(phase3_run, tiny_parts):
    from safetensors.torch import load_file

    from comfyui_diffbody.models.stage2_weights import load_multiprior
    from comfyui_diffbody.training.loop import read_log

    losses, out = phase3_run
    print(f"phase 3 losses: {curve(losses)}")
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    assert len(losses) == PHASE3_STEPS and last < 0.5 * first, f"loss {first:.3f} -> {last:.3f}: {curve(losses)}"
    records = read_log(str(out))
    assert [r["step"] for r in records] == list(range(5, PHASE3_STEPS + 1, 5))
    assert records[-1]["loss"] == pytest.approx(np.mean(losses[-5:]), rel=1e-5)
    controlnet = load_multiprior(str(out / "diffbody_stage2_controlnet.safetensors"))
    assert controlnet.controlnet_mid_block.weight.abs().max() > 0  # the zero convs have learnt
    assert controlnet.controlnet_cond_embedding.conv_out.weight.abs().max() > 0  # and the fusion layer
    # the encoder started as the SDXL UNet's copy and moved away from it
    unet = load_file(os.path.join(tiny_parts["sdxl"], "unet", "diffusion_pytorch_model.safetensors"))
    key = "down_blocks.1.resnets.0.conv1.weight"
    assert not torch.equal(controlnet.state_dict()[key], unet[key])
    assert (out / "checkpoint-15" / "diffbody_stage2_controlnet.safetensors").is_file()
    previews = sorted((out / "validation").glob(f"step-{PHASE3_STEPS:06d}_*.png"))
    assert {Image.open(p).size for p in previews} == {(6 * 64, 64), (6 * 64, 128)}  # one per bucket


def test_phase4_overfits_four_images_and_trains_the_whole_adapter(phase4_run, tiny_parts):
    from safetensors.torch import load_file

    from comfyui_diffbody.models.colour_adapter import load_colour_adapter
    from comfyui_diffbody.testing.tiny.stage2 import tiny_sdxl_unet_config

    losses, out = phase4_run
    print(f"phase 4 losses: {curve(losses)}")
    assert json.loads((out / "train_config.json").read_text())["phase"]["colour_reference"] == "ires"
    falling = sum(b < a for a, b in zip(losses, losses[1:]))
    assert len(losses) == PHASE4_STEPS
    assert falling >= 0.9 * (PHASE4_STEPS - 1) and losses[-1] < 0.85 * losses[0], curve(losses)
    path = out / "diffbody_colour_adapter.safetensors"
    load_colour_adapter(str(path), tiny_sdxl_unet_config())  # IP-Adapter Plus XL's layout, strictly
    trained, initial = load_file(str(path)), load_file(tiny_parts["ip_adapter"])
    assert trained.keys() == initial.keys()
    changed = {key.split(".")[0] + ("." + key.split(".")[-2] if key.startswith("ip_adapter.") else "")
               for key in trained if not torch.equal(trained[key], initial[key])}
    assert {"image_proj", "ip_adapter.to_k_ip", "ip_adapter.to_v_ip"} <= changed
    assert (out / "checkpoint-20" / "diffbody_colour_adapter.safetensors").is_file()
    assert len(list((out / "validation").glob(f"step-{PHASE4_STEPS:06d}_*.png"))) == 1


@pytest.mark.parametrize("phase", ["controlnet", "colour_adapter"])
def test_resume_continues_the_same_loss_curve(phase, tiny_data, tiny_parts, tmp_path):
    """4 steps straight vs 2 steps, then a resume from checkpoint-2 to step 4 (2 micro-batches of one image per
    step, so the data position inside an epoch matters), with random noise, timesteps, degradations and
    caption/image dropout."""
    from comfyui_diffbody.training import train_colour_adapter, train_stage2_controlnet

    def run(out, steps, *extra):
        common = ("--max_steps", steps, "--learning_rate", 1e-3, "--train_batch_size", 1,
                  "--gradient_accumulation_steps", 2, "--checkpointing_steps", 2, "--validation_count", 0,
                  "--caption_dropout", 0.3, *extra)
        if phase == "controlnet":
            return train_stage2_controlnet.train(phase3_args(tiny_data, tiny_parts, out, *common))
        return train_colour_adapter.train(phase4_args(tiny_data, tiny_parts, tiny_parts["controlnet"], out, *common,
                                                      "--condition_dropout", 0.2))

    straight = run(tmp_path / "straight", 4)
    first_half = run(tmp_path / "resumed", 2)
    second_half = run(tmp_path / "resumed", 4, "--resume_from_checkpoint", "latest")
    print(f"{phase}: straight {curve(straight)}, resumed {curve(first_half)} + {curve(second_half)}")
    assert len(straight) == 4 and len(first_half) == 2 and len(second_half) == 2
    np.testing.assert_allclose(first_half + second_half, straight, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(straight, 6))) == 4  # the steps really differ: noise and data move on
    state = json.loads((tmp_path / "resumed" / "checkpoint-4" / "training_state.json").read_text())
    assert state["step"] == 4 and state["micro_batches"] == 8


@pytest.mark.parametrize("phase", ["controlnet", "colour_adapter"])
def test_two_process_accelerate_launch_on_cpu(phase, tiny_data, tiny_parts, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` with ACCELERATE_USE_CPU=1: two gloo processes, bf16
    autocast (accelerate then returns the DDP model's outputs in float32), gradient checkpointing (in phase 4
    through the patched UNet) and accumulation."""
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(tmp_path / "hf")}  # no accelerate default_config.yaml can leak in
    module, weights, phase_args = {
        "controlnet": ("train_stage2_controlnet", "diffbody_stage2_controlnet.safetensors", []),
        "colour_adapter": ("train_colour_adapter", "diffbody_colour_adapter.safetensors",
                           ["--controlnet", tiny_parts["controlnet"], "--init_adapter", tiny_parts["ip_adapter"],
                            "--clip_vision", tiny_parts["clip_vision"]])}[phase]
    command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
               "-m", f"comfyui_diffbody.training.{module}", "--data_root", tiny_data,
               "--pretrained_sdxl", tiny_parts["sdxl"], "--swinir", tiny_parts["swinir"], *phase_args,
               "--output_dir", str(out), "--max_steps", "3", "--train_batch_size", "1",
               "--gradient_accumulation_steps", "2", "--mixed_precision", "bf16", "--gradient_checkpointing",
               "--log_every", "1", "--checkpointing_steps", "2", "--validation_steps", "3",
               "--validation_sampler_steps", "2", "--learning_rate", "1e-3"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config = json.loads((out / "train_config.json").read_text())
    assert config["num_processes"] == 2 and config["mixed_precision"] == "bf16"
    records = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    checkpoint = out / "checkpoint-2"
    assert {"random_states_0.pkl", "random_states_1.pkl", weights} <= set(os.listdir(checkpoint))
    assert (out / weights).is_file()
    assert len(list((out / "validation").glob("step-000003_*.png"))) == 2


# ---- the inputs of a step ------------------------------------------------------------------------------

def test_a_step_feeds_the_controlnet_swinir_of_the_degraded_photo_and_sdxl_micro_conditioning(tiny_data, tiny_parts):
    """prepare_inputs: the image prior is I_ir = SwinIR(degraded photo) drawn from the step's generator; the
    time ids are (H, W, 0, 0, H, W); a dropped caption is the empty prompt."""
    from comfyui_diffbody.training import stage2_common as common
    from comfyui_diffbody.training.dataset import ManifestDataset, collate_items
    from comfyui_diffbody.training.shared import Cleaner, degraded_and_cleaned

    batch = collate_items([ManifestDataset(tiny_data)[i] for i in (1, 3)])  # the two 128x64 items
    sdxl = common.load_frozen_sdxl(tiny_parts["sdxl"])
    cleaner = Cleaner(tiny_parts["swinir"])
    batch["generator"] = torch.Generator().manual_seed(5)
    inputs = common.prepare_inputs(batch, sdxl, common.training_schedule(), cleaner, 1.0, 4)
    _, expected_ir = degraded_and_cleaned(batch["image"], torch.Generator().manual_seed(5), cleaner, 4)
    assert torch.equal(inputs.priors["image"], expected_ir)
    assert not torch.allclose(inputs.priors["image"], batch["image"], atol=0.02)
    assert inputs.time_ids.tolist() == [[128, 64, 0, 0, 128, 64]] * 2
    empty, _ = sdxl.text_encoders.encode(["", ""])
    assert torch.equal(inputs.context, empty)  # caption dropout 1.0: every caption is ""
    assert inputs.noisy.shape == (2, 4, 16, 8) and inputs.timesteps.shape == (2,)


def test_a_single_file_sdxl_unet_replaces_the_folders(tiny_parts, tmp_path):
    """--sdxl_unet: the original-layout file's UNet is the frozen one and the ControlNet's source."""
    from comfyui_diffbody.training import stage2_common as common
    from comfyui_diffbody.training.train_stage2_controlnet import build_parser, initial_controlnet

    folder_sdxl = common.load_frozen_sdxl(tiny_parts["sdxl"])
    single = common.load_frozen_sdxl(tiny_parts["sdxl"], tiny_parts["sdxl_unet"])
    for key, value in folder_sdxl.unet.state_dict().items():
        assert torch.equal(value, single.unet.state_dict()[key]), key
    args = build_parser().parse_args(["--data_root", "unused", "--pretrained_sdxl", tiny_parts["sdxl"], "--sdxl_unet",
                                      tiny_parts["sdxl_unet"], "--output_dir", str(tmp_path)])
    from_file = initial_controlnet(args, single).state_dict()
    args.sdxl_unet = None
    from_folder = initial_controlnet(args, folder_sdxl).state_dict()
    assert all(torch.equal(from_file[k], from_folder[k]) for k in from_folder)  # same weights, same --seed


def test_defaults_are_the_papers():
    """Section 4.2: ControlNet lr 1e-5, 100k steps, batch 32 with accumulation 2 on 8 GPUs; adapter lr 1e-4, 200k
    steps, batch 64 on 8 GPUs."""
    from comfyui_diffbody.training import train_colour_adapter, train_stage2_controlnet

    common = ["--data_root", "d", "--pretrained_sdxl", "s", "--output_dir", "o"]
    phase3 = train_stage2_controlnet.build_parser().parse_args(common)
    assert (phase3.learning_rate, phase3.max_steps, phase3.train_batch_size * 8,
            phase3.gradient_accumulation_steps) == (1e-5, 100_000, 32, 2)
    phase4 = train_colour_adapter.build_parser().parse_args(
        [*common, "--controlnet", "c", "--init_adapter", "a", "--clip_vision", "v"])
    assert (phase4.learning_rate, phase4.max_steps, phase4.train_batch_size * 8,
            phase4.gradient_accumulation_steps) == (1e-4, 200_000, 64, 1)
    assert phase3.prior_strengths == phase4.prior_strengths == [1.0] * 4


def test_condition_dropout_follows_ip_adapters_split():
    from comfyui_diffbody.training.train_colour_adapter import dropout_masks

    drop_image, drop_caption = dropout_masks(20_000, torch.Generator().manual_seed(0), 0.05)
    image_only = (drop_image & ~drop_caption).float().mean().item()
    caption_only = (drop_caption & ~drop_image).float().mean().item()
    both = (drop_image & drop_caption).float().mean().item()
    assert all(abs(rate - 0.05) < 0.006 for rate in (image_only, caption_only, both)), (image_only, caption_only, both)


# ---- what reaches the colour adapter ------------------------------------------------------------------

def record_phase4_inputs(monkeypatch, data, parts, out, *extra) -> dict[str, torch.Tensor]:
    """One phase-4 step on all four items (no dropout): what entered the CLIP image encoder (its pixel_values)
    and the ControlNet's prior embedding (its "image" prior, I_ir), recorded with forward pre-hooks."""
    from comfyui_diffbody.models import sdxl_components
    from comfyui_diffbody.training import train_colour_adapter

    seen: dict[str, torch.Tensor] = {}
    load_clip, load_controlnet = sdxl_components.load_clip_vision, train_colour_adapter.load_frozen_controlnet

    def record(name: str, value: torch.Tensor) -> None:  # a pre-hook returning None leaves the inputs alone
        seen.setdefault(name, value.detach().float().clone())

    def clip_hooked(*args, **kwargs):
        encoder = load_clip(*args, **kwargs)
        encoder.register_forward_pre_hook(lambda _, a, kw: record("clip", kw["pixel_values"]), with_kwargs=True)
        return encoder

    def controlnet_hooked(*args, **kwargs):
        controlnet = load_controlnet(*args, **kwargs)
        controlnet.controlnet_cond_embedding.register_forward_pre_hook(lambda _, a: record("image_prior", a[0]["image"]))
        return controlnet

    monkeypatch.setattr(sdxl_components, "load_clip_vision", clip_hooked)
    monkeypatch.setattr(train_colour_adapter, "load_frozen_controlnet", controlnet_hooked)
    train_colour_adapter.train(phase4_args(data, parts, parts["controlnet"], out, "--max_steps", 1,
                                           "--condition_dropout", 0, "--validation_count", 0, "--fixed_noise", *extra))
    return seen


def clip_input_sources(seen: dict[str, torch.Tensor], data_root: str) -> list[set[str]]:
    """For each row of the recorded CLIP input: which of the candidates it is - "ires" / "hq" (an item's stored
    ires/<id>.png / images/<id>.png, read here with PIL) or "ir" (the same row of the ControlNet's image prior)."""
    from comfyui_diffbody.pipelines.clip_image import clip_pixels

    clip = seen["clip"]
    size = clip.shape[-1]

    def pixels(folder: str) -> torch.Tensor:
        files = sorted(os.listdir(os.path.join(data_root, folder)))
        arrays = [np.asarray(Image.open(os.path.join(data_root, folder, f)).convert("RGB")) for f in files]
        return clip_pixels(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0, size)

    stored = {"ires": pixels("ires"), "hq": pixels("images")}
    ir = clip_pixels(seen["image_prior"], size)
    sources = []
    for row in range(clip.shape[0]):
        found = {name for name, rows in stored.items() if any(torch.allclose(clip[row], r, atol=1e-5) for r in rows)}
        if torch.allclose(clip[row], ir[row], atol=1e-5):
            found.add("ir")
        sources.append(found)
    return sources


@pytest.mark.parametrize("reference", ["default", "ires", "hq", "ir"])
def test_the_adapter_sees_the_chosen_reference(reference, monkeypatch, tiny_square_data, tiny_parts, tmp_path):
    extra = [] if reference == "default" else ["--colour_reference", reference]
    seen = record_phase4_inputs(monkeypatch, tiny_square_data, tiny_parts, tmp_path, *extra)
    expected = "ires" if reference == "default" else reference
    assert seen["clip"].shape[0] == 4
    assert clip_input_sources(seen, tiny_square_data) == [{expected}] * 4


def test_the_reference_detector_catches_a_crossed_wire(monkeypatch, tiny_square_data, tiny_parts, tmp_path):
    """Negative test: phase 4 wired to feed the photo where I_res is asked for is caught as "hq", not "ires"."""
    from comfyui_diffbody.training import train_colour_adapter

    real = train_colour_adapter.reference_image
    monkeypatch.setattr(train_colour_adapter, "reference_image",
                        lambda name, batch, image_ir: real("hq" if name == "ires" else name, batch, image_ir))
    seen = record_phase4_inputs(monkeypatch, tiny_square_data, tiny_parts, tmp_path, "--colour_reference", "ires")
    assert clip_input_sources(seen, tiny_square_data) == [{"hq"}] * 4


def test_without_i_res_files_the_default_reference_is_an_error(tiny_parts, tmp_path):
    """No silent fallback: missing I_res files stop phase 4 with a message naming the step and hq/ir."""
    from comfyui_diffbody.testing.tiny.dataset import build_tiny_dataset
    from comfyui_diffbody.training.train_colour_adapter import train

    data = with_ires(build_tiny_dataset(str(tmp_path / "data"), n=2))
    os.remove(os.path.join(data, "ires", "tiny0001.png"))
    for reference in ([], ["--colour_reference", "ires"]):
        with pytest.raises(SystemExit, match=r"1 of 2 item\(s\).*prepare_ires.*--colour_reference hq or ir"):
            train(phase4_args(data, tiny_parts, tiny_parts["controlnet"], tmp_path / "out", "--max_steps", 1,
                              *reference))


# ---- in ComfyUI ----------------------------------------------------------------------------------------

def test_trained_weights_load_in_comfyui_and_change_the_output(comfy_server, tiny_models_dir, phase3_run, phase4_run):
    from test_server_stage2 import stage2_graph

    shutil.copy(phase3_run[1] / "diffbody_stage2_controlnet.safetensors",
                tiny_models_dir / "diffbody" / "trained_stage2_controlnet.safetensors")
    shutil.copy(phase4_run[1] / "diffbody_colour_adapter.safetensors",
                tiny_models_dir / "ipadapter" / "trained_colour_adapter.safetensors")

    def with_controlnet(name: str | None) -> np.ndarray:
        graph = stage2_graph(use_adapter=False, use_control=name is not None)
        if name is not None:
            graph["controlnet"]["inputs"]["controlnet_name"] = name
        return comfy_server.run_single_image(graph).astype(np.float32)

    plain = with_controlnet(None)
    untrained = with_controlnet("diffbody_stage2_controlnet.safetensors")
    trained = with_controlnet("trained_stage2_controlnet.safetensors")
    assert np.abs(trained - untrained).mean() > 1.0, "the trained ControlNet gives the untrained file's image"
    # trained from zero convs: had it learnt nothing, it would add nothing
    assert np.abs(trained - plain).mean() > 1.0, "the trained ControlNet does not act"

    def with_adapter(name: str) -> np.ndarray:
        return comfy_server.run_single_image(stage2_graph(use_control=False, adapter=name)).astype(np.float32)

    initial = with_adapter("ip-adapter-plus_sdxl_vit-h.safetensors")  # what phase 4 started from
    tuned = with_adapter("trained_colour_adapter.safetensors")
    assert np.abs(tuned - initial).mean() > 1.0, "the trained adapter gives its initialisation's image"
