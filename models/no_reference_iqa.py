"""No-reference image-quality networks for the evaluation: CLIPIQA (piq's), MUSIQ and MANIQA (pyiqa's), from local
files.

Both libraries download their weights on construction; here the network is built without weights and given a
local file that models/files.py names (folder diffbody/metrics/), read safely (models/loading.py) and checked.

CLIPIQA (Wang et al. 2023, AAAI), piq's default: OpenAI CLIP RN50 (piq's copy of OpenAI's CLIP code), the image
at its own size with the attention pool's positional embedding left out (pos_embedding=False), CLIP's mean/std
normalisation, the softmax over the cosine logits of the prompt pair "Good photo." / "Bad photo."; the score is
the "Good photo." probability, 0..1, higher is better. Weights: timm/resnet50_clip.openai's
open_clip_model.safetensors (OpenAI's RN50 in open_clip's layout, which is OpenAI's key layout). piq loads its
own TorchScript copy of RN50.pt and a pickled token file from GitHub; both are replaced: the state dict goes
through piq's `build_model`, and the two prompts' CLIP token ids are constants (CLIPIQA_PROMPT_TOKENS, checked
against CLIP's tokenizer by tests/test_neural_metrics.py). pyiqa's "clipiqa" averages five prompt pairs instead;
the numbers differ from it.

MUSIQ (Ke et al. 2021, ICCV), pyiqa's default "musiq": trained on KonIQ-10k (musiq_koniq_ckpt-e95806b9.pth),
patch 32, the original resolution plus rescalings to longer side 224 and 384, input 0..1 (scaled to -1..1
inside); the score is the predicted MOS, about 0..100, higher is better. Only pyiqa's arch module is imported
(pyiqa installed with `pip install --no-deps pyiqa`: its declared requirements pull facexlib, opencv-python,
bitsandbytes, tensorboard...; the arch module itself needs only torch, scipy, cv2, yaml, huggingface_hub, which
ComfyUI's environment has).

MANIQA (Yang et al. 2022, CVPRW), pyiqa's default "maniqa": trained on KonIQ-10k (ckpt_koniq10k.pt), Swin
scale 0.8, Inception mean/std normalisation, 20 crops of 224 x 224 on a uniform grid (the image first enlarged
bilinearly to a short side of 225 when it is not longer), the score the weighted mean of the crops' patch
scores, about 0..1, higher is better. pyiqa's constructor builds its ViT-B/8 with
timm.create_model('vit_base_patch8_224', pretrained=True), an ImageNet download, before its own weights
replace every one of the ViT's; here the ViT is built without weights (timm.create_model with pretrained=False,
for the constructor's duration) and the MANIQA file, which holds the ViT's trained weights too, fills it. Needs
timm besides pyiqa's arch modules.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MissingDependency, WrongModelFile
from .loading import check_state_dict, read_state_dict

CLIPIQA_FILE = ("resnet50_clip.openai.safetensors", "diffbody_metrics")
MUSIQ_FILE = ("musiq_koniq_ckpt-e95806b9.pth", "diffbody_metrics")
MANIQA_FILE = ("ckpt_koniq10k.pt", "diffbody_metrics")
# CLIP's BPE ids of piq's CLIPIQA prompts: <start> good/bad photo . <end>, zero-padded to the context length
# as OpenAI's clip.tokenize does.
CLIPIQA_PROMPT_TOKENS = ((49406, 886, 1125, 269, 49407), (49406, 2103, 1125, 269, 49407))
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clipiqa(path: str):
    """piq's CLIPIQA with the weights of the local CLIP RN50 file, in eval mode on the CPU: (B, 3, H, W) in
    0..1 -> (B, 1) scores."""
    try:
        import piq
        from piq.feature_extractors import clip
    except ImportError as error:
        raise MissingDependency("CLIPIQA needs the piq package: pip install piq "
                                "(or pip install 'comfyui-diffbody[eval]')") from error
    expected = "OpenAI CLIP RN50 in open_clip's layout (timm/resnet50_clip.openai, open_clip_model.safetensors)"
    state = read_state_dict(path, expected=expected)
    name = Path(path).name
    if "visual.proj" in state or "visual.layer1.0.conv1.weight" not in state:
        raise WrongModelFile(f"DiffBody: '{name}' is not a ResNet CLIP (CLIPIQA's backbone is RN50).\n"
                             f"Expected {expected}.\n(file: {path})")
    # Batch-norm step counters are not used in eval mode and open_clip's files may leave them out.
    counters = {k for k in state if k.endswith("num_batches_tracked")}
    try:
        network = clip.build_model({k: v for k, v in state.items() if k not in counters})
    except (KeyError, RuntimeError) as error:  # build_model reads sizes from keys, load_state_dict checks the rest
        raise WrongModelFile(f"DiffBody: '{name}' does not have CLIP RN50's keys and shapes ({error}).\n"
                             f"Expected {expected}.\n(file: {path})") from error
    return _local_clipiqa(piq.CLIPIQA, network.float())


def _local_clipiqa(clipiqa_class, network):
    """piq.CLIPIQA around an already built CLIP: its constructor downloads the model and token file, so it is
    replaced by the same steps on local inputs; piq's own forward scores."""
    import torch

    class LocalCLIPIQA(clipiqa_class):
        def __init__(self):
            torch.nn.modules.loss._Loss.__init__(self)
            self.feature_extractor = network.eval().requires_grad_(False)
            tokens = torch.zeros(len(CLIPIQA_PROMPT_TOKENS), network.context_length, dtype=torch.long)
            for row, ids in enumerate(CLIPIQA_PROMPT_TOKENS):
                tokens[row, :len(ids)] = torch.tensor(ids)
            with torch.no_grad():
                anchors = network.encode_text(tokens).float()
            self.data_range = 1.0
            self.logit_scale = network.logit_scale.exp()
            self.register_buffer("anchors", anchors / anchors.norm(dim=-1, keepdim=True))
            self.register_buffer("default_mean", torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1))
            self.register_buffer("default_std", torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1))

    return LocalCLIPIQA().eval()


