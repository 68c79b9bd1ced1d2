"""Test-only ComfyUI nodes, linked into custom_nodes/ by the test harness and nowhere else.

Every module in this folder that defines NODE_CLASS_MAPPINGS contributes its nodes (all named
"TestOnly..."), so each stand-in lives beside the explanation of why it is needed.
"""

import importlib
import pkgutil

NODE_CLASS_MAPPINGS = {}
for _module_info in pkgutil.iter_modules(__path__):
    _module = importlib.import_module(f"{__name__}.{_module_info.name}")
    NODE_CLASS_MAPPINGS.update(getattr(_module, "NODE_CLASS_MAPPINGS", {}))
