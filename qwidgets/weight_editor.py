"""WeightEditor: view and edit one kernel of one layer, bulk edits, rerun with a diff, undo / redo, save.

The kernel `weights[filter, channel]` (k x k) is a grid of `FloatText` (FLOAT mode: the float cfg
weights) or `IntText` (HYBRID / INT: the int8 `w_q`). Apply writes the grid with
`session.edit_weights`; Scale / Zero filter and Prune are `scale_filter` / `zero_filter` / `prune`.
Values typed but not applied survive slider moves, Steps and mode changes (`KernelGrid`) until Apply
or Discard; typed int8 values are dropped with the quantized model they were typed for (another model:
all of them). The editor follows the session's events whoever drives it (`SessionFollower`): `edits`
and the weights follow edits, undo and redo made from code too.

After an edit the session re-executes what it changed (`session.rerun()`: from the edited layer to
the current one, diff of the current layer, after vs before): the panel shows SQNR / max |diff| /
changed values and an error heat map. If the edited layer has not run yet, the session first runs
forward to it (never back: that would drop the outputs after it), so the diff shows the edit; the
session's step events move the other views with it, even when the engine then rejects the edit.
Undo / redo never move the session. Kept outputs that predate an edit (`session.stale_from`, e.g. after
an edit from code) are named above the buttons; Rerun re-executes them.

Save writes new files (`save_model` / `save_quantized`); with a workspace connected, a plain name
stores new workspace entries with their lineage instead (`qwidgets._save_model`).
"""
from __future__ import annotations

import html
from typing import Callable

import ipywidgets as widgets
import numpy as np
import traitlets

from engine.session.edits import Edit
from engine.session.stats import error_map
from qwidgets._encode import channels_note, fmt_number, framed_png, heatmap_png
from qwidgets._errors import ErrorDetails, Message, shows_errors
from qwidgets._kernel_grid import KernelGrid, key_text
from qwidgets._save_model import save_as
from qwidgets._png_image import PngImage
from qwidgets._sync import SessionFollower


