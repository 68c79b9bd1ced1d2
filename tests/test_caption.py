"""LLaVA captioning (stage 0): loading a local folder offline, captions, caption editing, errors."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
import torch

from comfyui_diffbody.models.devices import concrete_dtype
from comfyui_diffbody.models.errors import MissingDependency, MissingModelFile, WrongModelFile
from comfyui_diffbody.models.llava import check_llava_folder, load_llava
from comfyui_diffbody.pipelines.image import BadImage
from comfyui_diffbody.pipelines.caption import (
    DEFAULT_PROMPT,
    LlavaCaptioner,
    caption_images,
    clean_caption,
    combine_caption,
    conversation_text,
)
from comfyui_diffbody.testing.tiny.llava import llava_hf_key, write_tiny_llava


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> str:
    return write_tiny_llava(str(tmp_path_factory.mktemp("llm") / "llava-1.5-7b-hf"), seed=0)


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_dir):
    return load_llava(tiny_llava_dir)


@pytest.fixture
def offline_hub_and_no_sockets(monkeypatch):
    """HF_HUB_OFFLINE=1, and any attempt to open a connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _images(batch: int = 2, height: int = 48, width: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch, 3, height, width, generator=generator)


def _copy_of(folder: str, tmp_path) -> str:
    target = str(tmp_path / "llava-copy")
    shutil.copytree(folder, target)
    return target


