"""The pack's error classes: messages meant for the person using the pack, not for a developer.

Every floor raises these; they live on the lowest floor so that nothing needs to import upward to catch
them. No torch, no ComfyUI: importing this is free.
"""

from __future__ import annotations


class DiffBodyError(Exception):
    """Base class for errors whose message is meant for the person using the pack."""


class MissingModelFile(DiffBodyError):
    """A model file is not where the pack looks for it."""


class WrongModelFile(DiffBodyError):
    """A file exists but is not the network the caller asked for."""


class MissingDependency(DiffBodyError):
    """An optional Python package needed by the chosen option is not installed."""


class MissingModelFiles(MissingModelFile):
    """Some of a command's model files are missing: the message lists each with where to get it."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing
