"""Training phases 1 and 2 (stage 1) on tiny models and a tiny synthetic dataset, on the CPU.

- each phase overfits four images (the loss of the last five steps is under half that of the first five);
- a run resumed from its checkpoint continues the uninterrupted run's loss curve exactly;
- a two-process accelerate launch (gloo on the CPU, bf16 autocast, gradient checkpointing, accumulation)
  completes and writes its weights, checkpoint and previews;
- the weights each phase writes load in the real "DiffBody Stage 1 Loader" and change the sampler's output.
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

from comfy_harness import execution_error

PHASE1_STEPS = 30
PHASE2_STEPS = 45


@pytest.fixture(scope="module")
def tiny_sd21(tmp_path_factory):
    from comfyui_diffbody.testing.tiny.sd21_components import write_tiny_sd21_components
    from comfyui_diffbody.testing.tiny.stage1 import write_tiny_sd21_diffusers

    folder = str(tmp_path_factory.mktemp("tiny-sd21"))
    write_tiny_sd21_diffusers(folder)
    write_tiny_sd21_components(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from comfyui_diffbody.testing.tiny.dataset import build_tiny_dataset

    return build_tiny_dataset(str(tmp_path_factory.mktemp("tiny-data")), n=4)


@pytest.fixture(scope="module")
def tiny_swinir(tmp_path_factory):
    from comfyui_diffbody.testing.tiny.swinir import write_tiny_swinir

    return write_tiny_swinir(str(tmp_path_factory.mktemp("swinir") / "general_swinir_v1.ckpt"))


def phase1_args(data, sd21, out, *extra):
    from comfyui_diffbody.training.train_stage1_unet import build_parser

    return build_parser().parse_args([
        "--data_root", data, "--pretrained_sd21", sd21, "--output_dir", str(out), "--train_batch_size", "2",
        "--log_every", "5", "--validation_sampler_steps", "3", *map(str, extra)])


def phase2_args(data, sd21, unet, out, *extra):
    from comfyui_diffbody.training.train_stage1_controlnet import build_parser

    return build_parser().parse_args([
        "--data_root", data, "--pretrained_sd21", sd21, "--unet", unet, "--output_dir", str(out),
        "--train_batch_size", "2", "--log_every", "5", "--validation_sampler_steps", "3", *map(str, extra)])


def falls_clearly(losses: list[float]) -> tuple[bool, float, float]:
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    return last < 0.5 * first, first, last


@pytest.fixture(scope="module")
def phase1_run(tiny_data, tiny_sd21, tmp_path_factory):
    """Phase 1 from the tiny SD 2.1 UNet: 30 steps at lr 2e-3, the real random noise and timesteps."""
    from comfyui_diffbody.training.train_stage1_unet import train

    out = tmp_path_factory.mktemp("phase1")
    args = phase1_args(tiny_data, tiny_sd21, out, "--max_steps", PHASE1_STEPS, "--learning_rate", 2e-3,
                       "--checkpointing_steps", 15, "--validation_steps", PHASE1_STEPS)
    return train(args), out


@pytest.fixture(scope="module")
def phase2_run(phase1_run, tiny_data, tiny_sd21, tmp_path_factory):
    """Phase 2 on the phase-1 UNet: 45 steps at lr 5e-3, each image with its own fixed noise, timestep and
    degradation (--fixed_noise): a zero-initialised ControlNet learns too slowly for a CPU test otherwise."""
    from comfyui_diffbody.training.train_stage1_controlnet import train

    out = tmp_path_factory.mktemp("phase2")
    unet = str(phase1_run[1] / "diffbody_stage1_unet.safetensors")
    args = phase2_args(tiny_data, tiny_sd21, unet, out, "--max_steps", PHASE2_STEPS, "--learning_rate", 5e-3,
                       "--fixed_noise", "--checkpointing_steps", 1000, "--validation_steps", PHASE2_STEPS)
    return train(args), out


def test_phase1_overfits_four_images(phase1_run):
    from comfyui_diffbody.models.stage1_weights import load_stage1_unet
    from comfyui_diffbody.training.loop import read_log

    losses, out = phase1_run
    print("phase 1 losses:", np.round(losses, 3).tolist())
    ok, first, last = falls_clearly(losses)
    assert len(losses) == PHASE1_STEPS and ok, f"loss {first:.3f} -> {last:.3f}: {np.round(losses, 3).tolist()}"
    records = read_log(str(out))
    assert [r["step"] for r in records] == list(range(5, PHASE1_STEPS + 1, 5))
    assert {"loss_depth", "loss_normal", "loss_rgb", "lr", "grad_norm"} <= set(records[-1])
    # eq. 1 is the sum of the three branch terms
    assert records[-1]["loss"] == pytest.approx(np.mean(losses[-5:]), rel=1e-5)
    unet = load_stage1_unet(str(out / "diffbody_stage1_unet.safetensors"))
    assert unet.config.block_out_channels == (32, 64, 64)
    assert (out / "checkpoint-15" / "diffbody_stage1_unet.safetensors").is_file()
    previews = sorted((out / "validation").glob(f"step-{PHASE1_STEPS:06d}_*.png"))
    assert len(previews) == 2
    sizes = {Image.open(p).size for p in previews}
    assert sizes == {(6 * 64, 64), (6 * 64, 128)}  # one per bucket: input, pose, rgb, depth, normal, photo


def test_phase2_overfits_four_images_with_the_unet_frozen(phase1_run, phase2_run):
    from safetensors.torch import load_file

    from comfyui_diffbody.models.stage1_weights import load_stage1_controlnet

    losses, out = phase2_run
    print("phase 2 losses:", np.round(losses, 3).tolist())
    ok, first, last = falls_clearly(losses)
    assert len(losses) == PHASE2_STEPS and ok, f"loss {first:.3f} -> {last:.3f}: {np.round(losses, 3).tolist()}"
    controlnet = load_stage1_controlnet(str(out / "diffbody_stage1_controlnet.safetensors"))
    assert controlnet.controlnet_mid_block.weight.abs().max() > 0  # the zero convs have learnt
    # the frozen UNet's file is untouched and its weights are where the ControlNet was copied from
    unet = load_file(str(phase1_run[1] / "diffbody_stage1_unet.safetensors"))
    cn = load_file(str(out / "diffbody_stage1_controlnet.safetensors"))
    assert not torch.equal(cn["down_blocks.1.resnets.0.conv1.weight"], unet["down_blocks.1.resnets.0.conv1.weight"])


@pytest.mark.parametrize("phase", ["unet", "controlnet"])
def test_resume_continues_the_same_loss_curve(phase, tiny_data, tiny_sd21, tiny_swinir, tmp_path):
    """4 steps straight vs 2 steps, then a resume from checkpoint-2 to step 4 (2 micro-batches per step,
    so the data position inside an epoch matters; phase 2 with the SwinIR cleaner and random degradations)."""
    from comfyui_diffbody.testing.tiny.stage1 import write_tiny_stage1
    from comfyui_diffbody.training import train_stage1_controlnet, train_stage1_unet

    def run(out, steps, *extra):
        common = ("--max_steps", steps, "--learning_rate", 1e-3, "--gradient_accumulation_steps", 2,
                  "--checkpointing_steps", 2, "--validation_count", 0, *extra)
        if phase == "unet":
            return train_stage1_unet.train(phase1_args(tiny_data, tiny_sd21, out, *common))
        unet, _ = write_tiny_stage1(str(tmp_path / "unet.safetensors"), str(tmp_path / "cn.safetensors"))
        return train_stage1_controlnet.train(phase2_args(tiny_data, tiny_sd21, unet, out, "--swinir", tiny_swinir,
                                                         *common))

    straight = run(tmp_path / "straight", 4)
    first_half = run(tmp_path / "resumed", 2)
    second_half = run(tmp_path / "resumed", 4, "--resume_from_checkpoint", "latest")
    assert len(straight) == 4 and len(first_half) == 2 and len(second_half) == 2
    np.testing.assert_allclose(first_half + second_half, straight, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(straight, 6))) == 4  # the steps really differ: noise and data move on
    state = json.loads((tmp_path / "resumed" / "checkpoint-4" / "training_state.json").read_text())
    assert state["step"] == 4 and state["micro_batches"] == 8


def test_two_process_accelerate_launch_on_cpu(tiny_data, tiny_sd21, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` with ACCELERATE_USE_CPU=1: two gloo processes on the
    CPU, no accelerate config file, bf16 autocast (set on the launcher only), gradient checkpointing and
    accumulation."""
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(tmp_path / "hf")}  # no accelerate default_config.yaml can leak in
    command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
               "-m", "comfyui_diffbody.training.train_stage1_unet", "--data_root", tiny_data,
               "--pretrained_sd21", tiny_sd21, "--output_dir", str(out), "--max_steps", "3",
               "--train_batch_size", "1", "--gradient_accumulation_steps", "2", "--gradient_checkpointing", "--log_every", "1", "--checkpointing_steps", "2",
               "--validation_steps", "3", "--validation_sampler_steps", "2", "--learning_rate", "1e-3"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config = json.loads((out / "train_config.json").read_text())
    assert config["num_processes"] == 2
    assert config["mixed_precision"] == "bf16"  # the launcher's setting, the script's flag left at "no"
    records = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    checkpoint = out / "checkpoint-2"
    assert {"random_states_0.pkl", "random_states_1.pkl", "diffbody_stage1_unet.safetensors"} <= \
        set(os.listdir(checkpoint))
    assert json.loads((checkpoint / "training_state.json").read_text())["num_processes"] == 2
    assert (out / "diffbody_stage1_unet.safetensors").is_file()
    assert len(list((out / "validation").glob("step-000003_*.png"))) == 2


