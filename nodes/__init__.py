"""ComfyUI node registration. Node modules must stay cheap to import (no torch at module level)."""

from . import canvas, compare, group, metrics, priors, stage0, stage1, stage2

_NODE_MODULES = (stage0, priors, stage1, stage2, canvas, group, compare, metrics)

NODE_CLASS_MAPPINGS = {name: cls for module in _NODE_MODULES for name, cls in module.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {name: cls.DISPLAY_NAME for name, cls in NODE_CLASS_MAPPINGS.items()}
