"""Evaluation (floor 5): the paper's Table-1 degradations applied to high-quality photos, each method's
restorations, full- and no-reference metrics, and the report (`python -m comfyui_diffbody evaluate`)."""
