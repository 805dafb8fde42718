"""BackendChoice: the runtime a view's batch runs use, "numpy" | "onnxruntime" | "auto".

The options are the engine's (`engine.export.ort_backend.BACKENDS`, the CLI's `--backend`); the view
only holds the choice (`value`) and hands it to the engine API as `backend=`. Whether ONNX Runtime can
run a model, mode or profile is the engine's call: when it cannot, the engine's refusal (an EngineError
naming why and what to pick instead) reaches the view's status line like any other engine error.
"""
from __future__ import annotations

import ipywidgets as widgets

from engine.export.ort_backend import BACKENDS

LABELS = {"numpy": "NumPy engine", "onnxruntime": "ONNX Runtime", "auto": "auto (ORT where it can)"}
HELP = ("where FLOAT and the quantized runs execute: the NumPy engine; ONNX Runtime (FLOAT within 1e-4, INT "
        "identical with the onnxruntime profile; refused with the reason otherwise); or auto")


class BackendChoice(widgets.Dropdown):
    """A Dropdown of the engine's batch backends; `value` is what goes to the engine as `backend=`."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("layout", widgets.Layout(width="260px"))
        super().__init__(options=[(LABELS.get(b, b), b) for b in BACKENDS], value="numpy", description="Backend",
                         tooltip=HELP, **kwargs)
        self.add_class("qw-backend-choice")
