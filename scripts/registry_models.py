"""Write pyproject.toml's `[tool.comfy] Models` (the Comfy Registry's list of the model files a pack uses) from the
catalogue in models/files.py, so the two cannot drift apart.

    python scripts/registry_models.py           # rewrites the Models array in pyproject.toml
    python scripts/registry_models.py --check   # exit 1 if pyproject.toml's Models differ from the catalogue

Only the lines between the BEGIN/END marker comments in pyproject.toml are written; tests/test_registry.py
fails when they differ from `models.files.registry_models()`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from comfyui_diffbody.models.files import registry_models

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
BEGIN = "# BEGIN Models: written by scripts/registry_models.py from models/files.py; do not edit by hand."
END = "# END Models"
_BLOCK = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.S)


def models_block(entries: list[dict[str, str]]) -> str:
    """The marked TOML lines: one inline table per file (JSON strings are valid TOML basic strings)."""
    lines = [BEGIN, "Models = ["]
    lines += [f"    {{ location = {json.dumps(e['location'])}, model_url = {json.dumps(e['model_url'])} }},"
              for e in entries]
    return "\n".join(lines + ["]", END])


def with_models(pyproject_text: str, entries: list[dict[str, str]]) -> str:
    """`pyproject_text` with its marked block replaced by `entries`."""
    if len(_BLOCK.findall(pyproject_text)) != 1:
        raise SystemExit(f"pyproject.toml needs exactly one block from '{BEGIN}' to '{END}' in [tool.comfy]")
    return _BLOCK.sub(lambda _: models_block(entries), pyproject_text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if pyproject.toml is not up to date")
    args = parser.parse_args(argv)
    current = PYPROJECT.read_text()
    wanted = with_models(current, registry_models())
    if args.check:
        if wanted != current:
            print("pyproject.toml's [tool.comfy] Models differ from models/files.py: run scripts/registry_models.py",
                  file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        PYPROJECT.write_text(wanted)
        print(f"wrote {len(registry_models())} Models entries into {PYPROJECT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