def test_trained_weights_load_in_comfyui_and_change_the_output(comfy_server, tiny_models_dir, phase1_run,
                                                                phase2_run):
    from test_server_stage1 import saved, stage1_graph

    diffbody = tiny_models_dir / "diffbody"
    shutil.copy(phase1_run[1] / "diffbody_stage1_unet.safetensors", diffbody / "trained_phase1_unet.safetensors")
    shutil.copy(phase2_run[1] / "diffbody_stage1_controlnet.safetensors",
                diffbody / "trained_phase2_controlnet.safetensors")

    def sample(unet: str, controlnet: str) -> np.ndarray:
        graph = stage1_graph(unet=unet, steps=3)
        graph["stage1"]["inputs"]["controlnet_name"] = controlnet
        entry = comfy_server.run(graph, timeout=600)
        assert entry["status"]["status_str"] == "success", execution_error(entry)
        return np.stack([np.asarray(saved(comfy_server, entry, node), np.float32)
                         for node in ("save_rgb", "save_depth", "save_normal")])

    untrained = sample("diffbody_stage1_unet.safetensors", "diffbody_stage1_controlnet.safetensors")
    phase1 = sample("trained_phase1_unet.safetensors", "diffbody_stage1_controlnet.safetensors")
    phase2 = sample("trained_phase1_unet.safetensors", "trained_phase2_controlnet.safetensors")
    changes = np.abs(phase1 - untrained).mean(), np.abs(phase2 - phase1).mean()
    print("mean absolute change of the sampler's outputs (0..255): phase 1 %.2f, phase 2 %.2f" % changes)
    assert changes[0] > 2.0, "the phase-1 UNet did not change the output"
    assert changes[1] > 2.0, "the phase-2 ControlNet did not change the output"


