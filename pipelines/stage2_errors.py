"""The error of stage 2's pipeline pieces, in a module of its own so that the sampler (stage2.py) and the
pieces it uses (colour_attention.py, union_control.py) can all raise it without importing each other."""

from __future__ import annotations

from ..models.errors import DiffBodyError


class Stage2Error(DiffBodyError, ValueError):
    """Stage-2 inputs or components that do not fit together."""
