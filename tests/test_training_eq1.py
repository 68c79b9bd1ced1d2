"""Paper eq. 1 (stage-1 training, training/stage1_common.py `prepare_inputs` / `joint_loss`), on the tiny SD 2.1
parts and a tiny joint UNet, checked against values this test computes itself:

- the targets are the VAE latents (posterior mean x scaling factor) of the depth map, normal map and photo;
- every branch's noisy latent is sqrt(abar_t) x_b + sqrt(1 - abar_t) eps_b on SD 2.1's own scaled-linear
  schedule (written out here, not taken from the scheduler), and the t that fits each branch best is the
  sample's one timestep, the same for the three branches;
- the three noises are different draws (uncorrelated, unit variance);
- the loss is the SUM of the three branch MSEs, each term logged under its branch.

The negative tests cross each wire (one noise for all branches, a timestep per branch, the mean instead of the
sum) and check that the detector names it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

BRANCH_FIELDS = (("depth", "depth"), ("normal", "normal"), ("rgb", "image"))  # eq. 1's order in the tensors


def sd21_alphas_cumprod() -> torch.Tensor:
    """SD 2.1-base's training schedule: scaled-linear betas 0.00085 .. 0.012 over 1000 steps (its
    scheduler_config.json), as float64."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


@torch.no_grad()
def own_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """The posterior mean of the diffusers AutoencoderKL, scaled, computed here."""
    return vae.encode(images * 2.0 - 1.0).latent_dist.mean * vae.config.scaling_factor


