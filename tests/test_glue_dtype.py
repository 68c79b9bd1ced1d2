"""`dtype: auto` on the pack's diffusion networks follows ComfyUI's own UNet dtype choice, its command-line
flags included: on a CPU, ComfyUI started with --bf16-unet holds SDXL in bf16, and the pack's stage-1 UNet,
multi-prior ControlNet and estimators must halve with it, or the full workflow does not fit in 24 GiB (the
real-size run found this: the server was killed at 21.8 GB). ComfyUI runs in a subprocess per flag set."""

from __future__ import annotations

import pytest

CHECK = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
for flag in sys.argv[2:]:
    setattr(comfy.cli_args.args, flag, True)
from comfyui_diffbody.nodes import glue
print("RESULT " + json.dumps({choice: str(glue.preferred_dtype(choice)) for choice in ("auto", "float16")}))
'''


@pytest.mark.parametrize("flags, auto", [((), "torch.float32"), (("bf16_unet",), "torch.bfloat16"),
                                         (("fp16_unet",), "torch.float16"), (("fp8_e4m3fn_unet",), "torch.float32")])
def test_auto_dtype_follows_comfyuis_unet_flags_on_the_cpu(tmp_path, flags, auto):
    from comfy_harness import run_comfy_script

    result = run_comfy_script(CHECK, tmp_path, *flags, label=f"preferred_dtype with {flags or 'no flags'}")
    assert result == {"auto": auto, "float16": "torch.float16"}  # an explicit choice stays the user's
