"""The engine's error types: one hierarchy under EngineError, so `except EngineError` catches every
refusal the UI or CLI should show (and nothing else). Every message names what was refused: the
file (and line / array / member), the layer, or the argument, and what was expected.

    EngineError
      CfgError (ValueError) > WeightsError > RecordError     bad .cfg / weights, model, quantized model / run record
      ImageError (ValueError)                                 an image cannot be used
      ArgumentError (ValueError)                              a bad argument to an API call or CLI option
        UnknownNameError (KeyError)                           a name no registry knows (calibration method...)
      EditError (ValueError)                                  a refused edit (the session is unchanged)
      FileError (OSError)                                     a file cannot be written/read where asked
      UnsupportedError (NotImplementedError)                  valid Darknet this engine does not implement
      DownloadError (OSError)                                 a download failed or its checksum did not match
      EditsWouldBeLost                                        a switch would discard edits
      WorkspaceError (ValueError, in engine.workspace)        a refused workspace operation

    Cancelled (not an EngineError)                            long work stopped at the caller's request

    EngineWarning (UserWarning)                               accepted, but probably not what was meant
"""
from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on bad input or unsupported models."""


class CfgError(EngineError, ValueError):
    """A `.cfg` file (or a model file's embedded cfg) is malformed. The message names file:line [section]."""


class WeightsError(CfgError):
    """A `.weights` (or engine model) file does not match its cfg or holds invalid values."""


class ImageError(EngineError, ValueError):
    """An image cannot be decoded or is unusable (corrupt, too large, empty)."""


class RecordError(WeightsError):
    """A run record is truncated, malformed or holds implausible values. The message names the file."""


class ArgumentError(EngineError, ValueError):
    """A bad argument to an engine call (wrong type, out of range, unknown choice); names the argument."""


class UnknownNameError(ArgumentError, KeyError):
    """A name a registry does not know (calibration method, layer kind); the message lists the known ones."""

    def __str__(self) -> str:   # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class EditError(EngineError, ValueError):
    """An edit was refused (bad values, region, layer or tensor); nothing was changed."""


class FileError(EngineError, OSError):
    """A file cannot be written or read where asked: missing folder, a folder/FIFO/device in the way,
    permissions, a symlink leading out of the workspace. The message names the path."""


class UnsupportedError(EngineError, NotImplementedError):
    """Valid Darknet that this engine does not implement."""


class DownloadError(EngineError, OSError):
    """A model download failed or its checksum did not match."""


class Cancelled(Exception):
    """Long work stopped between two units at the caller's request: its `cancel` hook answered True or its
    progress callback raised this (a widget's Cancel, `qwidgets._long_task`). Nothing the work would have
    returned or changed was changed. Not an EngineError: an `except EngineError` that turns a refusal into
    a note must not swallow a cancel."""


class EngineWarning(UserWarning):
    """Input the engine accepts but that is probably a mistake (a names file that does not match the
    model's classes); `warnings.warn` with it, and the CLI prints it as one `warning:` line."""


class EditsWouldBeLost(EngineError):
    """Switching the session's quantized model (or model) would discard edits; `applied` and
    `undone` (still redoable) count them. Pass drop_edits=True to switch anyway."""

    def __init__(self, message: str, applied: int, undone: int) -> None:
        super().__init__(message)
        self.applied, self.undone = applied, undone

    @property
    def count(self) -> int:
        return self.applied + self.undone
