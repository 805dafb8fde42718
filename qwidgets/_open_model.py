"""What `Session.set_model` is given for a workspace model entry or a typed path, and the status text after.

A model entry is stored either as one engine `.npz` (the entry's path is that file) or as a folder with a
Darknet `.cfg`, its `.weights` and maybe a `.names` file. `Session.set_model` takes a Model or a path
`engine.load` reads alone, or a loader it calls only once the switch is allowed; the controls hand it
`lambda: model_source(...)`, so a switch refused because of edits reads no file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import engine
from engine.model import Model
from qwidgets._confirm import dropped_text

CFG, WEIGHTS, NAMES, NPZ = ".cfg", ".weights", ".names", ".npz"


def model_source(path: str | Path, files: Sequence[str] | None = None) -> Model | Path:
    """A Model or a path for `Session.set_model`.

    `path`: an engine `.npz`; a `.cfg` with a `.weights` beside it (same stem, else the folder's only
    one); or a folder holding one `.npz`, or one `.cfg` + one `.weights` (+ an optional `.names`).
    `files`: the folder's files when known (a workspace entry's `files`), else the folder is listed.
    Raises: ValueError naming the path and what was expected; CfgError / WeightsError from engine.load.
    """
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == NPZ:
        return p
    if p.is_file() and p.suffix == CFG:
        beside = p.with_suffix(WEIGHTS)
        others = sorted(p.parent.glob(f"*{WEIGHTS}"))
        weights = beside if beside.is_file() else (others[0] if len(others) == 1 else None)
        if weights is None:
            raise ValueError(f"{p}: a cfg needs its weights: put {beside.name} beside it (found "
                             f"{len(others)} .weights files there), or open an engine .npz")
        return engine.load(p, weights=weights)
    if p.is_dir():
        return _from_folder(p, sorted(files) if files is not None else sorted(f.name for f in p.iterdir()))
    raise ValueError(f"{p}: expected an engine model (.npz), a Darknet .cfg with its .weights beside it, "
                     "or a folder holding them")


def _from_folder(folder: Path, files: list[str]) -> Model | Path:
    def one(ext: str) -> str | None:
        found = [f for f in files if f.endswith(ext)]
        if len(found) > 1:
            raise ValueError(f"{folder}: {len(found)} {ext} files ({', '.join(found)}); expected one")
        return found[0] if found else None
    npz, cfg, weights, names = one(NPZ), one(CFG), one(WEIGHTS), one(NAMES)
    if npz is not None and cfg is None:
        return folder / npz
    if cfg is None or weights is None:
        raise ValueError(f"{folder}: holds {', '.join(files) or 'nothing'}; expected an engine .npz, or a "
                         ".cfg and its .weights")
    return engine.load(folder / cfg, weights=folder / weights, names=folder / names if names else None)


def opened_text(session, dropped: int = 0) -> str:
    """What the session opened: 'yolov3-tiny, 24 layers, input 3x320x320, FLOAT mode; dropped 1 edit',
    with how to get HYBRID / INT back when no quantized model came with it."""
    shape = "x".join(map(str, session.model.input_shape))
    text = (f"{session.model.graph.name}, {session.num_layers} layers, input {shape}, {session.mode.upper()} mode"
            f"{dropped_text(dropped, float_kept=False)}")
    return text + (". Load a quantized model made for it for HYBRID / INT" if session.qmodel is None else "")
