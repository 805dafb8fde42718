"""Save a session's customized model (and its quantized model) as new workspace entries, with lineage.

The files are written by the Session (`save_model` / `save_quantized`, the same as "Save as" to a path)
into a temporary folder and stored with `Workspace.save_bytes`: the model entry's `parent` is the
workspace model the session's model came from (when it came from the workspace), the quantized entry's
parent is the model entry saved with it. Both carry the session's edit journal in their metadata.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.npzfile import npz_bytes


def source_entry(workspace, source: str) -> str | None:
    """Name of the workspace `model` entry holding file `source` (a model's `.source`), or None."""
    if not source:
        return None
    try:
        p = Path(source).resolve()
    except (OSError, ValueError):
        return None
    for e in workspace.list("model"):
        where = workspace.path_of(e.name)        # the file of a one-file entry, else the entry's folder
        if p == where.resolve() or p.parent == where.resolve():
            return e.name
    return None


def save_as(session, workspace, text: str, *, quantized_only: bool = False) -> str:
    """What the editor's Save buttons do with the typed `text`; returns the status message.

    A path (or any text without a workspace) gets a new file (`save_model` / `save_quantized`, which
    refuse existing files and the original model); a plain name with a workspace connected becomes
    workspace entries (`save_to_workspace`).
    """
    text = text.strip()
    if not text:
        raise ValueError("type a path for the new model file (.npz), or a workspace entry name")
    if workspace is None or "/" in text or text.endswith(".npz"):
        # the engine's refusal says "pass overwrite=True", which no button here can do
        if Path(text).is_file() and (session.qmodel is not None or not quantized_only):
            raise EngineError(f"{text} exists: type a new file name (Save never replaces a file)")
        if Path(text).suffix.lower() != ".npz" and not Path(text).is_dir():
            # the file is an .npz archive whatever its name: saved.txt was written without a word, and then
            # looked like a text file to the user, the workspace's Upload and the CLI's -q (check_suffix)
            what = "a quantized model file" if quantized_only else "an engine model file"
            raise ValueError(f"{text}: Save writes {what}, an .npz archive: type a name ending in .npz "
                             f"(e.g. {Path(text).with_suffix('.npz')})")
        if quantized_only:
            return f"saved the quantized model to {session.save_quantized(text)}"
        return f"saved the customized model to {session.save_model(text)}"
    saved = save_to_workspace(session, workspace, text, quantized_only=quantized_only)
    return "saved into the workspace: " + ", ".join(map(entry_text, saved))


def entry_text(e) -> str:
    """"model 'x' (parent 'y')" for a saved workspace entry."""
    return f"{e.kind} {e.name!r} " + (f"(parent {e.parent!r})" if e.parent else "(no parent in the workspace)")


def save_to_workspace(session, workspace, name: str, *, quantized_only: bool = False) -> list:
    """Store the customized model as entry `name` (kind model) and, if the session has a quantized
    model, that as `name`-int8 (kind quantized, parent `name`). With `quantized_only`, only the
    quantized model, as `name`. Returns the new entries.

    Raises: WorkspaceError (bad or taken name), EngineError (nothing to save); nothing is stored then.
    """
    if quantized_only and session.qmodel is None:
        raise EngineError("this session has no quantized model to save")
    names = ([] if quantized_only else [name]) + (
        [name if quantized_only else f"{name}-int8"] if session.qmodel is not None else [])
    for n in names:                 # check every name first: never store half of the pair
        if workspace.exists(n):
            raise EngineError(f"workspace entry {n!r} exists; pick another name")
    source = session.original.source
    parent = source_entry(workspace, source)
    meta: dict[str, Any] = {"edits": session.edits(), "source_model": source}
    saved = []
    # the files' bytes in memory, not through a temporary folder: a kernel killed meanwhile left a
    # model-sized 'qw-save-*' folder in $TMPDIR that nothing reclaimed
    if not quantized_only:
        data = npz_bytes(session.model.to_arrays())
        saved.append(workspace.save_bytes(names[0], "model", {f"{names[0]}.npz": data}, source=source,
                                          method="customize", parent=parent, meta=meta))
        parent = names[0]
    if session.qmodel is not None:
        try:
            data = npz_bytes(session.qmodel.to_arrays())
            saved.append(workspace.save_bytes(names[-1], "quantized", {f"{names[-1]}.npz": data}, source=source,
                                              method=f"customize:{session.qmodel.method}", parent=parent,
                                              meta={**meta, "quantized": session.qmodel.describe()}))
        except BaseException:   # disk full, a name taken meanwhile, Ctrl-C: never keep half of the pair
            for e in saved:
                with contextlib.suppress(Exception):
                    workspace.delete(e.name, confirm=True)
            raise
    return saved
