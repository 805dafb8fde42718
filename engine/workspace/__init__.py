"""Per-user files: models, quantized models, image sets and run records under one root, written atomically."""
from engine.workspace.store import KINDS, Entry, Workspace, default_root
from engine.workspace.tutorials import ensure_tutorials
from engine.workspace.uploads import Limits, WorkspaceError

__all__ = ["Workspace", "Entry", "KINDS", "Limits", "WorkspaceError", "default_root", "ensure_tutorials"]
