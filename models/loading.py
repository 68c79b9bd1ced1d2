"""One way to read and write weights: safe file readers, one strict key/shape check, the pack's own format.

- `read_weights(path)` reads .safetensors/.sft with safetensors and every other weights file
  (.ckpt/.pt/.pth/.bin) with `torch.load(weights_only=True)`: nothing is ever unpickled, and a file that
  needs full unpickling is refused with the one-line command that converts it to safetensors.
  `read_state_dict` adds what most loaders want: a Lightning checkpoint's "state_dict" unwrapped, tensors only.
- `read_safetensors` reads the tensors of a safetensors file (optionally only those under a key prefix);
  `read_safetensors_header` its metadata and key names without reading a tensor.
- `check_state_dict(wanted, given, ...)`: every wanted key is there with its shape and nothing else is.
- The pack's own files (`save_pack_file` / `read_pack_metadata` / `read_pack_config`): safetensors whose
  metadata holds `diffbody_format` (FORMAT_KEY: which network), `format_version` (FORMAT_VERSION) and,
  for networks built from a config, `config` (the config's JSON).
"""

from __future__ import annotations

import os
import pickle
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .errors import MissingModelFile, WrongModelFile

if TYPE_CHECKING:
    import torch

SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
FORMAT_KEY = "diffbody_format"
FORMAT_VERSION = "1"
# Original (LDM / ComfyUI / A1111) single-file checkpoints keep their UNet under this key prefix.
LDM_UNET_PREFIX = "model.diffusion_model."


def _expected_and_file(path: str, expected: str | None) -> str:
    return (f"\nExpected {expected}." if expected else "") + f"\n(file: {path})"


# ---- readers -------------------------------------------------------------------------------------------