class WeightEditor(widgets.VBox):
    """Kernel grid + bulk edits for layer `layer` of a Session (-1 or a weightless layer: disabled)."""

    layer = traitlets.Int(-1, help="index of the edited layer (-1 = none)")
    filter = traitlets.Int(0, help="output filter (row of the weight tensor)")
    channel = traitlets.Int(0, help="input channel within the filter")
    target = traitlets.Unicode("float", help="'float' (cfg weights) or 'int8' (w_q), from the session mode")
    last_diff = traitlets.Dict(help="after vs before of the last rerun: sqnr_db, max_abs, changed, layer")
    edits = traitlets.List(traitlets.Unicode(), help="summaries of the applied edits (the session's journal)")
    revision = traitlets.Int(0, help="bumped after every edit / undo / redo / rerun")
    active = traitlets.Bool(True, help="shown: False defers filling the grid until it is shown (the Explorer's "
                                       "Weights tab)")
    workspace = traitlets.Any(None, allow_none=True, help="a connected engine Workspace: Save stores entries")
    status = Message("", help="last message shown to the user (repeats notify too)")
    error_details = Message("", help="traceback of the last unexpected error (collapsed section)")

    def __init__(self, session, workspace=None, **kwargs) -> None:
        self._session = session
        self._model, self._qmodel = session.model, session.qmodel     # the models the grid's values are of
        self._pending_show: tuple | None = None
        self._w: np.ndarray | None = None
        self._real_w: dict | None = None     # the layer's dequantized int8 weights (int8 grid), until a refresh
        self._title = widgets.HTML("<b>weights</b>: select a convolutional layer")
        self._filter = widgets.IntSlider(description="filter", min=0, max=0, continuous_update=False)
        self._channel = widgets.IntSlider(description="channel", min=0, max=0, continuous_update=False)
        self.grid = KernelGrid()
        self.grid.add_class(f"qw-grid-{self.grid.model_id}")     # the scope of the marks' style sheet
        b = widgets.Button
        self.apply_button = b(description="Apply", icon="check", button_style="primary",
                              tooltip="write the grid into the weights and rerun the layer")
        self.discard_button = b(description="Discard typed", icon="times",
                                tooltip="forget the values typed into this kernel and show its weights")
        self._factor = widgets.FloatText(value=0.5, description="factor", layout=widgets.Layout(width="160px"))
        self.scale_button = b(description="Scale filter", icon="arrows-v")
        self.zero_button = b(description="Zero filter", icon="eraser")
        self._prune = widgets.BoundedFloatText(value=10.0, min=0.0, max=100.0, step=1.0, description="prune %",
                                               layout=widgets.Layout(width="160px"))
        self.prune_button = b(description="Prune layer", icon="scissors")
        self.undo_button = b(description="Undo", icon="undo")
        self.redo_button = b(description="Redo", icon="repeat")
        self.rerun_button = b(description="Rerun", icon="refresh",
                              tooltip="re-execute the kept outputs that predate an edit, diff the current layer")
        self._path = widgets.Text(placeholder="/path/to/new-model.npz", description="Save as")
        self.save_model_button = b(description="Save model", icon="save")
        self.save_quantized_button = b(description="Save quantized", icon="save")
        self._notes = widgets.HTML()         # unapplied kernels, stale outputs
        self._real = widgets.HTML()          # int8 grid: its scale and the real values q x scale
        # the cells the last Apply changed are marked by this style sheet, never by a class on the cell: any
        # message to a cell's model makes its view rewrite the text box, dropping what the user is typing
        # there (ipywidgets' IntText/FloatText update()), e.g. the next value, typed while Apply runs
        self._style = widgets.HTML()
        self.edited_cells: list[int] = []    # flat indexes of the cells the last Apply changed
        self._marked_key: tuple | None = None
        self._diff = widgets.HTML()
        # its own size, box too (a stretched box: a small map in a 600 px blank square); narrower panel: shrunk
        self.heatmap = PngImage(layout=widgets.Layout(width="auto", max_width="100%", align_self="flex-start"))
        self._journal = widgets.HTML()
        self._status = widgets.Label()
        self._status.add_class("qw-status")
        self._details = ErrorDetails()
        super().__init__(children=[
            self._style, self._title, widgets.HBox([self._filter, self._channel]), self.grid, self._real,
            self._notes,
            widgets.HBox([self.apply_button, self.discard_button, self.undo_button, self.redo_button,
                          self.rerun_button]),
            widgets.HBox([self._factor, self.scale_button, self.zero_button, self._prune, self.prune_button]),
            self._diff, self.heatmap, self._journal,
            widgets.HBox([self._path, self.save_model_button, self.save_quantized_button]), self._status,
            self._details], **kwargs)
        self.add_class("qw-weight-editor")
        traitlets.link((self, "filter"), (self._filter, "value"))
        traitlets.link((self, "channel"), (self._channel, "value"))
        traitlets.dlink((self, "status"), (self._status, "value"))
        traitlets.dlink((self, "error_details"), (self._details, "text"))
        for button, handler in [(self.apply_button, self._on_apply_click), (self.scale_button, self._on_scale_click),
                                (self.discard_button, self._on_discard_click),
                                (self.zero_button, self._on_zero_click), (self.prune_button, self._on_prune_click),
                                (self.undo_button, self._on_undo_click), (self.redo_button, self._on_redo_click),
                                (self.rerun_button, self._on_rerun_click),
                                (self.save_model_button, self._on_save_model_click),
                                (self.save_quantized_button, self._on_save_quantized_click)]:
            button.on_click(handler)
        self.workspace = workspace
        self.refresh()
        self._show_journal()
        self._follower = SessionFollower(session, self._on_session_events)

    def close(self) -> None:
        self._follower.close()               # stop following the session
        super().close()

    @property
    def cells(self) -> list[widgets.Widget]:
        self._flush_show()
        return self.grid.cells

    @traitlets.observe("active")
    def _on_active_change(self, change) -> None:
        if change.new:
            self._flush_show()

    def _flush_show(self) -> None:
        """Fill the grid with the kernel whose display waited for the tab to be shown."""
        self._follow_models()
        if self._pending_show is not None:
            args, self._pending_show = self._pending_show, None
            self._show(*args, now=True)

    # ------------------------------------------------------------------ display
    def _default_target(self) -> str:
        return self._session.edit_target(self.layer) if self.layer >= 0 else "float"

    def model_changed(self) -> None:
        """After the session opened another model: its typed values, last diff and journal were the old
        model's (the session dropped the edits), and no layer is selected until the owner picks one."""
        self._model, self._qmodel = self._session.model, self._session.qmodel
        self.grid.discard_all(self.target)
        with self.hold_sync():
            self.edits, self.last_diff = [], {}
            self._diff.value = self._journal.value = ""
            self.heatmap.value = b""
        if self.layer != -1:
            self.layer = -1           # refreshes
        else:
            self.refresh()

    def _follow_models(self) -> bool:
        """Before the grid is shown or applied: another model in the session drops every typed value
        (`model_changed`), another quantized model the int8 ones (a value typed for quantized model A is
        never applied to B; float weights stay). Returns whether a model changed (then shown)."""
        s = self._session
        if s.model is not self._model:
            self.model_changed()
            return True
        if s.qmodel is self._qmodel:
            return False
        self._qmodel = s.qmodel
        n = self.grid.discard_target("int8", self.target)
        self.refresh()
        if n:
            self.status = (f"discarded your unapplied int8 values of {n} kernel{'s' if n != 1 else ''}: they were "
                           "typed for the previous quantized model")
        return True

    def _on_session_events(self, events: frozenset, _from_code: bool) -> None:
        """The models, the weights after an edit or restart (mode, quantized model), notes, journal."""
        if not self._follow_models():
            if events & {"edit", "reset"}:
                self.refresh()
            else:
                self.show_notes()           # outputs that predate an edit: named until rerun
        self._show_journal()

    def _show_journal(self) -> None:
        """`edits` and the journal line: the session's applied edits, whoever made them."""
        with self.hold_sync():
            self.edits = self._session.edits()
            self._journal.value = "<small>edits: " + html.escape("; ".join(self.edits) or "none") + "</small>"

    @traitlets.validate("filter", "channel")
    def _valid_kernel(self, proposal) -> int:
        """A filter / channel of the shown weights: -1 read the last one while the slider showed 0, an index
        past the end raised IndexError out of the trait's observer and left the trait out of range."""
        name, value = proposal.trait.name, proposal.value
        size = None if self._w is None else self._w.shape[0 if name == "filter" else 1]
        if value < 0 or (size is not None and value >= size):
            have = f"; layer {self.layer} has {name}s 0..{size - 1}" if size is not None else ""
            raise traitlets.TraitError(f"{name}={value}: no such {name}{have}")
        return value

    @traitlets.observe("layer")
    def _on_layer_change(self, _change) -> None:
        self.refresh()

    @traitlets.observe("filter", "channel")
    def _on_kernel_change(self, _change) -> None:
        self._show_kernel()

    @traitlets.observe("workspace")
    def _on_workspace_change(self, change) -> None:
        self._path.placeholder = ("new entry name (or /path/to/file.npz)" if change.new is not None
                                  else "/path/to/new-model.npz")

    @shows_errors
    def refresh(self) -> None:
        """Reload the layer's weights from the session (after a layer, mode, model or weight change)."""
        if self._follow_models():
            return                            # refreshed with the new models
        s, i = self._session, self.layer
        self._w, self._real_w = None, None
        kind = s.model.layers[i].kind if 0 <= i < s.num_layers else ""
        w = s.model.params[i].get("weights") if kind else None
        enabled = w is not None and w.ndim in (2, 4)
        for wdg in (self._filter, self._channel, self.apply_button, self.discard_button, self.scale_button,
                    self.zero_button, self.prune_button):
            wdg.disabled = not enabled
        if not enabled:
            self._title.value = (f"<b>layer {i}</b> [{html.escape(kind)}] has no weights" if kind
                                 else "<b>weights</b>: select a convolutional layer")
            self._show(None, np.zeros((0, 0)), "float")
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
        """The shown kernel's weights, (kh, kw) (1 x 1 for [connected] layers)."""
        if self._w is None:
            return np.zeros((0, 0))
        k = self._w[self.filter, self.channel]
        return np.asarray(k).reshape(1, 1) if np.ndim(k) == 0 else np.asarray(k)

    def kernel_key(self) -> tuple:
        return (self.layer, self.target, self.filter, self.channel)

    def _show_kernel(self) -> None:
        if self._w is not None and not self._follow_models():
            self._show(self.kernel_key(), self.kernel(), self.target)

    def _show(self, key: tuple | None, k: np.ndarray, target: str, now: bool = False) -> None:
        if not (self.active or now or self.grid.typed()):
            # hidden tab: the grid (a widget message per cell, new cells per kernel shape) is filled when
            # the tab is shown or the cells are read (`cells`), with the kernel selected by then; typed
            # values are kept at once (the grid stashes them when another kernel is shown)
            self._pending_show = (key, k, target)
            self.show_notes()                 # one line, and it names stale outputs: kept current
            return
        self._pending_show = None
        news = self.grid.show(key, k, target)
        if news:
            self.status = news
        if key != self._marked_key:
            self.mark_edited([])             # the marks belong to the kernel they were made in
        self._real.value = self._real_values_html() if key is not None and target == "int8" else ""
        self.show_notes()

    def _real_values_html(self) -> str:
        """Under an int8 grid: the filter's weight scale and each tap's real value q x scale (the
        session's dequantized weights, fetched once per refresh)."""
        if self._real_w is None:
            self._real_w = self._session.weights(self.layer, "dequantized")
        scale = self._real_w["w_scale"].reshape(-1)
        sc = float(scale[self.filter] if scale.size > 1 else scale[0])
        real = self._real_w["weights"][self.filter, self.channel]
        real = np.asarray(real).reshape(1, 1) if np.ndim(real) == 0 else np.asarray(real)
        rows = "".join("<tr>" + "".join(f"<td>{fmt_number(float(v))}</td>" for v in row) + "</tr>" for row in real)
        which = f"filter {self.filter}" if scale.size > 1 else "the layer (per tensor)"
        return (f"<small>int8 values q; weight scale of {which}: {sc:.5g}; real value = q x scale:</small>"
                f"<table class='qw-table'>{rows}</table>")

    def mark_edited(self, cells: list[int]) -> None:
        """Highlight these cells (flat indexes) as changed by the last Apply (`marks_css`; the cells' own
        models get no message, see `_style`)."""
        self.edited_cells = sorted(set(int(n) for n in cells))
        self._marked_key = self.kernel_key() if cells else None
        css = self.marks_css()
        self._style.value = f"<style>{css}</style>" if css else ""

    def marks_css(self) -> str:
        """The style sheet marking `edited_cells`: the grid's children n (1-based) of this editor's grid."""
        if not self.edited_cells:
            return ""
        scope = f".qw-grid-{self.grid.model_id}"
        sel = ",".join(f"{scope} > :nth-child({n + 1}) input" for n in self.edited_cells)
        return f"{sel}{{background:#fff3b0;font-weight:bold;border:2px solid #e6550d}}"

    def show_notes(self) -> None:
        """The notes above the buttons: kernels with unapplied values, kept outputs that predate an edit."""
        s, notes = self._session, []
        if self.grid.unapplied:
            notes.append("unapplied typed values: " + "; ".join(key_text(k) for k in self.grid.unapplied))
        if s.stale_from is not None and s.stale_from <= s.position:
            notes.append(f"outputs from layer {s.stale_from} to {s.position} predate your edit: Rerun (or Run)")
        self._notes.value = "".join(f"<div style='color:#b35900'><small>{html.escape(n)}</small></div>"
                                    for n in notes)

    def grid_values(self) -> np.ndarray:
        """The grid as typed by the user, in the kernel's shape."""
        self._flush_show()
        return self.grid.values()

    # ------------------------------------------------------------------ edits
    def _edit_and_rerun(self, make_edit: Callable[[], Edit], what: str | None = None) -> None:
        s, i = self._session, self.layer
        if s.position < i:
            s.run_to(i)        # forward only, so the diff shows this layer before and after the edit
        edit = make_edit()
        self._rerun(what or edit.summary())

    def _rerun(self, what: str) -> None:
        s = self._session
        first = s.stale_from
        if first is None or s.position < 0:
            self._after_edit(f"{what}; no executed output depends on it yet: Step or Run to see it")
            return
        r = s.rerun()
        d = r.diff
        span = f"layers {first}..{r.index}" if first < r.index else f"layer {r.index}"
        self.last_diff = {"layer": r.index, "sqnr_db": float(d.sqnr_db), "max_abs": float(d.max_abs),
                          "changed": r.changed, "size": int(r.after.size)}
        with self.hold_sync():
            self._diff.value = (f"<b>{html.escape(what)}</b><br>reran {span}; layer {r.index} output after vs "
                                f"before: SQNR {fmt_number(d.sqnr_db, '.1f')} dB, max |diff| {fmt_number(d.max_abs)}, "
                                f"{r.changed:,} of {r.after.size:,} values changed")
            if r.after.ndim == 3:
                diff, vmax = error_map(r.after, r.before, channels=16)      # the shown channels only
                self.heatmap.value = framed_png(
                    heatmap_png(diff, max_channels=16, cols=4, vmax=vmax, as_image=True),
                    f"layer {r.index} output after - before the edit, "
                    f"{channels_note(r.after.shape[0], min(16, r.after.shape[0]))}",
                    "diverging", -vmax, vmax)
            else:
                self.heatmap.value = b""
        self._after_edit(f"{what}; reran {span}: {r.changed:,} values changed (layer {r.index} output)")

    def _after_edit(self, message: str) -> None:
        with self.hold_sync():
            self._show_journal()
            self.refresh()
            self.revision += 1
            self.status = message

    @shows_errors
    def _on_apply_click(self, _button) -> None:
        if self._follow_models():
            raise ValueError("the session's model or quantized model changed since these values were typed: "
                             "check the weights shown now, then Apply again")
        values = self.grid_values()
        if self.target == "int8" and not np.all(values == np.rint(values)):
            raise ValueError("int8 weights must be integers")
        layer, region, target = self.layer, (self.filter, self.channel), self.target
        old = np.asarray(self.kernel(), np.float64).reshape(values.shape)
        changed = [int(n) for n in np.flatnonzero(old.reshape(-1) != values.reshape(-1))]
        kw = values.shape[1] if values.ndim == 2 else 1
        taps = ", ".join(f"tap ({n // kw}, {n % kw}) {old.reshape(-1)[n]:.4g} -> {values.reshape(-1)[n]:.4g}"
                         for n in changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        what = (f"layer {layer} {target} filter {region[0]} channel {region[1]}: "
                + (taps or "no value changed"))

        def edit() -> Edit:
            e = self._session.edit_weights(layer, region, values, target=target)
            self.grid.forget_shown()         # the typed values are the weights now
            return e
        self._edit_and_rerun(edit, what)
        self.mark_edited(changed)

    @shows_errors
    def _on_discard_click(self, _button) -> None:
        had = self.grid.discard_shown(self.target)
        self.show_notes()
        self.status = (f"discarded the typed values of {key_text(self.kernel_key())}" if had
                       else "nothing typed in this kernel")

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
        edit = s.undo() if name == "undo" else s.redo()
        if isinstance(edit.layer, int):
            self.layer = edit.layer          # show the weights the step restored
        self._rerun(f"{name}: {edit.summary()}")

    @shows_errors
    def _on_undo_click(self, _button) -> None:
        self._journal_step("undo")

    @shows_errors
    def _on_redo_click(self, _button) -> None:
        self._journal_step("redo")

    @shows_errors
    def _on_rerun_click(self, _button) -> None:
        s = self._session
        if s.position < 0:
            raise ValueError("nothing has run yet: Step first")
        if s.stale_from is None:
            self.status = "nothing to rerun: the kept outputs already use the current weights"
            return
        self._rerun("rerun")

    # ------------------------------------------------------------------ save
    @shows_errors
    def _on_save_model_click(self, _button) -> None:
        self.status = save_as(self._session, self.workspace, self._path.value)

    @shows_errors
    def _on_save_quantized_click(self, _button) -> None:
        self.status = save_as(self._session, self.workspace, self._path.value, quantized_only=True)