def load_musiq(path: str):
    """pyiqa's MUSIQ (KonIQ-10k) with the weights of the local file, in eval mode on the CPU: (B, 3, H, W) in
    0..1 -> (B, 1) predicted MOS."""
    try:
        from pyiqa.archs.musiq_arch import MUSIQ
    except ImportError as error:
        raise MissingDependency("MUSIQ needs pyiqa's network code: pip install --no-deps pyiqa (without --no-deps "
                                "pyiqa installs a second OpenCV and training tools)") from error
    network = MUSIQ(pretrained=False)  # pyiqa's "musiq" settings: KonIQ-10k's single-score head
    state = read_state_dict(path, expected="pyiqa's MUSIQ trained on KonIQ-10k (musiq_koniq_ckpt-e95806b9.pth)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # as pyiqa's clean_state_dict does
    check_state_dict(network.state_dict(), state, name=Path(path).name, path=path,
                     expected="pyiqa's MUSIQ trained on KonIQ-10k (musiq_koniq_ckpt-e95806b9.pth)")
    network.load_state_dict(state, strict=True)
    return network.eval()


def load_maniqa(path: str):
    """pyiqa's MANIQA (KonIQ-10k, scale 0.8) with the weights of the local file, in eval mode on the CPU:
    (B, 3, H, W) in 0..1 -> (B, 1) scores."""
    from unittest import mock

    try:
        import timm
        from pyiqa.archs import maniqa_arch
    except ImportError as error:
        raise MissingDependency("MANIQA needs timm and pyiqa's network code: pip install timm; "
                                "pip install --no-deps pyiqa") from error
    expected = "pyiqa's MANIQA trained on KonIQ-10k (ckpt_koniq10k.pt)"
    state = read_state_dict(path, expected=expected)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # as pyiqa's clean_state_dict does

    def create_without_download(name, **options):
        return timm.create_model(name, **{**options, "pretrained": False})

    # Only the arch module's own `timm` name is replaced, and only while it builds: no download, no ImageNet
    # weights that the file would overwrite anyway (the check below makes sure it does, for every tensor).
    with mock.patch.object(maniqa_arch, "timm", mock.Mock(create_model=create_without_download)):
        network = maniqa_arch.MANIQA(train_dataset="koniq", scale=0.8, pretrained=False)
    check_state_dict(network.state_dict(), state, name=Path(path).name, path=path, expected=expected)
    network.load_state_dict(state, strict=True)
    return network.eval()