def read_weights(path: str, *, expected: str | None = None) -> dict[str, Any]:
    """The top-level dict of a weights file, as stored (a .ckpt may wrap its tensors in "state_dict").
    Raises MissingModelFile, or WrongModelFile naming `expected` (what the caller wanted) and the file."""
    import torch

    if not os.path.isfile(path):
        raise MissingModelFile(f"DiffBody: model file '{path}' does not exist.")
    if path.lower().endswith(SAFETENSORS_EXTENSIONS):
        return read_safetensors(path, expected=expected)
    name = os.path.basename(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WrongModelFile(_needs_conversion_message(path, e, expected)) from e
    except Exception as e:  # any unreadable byte soup raises its own type; the user needs one answer
        raise WrongModelFile(f"DiffBody: '{name}' could not be read as a weights file ({type(e).__name__}: {e})."
                             + _expected_and_file(path, expected)) from e
    if not isinstance(loaded, dict):
        raise WrongModelFile(f"DiffBody: '{name}' holds a {type(loaded).__name__}, not a state dict."
                             + _expected_and_file(path, expected))
    return loaded


def read_state_dict(path: str, *, expected: str | None = None) -> dict[str, "torch.Tensor"]:
    """All tensors of a weights file (see `read_weights`), a Lightning checkpoint's "state_dict" unwrapped."""
    import torch

    loaded = read_weights(path, expected=expected)
    if isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def _needs_conversion_message(path: str, error: Exception, expected: str | None) -> str:
    name = os.path.basename(path)
    target = os.path.splitext(path)[0] + ".safetensors"
    return (f"DiffBody: '{name}' could not be read safely: it contains pickled Python objects besides its "
            f"weights, and this pack only loads checkpoints with torch.load(weights_only=True) because "
            f"unpickling can run code.\n"
            f"If you trust where the file comes from, convert it once to safetensors and use that file:\n"
            f"  python -c \"import torch, safetensors.torch as st; "
            f"sd = torch.load(r'{path}', map_location='cpu', weights_only=False); sd = sd.get('state_dict', sd); "
            f"st.save_file({{k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}}, "
            f"r'{target}')\"\n(torch said: {str(error).splitlines()[0] if str(error) else type(error).__name__})"
            + (f"\nExpected {expected}." if expected else ""))


def read_safetensors(path: str, prefix: str = "", *, expected: str | None = None) -> dict[str, "torch.Tensor"]:
    """The tensors of a safetensors file on the CPU (only those under `prefix`, with it stripped)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except Exception as e:  # a truncated or foreign file: safetensors raises its own error types
        raise _unreadable_safetensors(path, e, expected) from e


def read_safetensors_header(path: str, *, expected: str | None = None) -> tuple[dict[str, str], list[str]]:
    """(metadata, key names) of a safetensors file, without reading a tensor."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise MissingModelFile(f"DiffBody: model file '{path}' does not exist.")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return dict(f.metadata() or {}), list(f.keys())
    except Exception as e:
        raise _unreadable_safetensors(path, e, expected) from e


def _unreadable_safetensors(path: str, error: Exception, expected: str | None) -> WrongModelFile:
    return WrongModelFile(f"DiffBody: '{os.path.basename(path)}' is not a readable safetensors file ({error})."
                          + _expected_and_file(path, expected))


# ---- the strict check ----------------------------------------------------------------------------------

def check_state_dict(wanted: Mapping[str, Any], given: Mapping[str, Any], *, name: str, expected: str,
                     path: str | None = None) -> None:
    """Refuse `given` unless it has exactly `wanted`'s keys, each with its shape (values: tensors or shapes).
    `name`: the file (or thing) in the message; `expected`: what it should have been, in words."""
    problems = state_dict_problems(wanted, given)
    if problems:
        where = f"\n(file: {path})" if path else ""
        raise WrongModelFile(f"DiffBody: '{name}' does not have the expected keys and shapes: {problems}.\n"
                             f"Expected {expected} (its exact keys and shapes).{where}")


def state_dict_problems(wanted: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """'' when `given` has exactly `wanted`'s keys and shapes, else the differences in words."""
    wanted_shapes = {k: _shape(v) for k, v in wanted.items()}
    given_shapes = {k: _shape(v) for k, v in given.items()}
    missing = [k for k in wanted_shapes if k not in given_shapes]
    unexpected = [k for k in given_shapes if k not in wanted_shapes]
    wrong = [f"{k} {given_shapes[k]} instead of {shape}" for k, shape in wanted_shapes.items()
             if k in given_shapes and given_shapes[k] != shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{len(items)} {label} tensor(s): {', '.join(items[:3])}{more}")
    return "; ".join(parts)


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


# ---- the pack's own format -----------------------------------------------------------------------------

class PackConfig:
    """Mixin for the dataclass configs stored as JSON in a pack file's `config` metadata (tuples as lists)."""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        """The config of `values` (as `to_dict` writes it); ValueError names any field this pack does not know."""
        from dataclasses import fields

        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), sort_keys=True)



def save_pack_file(module: "torch.nn.Module", path: str, fmt: str, *, config_json: str | None = None,
                   extra_metadata: Mapping[str, str] | None = None) -> str:
    """Write `module.state_dict()` (CPU, contiguous, dtypes as they are) to `path` in the pack's format
    `fmt`, with `config_json` as the `config` metadata when given; returns `path`."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    metadata = {FORMAT_KEY: fmt, "format_version": FORMAT_VERSION}
    if config_json is not None:
        metadata["config"] = config_json
    metadata.update(extra_metadata or {})
    save_file(tensors, path, metadata=metadata)
    return path


def read_pack_metadata(path: str, fmt: str, expected: str,
                       describe_foreign: Callable[[str | None, Iterable[str]], str]) -> dict[str, str]:
    """The metadata of a file in the pack's format `fmt` (`diffbody_format` and `format_version` checked).
    `describe_foreign(found format or None, key names)` says in words what a file of another kind is."""
    if not os.path.isfile(path):
        raise MissingModelFile(f"DiffBody: model file '{path}' does not exist.\nExpected {expected}.")
    name = os.path.basename(path)
    if not path.lower().endswith(SAFETENSORS_EXTENSIONS):
        raise WrongModelFile(f"DiffBody: '{name}' is not a .safetensors file; DiffBody's own weights are "
                             f"safetensors.\nExpected {expected}.\n(file: {path})")
    metadata, keys = read_safetensors_header(path, expected=expected)
    found = metadata.get(FORMAT_KEY)
    if found != fmt:
        raise WrongModelFile(f"DiffBody: '{name}' is {describe_foreign(found, keys)}.\n"
                             f"Expected {expected}.\n(file: {path})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise WrongModelFile(f"DiffBody: '{name}' has format_version {metadata.get('format_version')!r}; this "
                             f"pack reads version {FORMAT_VERSION}. Update the pack (or re-export the file).\n"
                             f"(file: {path})")
    return metadata


def read_pack_config(metadata: Mapping[str, str], config_cls, path: str, expected: str):
    """`config_cls.from_dict` of the `config` JSON in a pack file's metadata, or WrongModelFile."""
    import json

    try:
        return config_cls.from_dict(json.loads(metadata["config"]))
    except (ValueError, TypeError, KeyError) as e:
        raise WrongModelFile(f"DiffBody: '{os.path.basename(path)}' has no usable network config in its metadata "
                             f"({type(e).__name__}: {e}).\nExpected {expected}.\n(file: {path})") from e


# ---- transformers folders ------------------------------------------------------------------------------

def check_all_weights_loaded(info: dict, model_dir: str, network: str) -> None:
    """transformers fills weights it could not find with random values and only warns: refuse that.
    `info` is from_pretrained's loading info (output_loading_info=True)."""
    missing = sorted(info.get("missing_keys", ()))
    mismatched = sorted(str(k[0]) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        names = ", ".join((missing + mismatched)[:5])
        raise WrongModelFile(
            f"DiffBody: the weights in '{model_dir}' do not fit the {network} its config.json describes "
            f"({len(missing)} missing, {len(mismatched)} of another shape; e.g. {names}).")


def read_json_object(path: str) -> dict | None:
    """A JSON file's top-level object (a model folder's config.json, model_index.json), or None when the
    file is absent, unreadable or not an object: callers then say which file the folder lacks."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
