"""The engine's error types: one base class so the UI can catch everything it should show."""
from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on bad input or unsupported models."""


class CfgError(EngineError, ValueError):
    """A `.cfg` file (or a model file's embedded cfg) is malformed. The message names file:line [section]."""


class WeightsError(CfgError):
    """A `.weights` (or engine model) file does not match its cfg or holds invalid values."""


class ImageError(EngineError, ValueError):
    """An image cannot be decoded or is unusable (corrupt, too large, empty)."""


class UnsupportedError(EngineError, NotImplementedError):
    """Valid Darknet that this engine does not implement."""


class DownloadError(EngineError, OSError):
    """A model download failed or its checksum did not match."""


class EditsWouldBeLost(EngineError):
    """Switching the session's quantized model (or model) would discard edits; `applied` and
    `undone` (still redoable) count them. Pass drop_edits=True to switch anyway."""

    def __init__(self, message: str, applied: int, undone: int) -> None:
        super().__init__(message)
        self.applied, self.undone = applied, undone

    @property
    def count(self) -> int:
        return self.applied + self.undone