def best_timesteps(noisy: torch.Tensor, target: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(B,) the t in 0..999 for which sqrt(abar_t) target + sqrt(1-abar_t) noise is closest to noisy, per sample."""
    abar = sd21_alphas_cumprod()
    x, eps, y = (v.double().flatten(1)[:, None] for v in (target, noise, noisy))  # (B, 1, N)
    fit = abar.sqrt()[None, :, None] * x + (1 - abar).sqrt()[None, :, None] * eps  # (B, 1000, N)
    return (fit - y).pow(2).sum(-1).argmin(dim=1)


def eq1_problems(targets: dict[str, torch.Tensor], inputs, prediction: torch.Tensor, loss, terms: dict) -> list[str]:
    """Every way (inputs, loss) departs from eq. 1, one line each."""
    problems = []
    names = [b for b, _ in BRANCH_FIELDS]
    abar = sd21_alphas_cumprod()
    for i, name in enumerate(names):
        fitted = best_timesteps(inputs.noisy[:, i], targets[name], inputs.noise[:, i])
        if not torch.equal(fitted, inputs.timesteps.cpu()):
            problems.append(f"{name}: noised at t={fitted.tolist()}, not the sample's t={inputs.timesteps.tolist()}")
        a = abar[inputs.timesteps.cpu()].view(-1, 1, 1, 1)
        expected = a.sqrt() * targets[name].double() + (1 - a).sqrt() * inputs.noise[:, i].double()
        if not torch.allclose(inputs.noisy[:, i].double(), expected, atol=1e-4):
            problems.append(f"{name}: the noisy latent is not sqrt(abar) x + sqrt(1-abar) eps of its target")
        if abs(float(inputs.noise[:, i].std()) - 1.0) > 0.2:
            problems.append(f"{name}: noise std {float(inputs.noise[:, i].std()):.3f}, not a standard normal draw")
    for i in range(3):
        for j in range(i + 1, 3):
            a, b = inputs.noise[:, i].flatten(), inputs.noise[:, j].flatten()
            corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
            if abs(corr) > 0.3:
                problems.append(f"{names[i]} and {names[j]} share their noise (correlation {corr:.3f})")
    branch_mse = {name: F.mse_loss(prediction[:, i].double(), inputs.noise[:, i].double()) for i, name in enumerate(names)}
    expected_loss = sum(branch_mse.values())
    if abs(float(loss) - float(expected_loss)) > 1e-5 * float(expected_loss):
        problems.append(f"loss {float(loss):.6f} is not the sum of the branch MSEs {float(expected_loss):.6f}")
    for name, value in branch_mse.items():
        if abs(terms.get(f"loss_{name}", float("nan")) - float(value)) > 1e-5 * float(value):
            problems.append(f"loss_{name} {terms.get(f'loss_{name}')} is not its MSE {float(value):.6f}")
    return problems


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from comfyui_diffbody.models.stage1_weights import load_stage1_unet
    from comfyui_diffbody.testing.tiny.dataset import build_tiny_dataset
    from comfyui_diffbody.testing.tiny.sd21_components import write_tiny_sd21_components
    from comfyui_diffbody.testing.tiny.stage1 import write_tiny_sd21_diffusers, write_tiny_stage1
    from comfyui_diffbody.training import stage1_common as common
    from comfyui_diffbody.training.dataset import ManifestDataset, collate_items

    root = tmp_path_factory.mktemp("eq1")
    write_tiny_sd21_diffusers(str(root / "sd21"))
    write_tiny_sd21_components(str(root / "sd21"))
    unet_file, _ = write_tiny_stage1(str(root / "unet.safetensors"), str(root / "cn.safetensors"))
    data = build_tiny_dataset(str(root / "data"), n=4, sizes=((64, 64),), seed=2)
    batch = collate_items([ManifestDataset(data)[i] for i in range(4)])
    components = common.load_frozen_sd21(str(root / "sd21"))
    targets = {name: own_latents(components.vae.vae, batch[field]) for name, field in BRANCH_FIELDS}
    return {"batch": batch, "components": components, "unet": load_stage1_unet(unet_file, dtype=torch.float32).eval(),
            "targets": targets}


def make_inputs(setup, per_item: bool):
    from comfyui_diffbody.training import stage1_common as common
    from comfyui_diffbody.training.shared import fix_batch_randomness

    batch = dict(setup["batch"], generator=torch.Generator().manual_seed(11))
    if per_item:  # --fixed_noise: one generator per item
        fix_batch_randomness(batch, 3)
    return common.prepare_inputs(batch, setup["components"], common.training_schedule(), 0.0)


def predict(setup, inputs) -> torch.Tensor:
    with torch.no_grad():
        return setup["unet"](inputs.noisy, inputs.pose_latent, inputs.timesteps, inputs.context)


@pytest.mark.parametrize("per_item", [False, True], ids=["batch-generator", "per-item-generators"])
def test_eq1_sum_of_three_branch_mses_with_own_noise_and_one_timestep(setup, per_item):
    from comfyui_diffbody.training import stage1_common as common

    inputs = make_inputs(setup, per_item)
    assert inputs.noisy.shape == (4, 3, 4, 8, 8)
    assert len(set(inputs.timesteps.tolist())) > 1  # the samples' timesteps differ (so sharing them means something)
    prediction = predict(setup, inputs)
    loss, terms = common.joint_loss(prediction, inputs.noise)
    problems = eq1_problems(setup["targets"], inputs, prediction, loss, terms)
    assert not problems, "\n".join(problems)


def test_the_eq1_detector_catches_shared_noise_split_timesteps_and_a_mean(setup):
    from comfyui_diffbody.training import stage1_common as common

    inputs = make_inputs(setup, False)
    prediction = predict(setup, inputs)
    abar = sd21_alphas_cumprod().float()

    def noised(target, noise, t):
        a = abar[t].view(-1, 1, 1, 1)
        return a.sqrt() * target + (1 - a).sqrt() * noise

    # one noise for the three branches
    shared_noise = inputs.noise[:, :1].expand_as(inputs.noise).clone()
    shared = dataclasses.replace(inputs, noise=shared_noise, noisy=torch.stack(
        [noised(setup["targets"][b], shared_noise[:, i], inputs.timesteps) for i, (b, _) in enumerate(BRANCH_FIELDS)],
        dim=1))
    found = eq1_problems(setup["targets"], shared, prediction, *common.joint_loss(prediction, shared_noise))
    assert sorted(p.split(" (")[0] for p in found) == ["depth and normal share their noise",
                                                       "depth and rgb share their noise",
                                                       "normal and rgb share their noise"], found

    # the rgb branch noised at its own timestep
    own_t = (inputs.timesteps + 137) % 1000
    split = dataclasses.replace(inputs, noisy=inputs.noisy.clone())
    split.noisy[:, 2] = noised(setup["targets"]["rgb"], inputs.noise[:, 2], own_t)
    found = eq1_problems(setup["targets"], split, prediction, *common.joint_loss(prediction, inputs.noise))
    assert found == [f"rgb: noised at t={own_t.tolist()}, not the sample's t={inputs.timesteps.tolist()}",
                     "rgb: the noisy latent is not sqrt(abar) x + sqrt(1-abar) eps of its target"], found

    # the mean of the three terms instead of their sum
    loss, terms = common.joint_loss(prediction, inputs.noise)
    found = eq1_problems(setup["targets"], inputs, prediction, loss / 3, terms)
    assert len(found) == 1 and found[0].startswith("loss ") and "not the sum" in found[0], found