def test_phase1_starts_from_sd21_humansd_or_a_diffbody_file(tiny_data, tiny_sd21, tmp_path):
    from comfyui_diffbody.testing.tiny.stage1 import write_tiny_humansd, write_tiny_sd21_checkpoint, write_tiny_stage1
    from comfyui_diffbody.training.train_stage1_unet import initial_unet

    def init(*flags):
        return initial_unet(phase1_args(tiny_data, tiny_sd21, tmp_path / "out", *flags))

    folder = init()  # default: the --pretrained_sd21 folder's UNet
    single = init("--init", write_tiny_sd21_checkpoint(str(tmp_path / "sd21.safetensors")))
    assert all(torch.equal(v, single.state_dict()[k]) for k, v in folder.state_dict().items())
    pose_weights = folder.branches["rgb"].conv_in.weight[:, 4:]
    assert pose_weights.abs().max() == 0  # SD has no pose input: those channels start at zero
    humansd = init("--init_from", "humansd", "--init", write_tiny_humansd(str(tmp_path / "humansd-v1.ckpt")))
    assert humansd.branches["depth"].conv_in.weight[:, 4:].abs().max() > 0  # HumanSD's own pose channels
    unet_file, _ = write_tiny_stage1(str(tmp_path / "u.safetensors"), str(tmp_path / "c.safetensors"))
    ours = init("--init_from", "diffbody", "--init", unet_file)
    assert not torch.equal(ours.branches["depth"].conv_out.weight, ours.branches["rgb"].conv_out.weight)
    with pytest.raises(SystemExit, match="needs --init"):
        init("--init_from", "humansd")
