"""A tiny LLaVA 1.5 in the folder layout of `llava-hf/llava-1.5-7b-hf`, built offline.

The real folder holds `config.json`, `generation_config.json`, sharded `model-0000N-of-0000M.safetensors`
with `model.safetensors.index.json`, a Llama tokenizer (`tokenizer.json`, `tokenizer_config.json`),
`preprocessor_config.json` (CLIPImageProcessor), `processor_config.json` (patch size, feature
strategy) and `chat_template.json`. Its weights use the original llava-hf key names
(`language_model.model.*`, `language_model.lm_head.*`, `vision_tower.vision_model.*`,
`multi_modal_projector.*`), which newer transformers rename while loading; we write those names
ourselves so the tests load exactly what users download.

Nothing here touches the network: the tokenizer is a hand-made Llama-style BPE (byte fallback,
"▁" word marker) over printable ASCII plus a few merges. The folder writer, the tokenizer and the LLaVA 1.5
wiring are shared with the real-size factory (testing/realsize/stage0.py), which only changes the widths.
"""

from __future__ import annotations

import json
import os
import string

IMAGE_SIZE = 32
PATCH_SIZE = 8
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# LLaVA 1.5's conversation format: "USER: <image>\n{text} ASSISTANT:" (images before the text).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_WORDS = ("the", "a", "and", "in", "of", "with", "is", "person", "man", "woman", "wearing", "shirt",
          "standing", "sitting", "red", "blue", "white", "black", "jacket", "dress", "USER", "ASSISTANT")


def write_tiny_llava(model_dir: str, seed: int = 0) -> str:
    """Write a tiny LlavaForConditionalGeneration with its processor into `model_dir`; return it."""
    from transformers import CLIPVisionConfig, LlamaConfig

    tokenizer = llava_tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=32)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, vocab_size=padded_vocab_size(tokenizer), max_position_embeddings=1024,
                       rms_norm_eps=1e-5)
    model = llava15_model(tokenizer, vision, text, seed=seed)
    return write_llava_folder(model_dir, model, tokenizer, shards=2)


def write_llava_folder(model_dir: str, model, tokenizer, *, shards: int) -> str:
    """The llava-hf folder of `model` (a LlavaForConditionalGeneration) and `tokenizer`: processor files
    sized from the model's vision config, chat template, configs and sharded llava-hf weights."""
    vision = model.config.vision_config
    os.makedirs(model_dir, exist_ok=True)
    # One file per part, as llava-hf ships them (newer transformers fold them into processor_config.json).
    tokenizer.save_pretrained(model_dir)
    _clip_image_processor(vision.image_size).save_pretrained(model_dir)
    # As llava-hf's processor_config.json: the CLIP tower adds a CLS token that "default" drops again.
    _write_json(os.path.join(model_dir, "processor_config.json"),
                {"image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": vision.patch_size,
                 "processor_class": "LlavaProcessor", "vision_feature_select_strategy": "default"})
    _write_json(os.path.join(model_dir, "chat_template.json"), {"chat_template": CHAT_TEMPLATE})
    model.config.save_pretrained(model_dir)
    model.generation_config.save_pretrained(model_dir)
    _write_llava_hf_weights(model.state_dict(), model_dir, shards=shards)
    return model_dir


def _clip_image_processor(image_size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_convert_rgb=True, image_mean=CLIP_MEAN, image_std=CLIP_STD)


def llava_tokenizer(base_vocab_size: int | None = None):
    """The hand-made Llama-style tokenizer. base_vocab_size: pad the vocabulary with pieces no merge
    reaches up to that size before the added tokens (32000: <image> and <pad> get the real ids 32000
    and 32001); None: no padding."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import LlamaTokenizerFast

    vocab, merges = _llama_style_vocab(base_vocab_size)
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(content=" ", left=1)])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])])
    # Same ids relative to the vocabulary as the real model: <image> first after it, then <pad>.
    backend.add_special_tokens([AddedToken("<image>", special=True, normalized=False),
                                AddedToken("<pad>", special=True, normalized=False)])
    return LlamaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                              pad_token="<pad>", add_bos_token=True, add_eos_token=False, legacy=False,
                              padding_side="left", model_max_length=4096)


def _llama_style_vocab(size: int | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Llama's layout: <unk>, <s>, </s>, 256 byte tokens, then pieces (here: characters and merges, then
    up to `size` filler words "▁w<id>" that no merge builds, so tokenizing never yields them)."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += ["▁"] + [c for c in string.printable if not c.isspace()]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        merged = "▁"
        for char in word:
            if merged + char not in pieces:
                merges.append((merged, char))
                pieces.append(merged + char)
            merged += char
    pieces += [f"▁w{index}" for index in range(len(pieces), size or 0)]
    return {piece: i for i, piece in enumerate(pieces)}, merges


def padded_vocab_size(tokenizer) -> int:
    """The tokenizer's size rounded up to a multiple of 64, as the real model pads it (32002 -> 32064)."""
    return -(-len(tokenizer) // 64) * 64


def llava15_model(tokenizer, vision, text, *, seed: int, dtype=None):
    """A seeded LlavaForConditionalGeneration wired as LLaVA 1.5 (vision feature layer -2, "default"
    strategy, one image token per patch) from a CLIPVisionConfig and a LlamaConfig, with the tokenizer's
    special ids; built in `dtype` (None: torch's default)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from . import seeded_init

    text.bos_token_id, text.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    text.pad_token_id = tokenizer.pad_token_id
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         image_seq_length=(vision.image_size // vision.patch_size) ** 2,
                         pad_token_id=tokenizer.pad_token_id, vision_feature_layer=-2,
                         vision_feature_select_strategy="default")
    with seeded_init(seed, dtype):
        model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if dtype is not None:
        model.config.dtype = dtype  # config.json then names the weights' dtype, as llava-hf's does
    return model


def llava_hf_key(key: str) -> str:
    """A LlavaForConditionalGeneration state-dict key (any transformers >= 4.45) -> its name in the
    llava-hf checkpoint files."""
    prefix_map = (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
        ("model.vision_tower.", "vision_tower.vision_model."),
    )
    for new, old in prefix_map:
        if key.startswith(new):
            return old + key[len(new):]
    return key  # transformers < 4.52 already uses the checkpoint names


def _write_llava_hf_weights(state_dict, model_dir: str, *, shards: int) -> None:
    """Sharded safetensors plus `model.safetensors.index.json`, as save_pretrained writes big models."""
    from safetensors.torch import save_file

    tensors = {llava_hf_key(k): v.detach().contiguous() for k, v in state_dict.items()}
    names = sorted(tensors)
    per_shard = -(-len(names) // shards)
    weight_map, total = {}, 0
    for index in range(shards):
        filename = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[index * per_shard:(index + 1) * per_shard]}
        save_file(part, os.path.join(model_dir, filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, filename))
        total += sum(t.numel() * t.element_size() for t in part.values())
    _write_json(os.path.join(model_dir, "model.safetensors.index.json"),
                {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
