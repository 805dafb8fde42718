"""WeightEditor: view and edit one kernel of one layer, bulk edits, rerun with a diff, undo / redo, save.

The kernel `weights[filter, channel]` (k x k) is a grid of `FloatText` (FLOAT mode: the float cfg
weights) or `IntText` (HYBRID / INT: the int8 `w_q`). Apply writes the grid with
`session.edit_weights`; Scale / Zero filter and Prune are `scale_filter` / `zero_filter` / `prune`.
After each edit the layer is re-executed on the same inputs (`session.rerun()`): the panel shows
the SQNR / max |diff| / changed values of after vs before and an error heat map. If the session is
not at the edited layer it first runs to it, so the diff is always "this layer, before vs after".
Errors (an int8 value of 300, NaN, a bad path) go to `status`.
"""
from __future__ import annotations

import html
from typing import Callable

import ipywidgets as widgets
import numpy as np
import traitlets

from engine.edits import Edit
from qwidgets._encode import heatmap_png
from qwidgets._errors import shows_errors

CELL = widgets.Layout(width="82px")


class WeightEditor(widgets.VBox):
    """Kernel grid + bulk edits for layer `layer` of a Session (-1 or a weightless layer: disabled)."""

    layer = traitlets.Int(-1, help="index of the edited layer (-1 = none)")
    filter = traitlets.Int(0, help="output filter (row of the weight tensor)")
    channel = traitlets.Int(0, help="input channel within the filter")
    target = traitlets.Unicode("float", help="'float' (cfg weights) or 'int8' (w_q), from the session mode")
    last_diff = traitlets.Dict(help="after vs before of the last rerun: sqnr_db, max_abs, changed, layer")
    edits = traitlets.List(traitlets.Unicode(), help="summaries of the applied edits (session journal)")
    revision = traitlets.Int(0, help="bumped after every edit / undo / redo (other views refresh)")
    status = traitlets.Unicode("", help="last message shown to the user")

    def __init__(self, session, **kwargs) -> None:
        self._session = session
        self._w: np.ndarray | None = None
        self._title = widgets.HTML("<b>weights</b>: select a convolutional layer")
        self._filter = widgets.IntSlider(description="filter", min=0, max=0, continuous_update=False)
        self._channel = widgets.IntSlider(description="channel", min=0, max=0, continuous_update=False)
        self.cells: list[widgets.Widget] = []
        self._grid = widgets.GridBox(layout=widgets.Layout(grid_gap="2px"))
        b = widgets.Button
        self.apply_button = b(description="Apply", icon="check", button_style="primary",
                              tooltip="write the grid into the weights and rerun the layer")
        self._factor = widgets.FloatText(value=0.5, description="factor", layout=widgets.Layout(width="160px"))
        self.scale_button = b(description="Scale filter", icon="arrows-v")
        self.zero_button = b(description="Zero filter", icon="eraser")
        self._prune = widgets.BoundedFloatText(value=10.0, min=0.0, max=100.0, step=1.0, description="prune %",
                                               layout=widgets.Layout(width="160px"))
        self.prune_button = b(description="Prune layer", icon="scissors")
        self.undo_button = b(description="Undo", icon="undo")
        self.redo_button = b(description="Redo", icon="repeat")
        self._path = widgets.Text(placeholder="/path/to/new-model.npz", description="Save as")
        self.save_model_button = b(description="Save model", icon="save")
        self.save_quantized_button = b(description="Save quantized", icon="save")
        self._diff = widgets.HTML()
        self.heatmap = widgets.Image(format="png")
        self._journal = widgets.HTML()
        self._status = widgets.Label()
        super().__init__(children=[
            self._title, widgets.HBox([self._filter, self._channel]), self._grid,
            widgets.HBox([self.apply_button, self.undo_button, self.redo_button]),
            widgets.HBox([self._factor, self.scale_button, self.zero_button, self._prune, self.prune_button]),
            self._diff, self.heatmap, self._journal,
            widgets.HBox([self._path, self.save_model_button, self.save_quantized_button]), self._status], **kwargs)
        self.add_class("qw-weight-editor")
        traitlets.link((self, "filter"), (self._filter, "value"))
        traitlets.link((self, "channel"), (self._channel, "value"))
        traitlets.dlink((self, "status"), (self._status, "value"))
        for button, handler in [(self.apply_button, self._on_apply_click), (self.scale_button, self._on_scale_click),
                                (self.zero_button, self._on_zero_click), (self.prune_button, self._on_prune_click),
                                (self.undo_button, self._on_undo_click), (self.redo_button, self._on_redo_click),
                                (self.save_model_button, self._on_save_model_click),
                                (self.save_quantized_button, self._on_save_quantized_click)]:
            button.on_click(handler)
        self.refresh()

    # ------------------------------------------------------------------ display
    def _default_target(self) -> str:
        s = self._session
        has_int = s.qmodel is not None and self.layer in s.qmodel.layers
        return "int8" if s.mode != "float" and has_int else "float"

    @traitlets.observe("layer")
    def _on_layer_change(self, _change) -> None:
        self.refresh()

    @traitlets.observe("filter", "channel")
    def _on_kernel_change(self, _change) -> None:
        self._show_kernel()

    @shows_errors
    def refresh(self) -> None:
        """Reload the layer's weights from the session (after a layer, mode or model change)."""
        s, i = self._session, self.layer
        self._w = None
        kind = s.model.layers[i].kind if 0 <= i < s.num_layers else ""
        w = s.model.params[i].get("weights") if kind else None
        enabled = w is not None and w.ndim in (2, 4)
        for wdg in (self._filter, self._channel, self.apply_button, self.scale_button, self.zero_button,
                    self.prune_button):
            wdg.disabled = not enabled
        if not enabled:
            self._title.value = (f"<b>layer {i}</b> [{html.escape(kind)}] has no weights" if kind
                                 else "<b>weights</b>: select a convolutional layer")
            self._set_cells(np.zeros((0, 0)), "float")
            return
        self.target = self._default_target()
        self._w = s.weights(i, "int8")["w_q"] if self.target == "int8" else s.weights(i, "float")["weights"]
        with self.hold_sync():
            self._filter.max, self._channel.max = self._w.shape[0] - 1, self._w.shape[1] - 1
            self.filter, self.channel = min(self.filter, self._w.shape[0] - 1), min(self.channel, self._w.shape[1] - 1)
            shape = "x".join(map(str, self._w.shape))
            self._title.value = (f"<b>layer {i}</b> [{html.escape(kind)}] {self.target} weights {shape} "
                                 f"<small>(filter, channel/group, ky, kx)</small>")
            self._show_kernel()

    def kernel(self) -> np.ndarray:
        """The shown kernel, (kh, kw) (1 x 1 for [connected] layers)."""
        if self._w is None:
            return np.zeros((0, 0))
        k = self._w[self.filter, self.channel]
        return np.asarray(k).reshape(1, 1) if np.ndim(k) == 0 else np.asarray(k)

    def _show_kernel(self) -> None:
        if self._w is not None:
            self._set_cells(self.kernel(), self.target)

    def _set_cells(self, k: np.ndarray, target: str) -> None:
        cls = widgets.IntText if target == "int8" else widgets.FloatText
        flat = k.reshape(-1)
        if len(self.cells) != flat.size or (self.cells and not isinstance(self.cells[0], cls)):
            self.cells = [cls(layout=CELL) for _ in range(flat.size)]
            self._grid.children = self.cells
            self._grid.layout.grid_template_columns = f"repeat({max(1, k.shape[1] if k.ndim == 2 else 1)}, 84px)"
        for cell, v in zip(self.cells, flat):
            cell.value = int(v) if target == "int8" else float(v)

    def grid_values(self) -> np.ndarray:
        """The grid as typed by the user, in the kernel's shape."""
        k = self.kernel()
        return np.array([c.value for c in self.cells], np.float64).reshape(k.shape)

    # ------------------------------------------------------------------ edits
    def _edit_and_rerun(self, make_edit: Callable[[], Edit]) -> None:
        s, i = self._session, self.layer
        if s.position != i:
            s.run_to(i)        # the diff compares this layer's output before and after the edit
        edit = make_edit()
        self._rerun(f"{edit.summary()}")

    def _rerun(self, what: str) -> None:
        r = self._session.rerun()
        d = r.diff
        diff = {"layer": r.index, "sqnr_db": float(d.sqnr_db), "max_abs": float(d.max_abs), "changed": r.changed,
                "size": int(r.after.size)}
        with self.hold_sync():
            self.last_diff = diff
            self._diff.value = (f"<b>{html.escape(what)}</b><br>layer {r.index} output after vs before: "
                                f"SQNR {d.sqnr_db:.1f} dB, max |diff| {d.max_abs:.4g}, "
                                f"{r.changed:,} of {r.after.size:,} values changed")
            self.heatmap.value = heatmap_png(r.after - r.before, max_channels=16, cols=4) if r.after.ndim == 3 else b""
            self.edits = self._session.edits()
            self._journal.value = "<small>edits: " + html.escape("; ".join(self.edits) or "none") + "</small>"
            self.refresh()
            self.revision += 1
            self.status = f"{what}; reran layer {r.index}: {r.changed:,} values changed"

    @shows_errors
    def _on_apply_click(self, _button) -> None:
        values = self.grid_values()
        if self.target == "int8":
            if not np.all(values == np.rint(values)):
                raise ValueError("int8 weights must be integers")
        region = (self.filter, self.channel)
        self._edit_and_rerun(lambda: self._session.edit_weights(self.layer, region, values, target=self.target))

    @shows_errors
    def _on_scale_click(self, _button) -> None:
        self._edit_and_rerun(lambda: self._session.scale_filter(self.layer, self.filter, float(self._factor.value),
                                                                target=self.target))

    @shows_errors
    def _on_zero_click(self, _button) -> None:
        self._edit_and_rerun(lambda: self._session.zero_filter(self.layer, self.filter, target=self.target))

    @shows_errors
    def _on_prune_click(self, _button) -> None:
        self._edit_and_rerun(lambda: self._session.prune(self.layer, float(self._prune.value) / 100.0,
                                                         target=self.target))

    def _journal_step(self, name: str) -> None:
        s = self._session
        pending = s.journal.peek_undo() if name == "undo" else s.journal.peek_redo()
        if pending is not None and isinstance(pending.layer, int) and s.position != pending.layer:
            s.run_to(pending.layer)
        edit = s.undo() if name == "undo" else s.redo()
        if isinstance(edit.layer, int):
            self.layer = edit.layer
            self._rerun(f"{name}: {edit.summary()}")
        else:
            with self.hold_sync():
                self.edits = s.edits()
                self.revision += 1
                self.status = f"{name}: {edit.summary()}"

    @shows_errors
    def _on_undo_click(self, _button) -> None:
        self._journal_step("undo")

    @shows_errors
    def _on_redo_click(self, _button) -> None:
        self._journal_step("redo")

    @shows_errors
    def _on_save_model_click(self, _button) -> None:
        path = self._path.value.strip()
        if not path:
            raise ValueError("type a path for the new model file (.npz)")
        self.status = f"saved the customized model to {self._session.save_model(path)}"

    @shows_errors
    def _on_save_quantized_click(self, _button) -> None:
        path = self._path.value.strip()
        if not path:
            raise ValueError("type a path for the new quantized model file (.npz)")
        self.status = f"saved the quantized model to {self._session.save_quantized(path)}"