def test_tiny_folder_has_the_llava_hf_layout(tiny_llava_dir):
    names = set(os.listdir(tiny_llava_dir))
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
            "chat_template.json"} <= names
    with open(os.path.join(tiny_llava_dir, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    assert set(weight_map.values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in weight_map}
    assert prefixes == {"language_model.model", "language_model.lm_head", "vision_tower.vision_model",
                        "multi_modal_projector.linear_1", "multi_modal_projector.linear_2"}


def test_loads_offline_with_every_weight_from_the_files(tiny_llava_dir, offline_hub_and_no_sockets):
    from safetensors.torch import load_file

    model, processor = load_llava(tiny_llava_dir, dtype="float32")
    stored = {}
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        stored.update(load_file(os.path.join(tiny_llava_dir, shard)))
    loaded = {llava_hf_key(k): v for k, v in model.state_dict().items()}
    assert set(loaded) == set(stored)
    for key, value in stored.items():
        assert torch.equal(loaded[key], value), key
    assert not model.training
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert processor.patch_size == 8


def test_captions_a_batch_offline(tiny_llava, offline_hub_and_no_sockets):
    model, processor = tiny_llava
    captions = caption_images(model, processor, _images(2), max_new_tokens=12)
    assert len(captions) == 2
    assert all(isinstance(c, str) for c in captions)
    assert all(c == c.strip() and "\n" not in c and "ASSISTANT:" not in c for c in captions)


def test_same_seed_same_caption_and_batch_position_does_not_matter(tiny_llava):
    model, processor = tiny_llava
    images = _images(2)
    first = caption_images(model, processor, images, seed=7, do_sample=True, max_new_tokens=16)
    again = caption_images(model, processor, images, seed=7, do_sample=True, max_new_tokens=16)
    alone = caption_images(model, processor, images[1:], seed=7, do_sample=True, max_new_tokens=16)
    other_seed = caption_images(model, processor, images, seed=8, do_sample=True, max_new_tokens=16)
    assert first == again
    assert alone == first[1:]
    assert other_seed != first


def test_seeded_captioning_leaves_the_global_random_state_alone(tiny_llava):
    model, processor = tiny_llava
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    caption_images(model, processor, _images(1), seed=5, do_sample=True, max_new_tokens=4)
    assert torch.equal(torch.rand(4), expected)


def test_greedy_caption_is_the_decoded_answer_without_the_prompt(tiny_llava):
    model, processor = tiny_llava
    image = _images(1)
    caption = caption_images(model, processor, image, max_new_tokens=10)[0]
    # Redo the generation by hand on the same padded image to see what the cleaning removed.
    from comfyui_diffbody.pipelines.caption import _model_inputs

    inputs = _model_inputs(processor, image[0], conversation_text(processor, DEFAULT_PROMPT), model.device, model.dtype)
    full = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    answer = processor.tokenizer.decode(full[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert caption == clean_caption(answer)
    whole = processor.tokenizer.decode(full[0], skip_special_tokens=True)
    assert "ASSISTANT:" in whole and "ASSISTANT:" not in caption


def test_prompt_uses_the_llava_conversation_format(tiny_llava):
    _, processor = tiny_llava
    assert conversation_text(processor, "Who is this?") == "USER: <image>\nWho is this? ASSISTANT:"


def test_progress_is_called_after_each_image(tiny_llava):
    model, processor = tiny_llava
    calls = []
    caption_images(model, processor, _images(3), max_new_tokens=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_an_exception_in_progress_stops_the_run(tiny_llava, monkeypatch):
    model, processor = tiny_llava
    generated = []
    original = model.generate

    def counting_generate(*args, **kwargs):
        generated.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting_generate)

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        caption_images(model, processor, _images(3), max_new_tokens=2, progress=cancel)
    assert len(generated) == 1


def test_captioner_moves_and_captions(tiny_llava_dir):
    captioner = LlavaCaptioner.load(tiny_llava_dir, dtype="bfloat16")
    assert captioner.model.dtype == torch.bfloat16 and not captioner.quantized
    assert captioner.size_bytes() == sum(p.numel() * 2 for p in captioner.model.parameters()) + sum(
        b.numel() * b.element_size() for b in captioner.model.buffers())
    assert captioner.to("cpu") is captioner and captioner.device.type == "cpu"
    assert len(captioner.caption(_images(1), max_new_tokens=3)) == 1


@pytest.mark.parametrize("mode, expected", [
    ("append", "A man in a red coat. studio lighting"),
    ("prepend", "studio lighting, A man in a red coat."),
    ("override", "studio lighting"),
])
def test_combine_caption_modes(mode, expected):
    assert combine_caption("A man in a red coat.", "  studio lighting ", mode) == expected


def test_combine_caption_edge_cases():
    assert combine_caption("a man", "smiling", "append") == "a man, smiling"
    assert combine_caption("A man.", "", "override") == "A man."
    assert combine_caption("", "a woman", "append") == "a woman"
    with pytest.raises(ValueError, match="mode"):
        combine_caption("a", "b", "replace")


def test_clean_caption():
    assert clean_caption(" A woman in a blue dress.\n She stands on a beach. She") == \
        "A woman in a blue dress. She stands on a beach."
    assert clean_caption("A man sitting USER: what else?") == "A man sitting"
    assert clean_caption('"A child running"') == "A child running"


def test_not_a_llava_folder_is_a_wrong_model_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(WrongModelFile) as error:
        load_llava(str(tmp_path))
    assert str(tmp_path) in str(error.value)
    assert "model_type \"llava\"" in str(error.value) and "'llama'" in str(error.value)


def test_folder_without_config_is_a_wrong_model_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(WrongModelFile, match="no readable config.json"):
        load_llava(str(tmp_path))


def test_missing_processor_files_are_named(tiny_llava_dir, tmp_path):
    folder = _copy_of(tiny_llava_dir, tmp_path)
    os.remove(os.path.join(folder, "processor_config.json"))
    with pytest.raises(WrongModelFile, match="processor_config.json"):
        check_llava_folder(folder)


def test_missing_shard_is_reported(tiny_llava_dir, tmp_path):
    folder = _copy_of(tiny_llava_dir, tmp_path)
    os.remove(os.path.join(folder, "model-00002-of-00002.safetensors"))
    with pytest.raises(MissingModelFile, match="model-00002-of-00002.safetensors"):
        check_llava_folder(folder)


def test_weights_of_another_network_are_refused(tiny_llava_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy_of(tiny_llava_dir, tmp_path)
    dropped = "multi_modal_projector.linear_1.weight"
    index_path = os.path.join(folder, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    shard = os.path.join(folder, index["weight_map"].pop(dropped))
    with open(index_path, "w") as f:
        json.dump(index, f)
    tensors = load_file(shard)
    del tensors[dropped]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(WrongModelFile, match="missing"):
        load_llava(folder)


def test_absent_folder_is_a_missing_model_file(tmp_path):
    with pytest.raises(MissingModelFile) as error:
        load_llava(str(tmp_path / "llava-1.5-7b-hf"))
    assert "huggingface.co/llava-hf/llava-1.5-7b-hf" in str(error.value)


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantization_on_cpu_needs_a_gpu(tiny_llava_dir, quantization):
    with pytest.raises(MissingDependency, match="GPU"):
        load_llava(tiny_llava_dir, quantization=quantization, device="cpu")


def test_bad_options_are_rejected(tiny_llava_dir, tiny_llava):
    with pytest.raises(ValueError, match="dtype"):
        load_llava(tiny_llava_dir, dtype="float8")
    with pytest.raises(ValueError, match="quantization"):
        load_llava(tiny_llava_dir, quantization="2bit")
    with pytest.raises(BadImage, match="batch, 3, height, width"):
        caption_images(*tiny_llava, torch.rand(3, 16, 16))


def test_auto_dtype_follows_the_device():
    assert concrete_dtype("auto", "cpu") == "float32"
    assert concrete_dtype("auto", "cuda:1") == "float16"
    assert concrete_dtype("auto", torch.device("xpu")) == "bfloat16"
    assert concrete_dtype("bfloat16", "cpu") == "bfloat16"
