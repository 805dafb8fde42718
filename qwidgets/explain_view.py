"""ExplainView: why did the quantized run lose or shift a detection, and which layers bring it back.

"Explain" runs `engine.quant.explain.Explainer` on the session's image, mode (INT or HYBRID), quantized
model and FLOAT layers, in a `LongTask` (progress, estimate, Cancel), reusing the run's and FLOAT's outputs
the session holds when they are current (`kept_run_outputs`, `kept_float_outputs`). The result is a table (every FLOAT
detection: status, IoU, the run's score, top culprits, fix set) and, for the detection picked in the
list, a bar chart of its culprits (recovery = fraction of its score/IoU loss regained with that one layer
FLOAT; only layers with recovery > 0: none when the error is spread) and every int8 layer's recovery as
graph colours (`recoveries`, node id -> % , for the "recovery" overlay).
"Keep fix FLOAT and re-run" adds the picked detection's fix set to the session's FLOAT layers
(`Session.set_mode(mode, float_layers=...)`) and runs to the end: the Detections tab then shows it back.
"""
from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets
import traitlets

from engine.quant.explain import Explainer, Explanation, percent
from engine.quant.progress import counted
from qwidgets._encode import bar_chart_png
from qwidgets._errors import Message, shows_errors
from qwidgets._long_task import LongTask
from qwidgets.layer_panel import TABLE_CSS
from qwidgets._png_image import PngImage
from qwidgets.graph_view import SHORT

TOP = 8
STALE = "the session changed since the explanation: click Explain again in the Explain tab"


def explain_table_html(explanations: list[Explanation], extra: list, run: str) -> str:
    rows = []
    for k, e in enumerate(explanations):
        m = e.match
        top = (", ".join(f"{i} ({percent(r)})" for i, r in e.culprits[:3]) or "none alone (spread)"
               if m.status != "matched" else "-")
        fix = "-" if m.status == "matched" else (", ".join(map(str, e.fix)) if e.fix else "none found")
        rows.append(f"<tr><td>{k + 1}</td><td>{html.escape(m.det.name)}</td><td>{m.det.score:.2f}</td>"
                    f"<td>{m.status}</td><td>{m.iou:.2f}</td>"
                    f"<td>{'-' if m.other is None else f'{m.other.score:.2f}'}</td><td>{top}</td><td>{fix}</td></tr>")
    rows += [f"<tr><td>+{k + 1}</td><td>{html.escape(d.name)}</td><td>-</td><td>extra</td><td>-</td>"
             f"<td>{d.score:.2f}</td><td>-</td><td>-</td></tr>" for k, d in enumerate(extra)]
    return (f"{TABLE_CSS}<table class='qw-table qw-explain'><tr><th>#</th><th>class</th><th>FLOAT score</th>"
            f"<th>status</th><th>IoU</th><th>{html.escape(run)} score</th><th>top culprits (recovery)</th>"
            f"<th>fix: keep FLOAT</th></tr>{''.join(rows)}</table>")


class ExplainView(widgets.VBox):
    """Explain lost / shifted detections of the session's run; keep a fix FLOAT and re-run."""

    recoveries = traitlets.Dict(help="node id -> recovery % of the picked detection (graph overlay)")
    recoveries_gone = traitlets.Unicode("", help="why `recoveries` is empty though a detection was explained "
                                        "('' = it is not: nothing explained or picked yet)")
    status = Message("", help="last message shown to the user")
    error_details = Message("", help="traceback of the last unexpected error")
    revision = traitlets.Int(0, help="bumped when a fix was applied (the session re-ran)")

    def __init__(self, session, background: bool = True, **kwargs) -> None:
        self._session = session
        self._explained: tuple | None = None         # the session state the explanations describe (`_state`)
        self.explanations: list[Explanation] = []
        self.extra: list = []
        self.explain_button = widgets.Button(description="Explain lost / shifted", icon="search",
                                             button_style="primary", layout=widgets.Layout(width="200px"))
        self.task = LongTask(background=background)
        self.pick = widgets.Dropdown(description="Detection", layout=widgets.Layout(width="360px"))
        self.apply_button = widgets.Button(description="Keep fix FLOAT and re-run", icon="wrench",
                                           disabled=True, layout=widgets.Layout(width="230px"))
        self.table = widgets.HTML("<small>Explain ranks, for each detection the INT or HYBRID run lost or "
                                  "shifted, the layers whose FLOAT execution recovers it (one run per layer).</small>")
        self.chart = PngImage()
        row = widgets.HBox([self.explain_button, self.task], layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__(children=[row, self.table,
                                   widgets.HBox([self.pick, self.apply_button]), self.chart], **kwargs)
        self.add_class("qw-explain-view")
        self.explain_button.on_click(self._on_explain_click)
        self.apply_button.on_click(self._on_apply_click)
        self.pick.observe(self._on_pick, names="value")

    @shows_errors
    def _on_explain_click(self, _button) -> None:
        s = self._session
        if s.mode not in ("int", "hybrid") or s.qmodel is None:
            raise ValueError("Explain compares an INT or HYBRID run with FLOAT: pick mode INT or HYBRID "
                             "and a quantized model first")
        args = (s.model, s.qmodel, s.mode, s.pre)
        # the run's and FLOAT's outputs the session holds, taken now (they describe the session as clicked):
        # after a Run, Explain computes neither again (None: not held or stale, computed in the task)
        opts: dict[str, Any] = {"thresh": s.thresh, "nms": s.nms, "float_layers": sorted(s.float_layers),
                                "run_values": s.kept_run_outputs(), "float_outputs": s.kept_float_outputs()}
        self.explain_button.disabled = True
        state = self._state()

        def work(tick):
            return Explainer(*args, **opts).explain_all(tick)
        self.task.start(work, lambda result: self._done(result, state), what="explaining")

    def wait(self, timeout: float | None = None) -> None:
        """Block until Explain finished (a script clicking the button calls this)."""
        self.task.wait(timeout)

    def _state(self) -> tuple:
        """What an explanation depends on: (objects compared by identity: the input, the quantized model, the
        applied edits), (values: mode, FLOAT layers, float-weights version)."""
        s = self._session
        return (s.pre, s.qmodel, *s.journal.done), (str(s.mode), tuple(sorted(s.float_layers)), s.model_version)

    def current(self) -> bool:
        """The shown explanations describe the session as it is now."""
        if self._explained is None:
            return False
        (objs, values), (objs0, values0) = self._state(), self._explained
        return values == values0 and len(objs) == len(objs0) and all(a is b for a, b in zip(objs, objs0))

    def sync(self) -> None:
        """After the session changed (another image, mode, quantized model, FLOAT layers or an edit): the
        explanations describe an earlier run, so their fix can no longer be kept and the graph loses their
        colours (the table stays, marked as earlier)."""
        if self.explanations and not self.current():
            self.recoveries, self.apply_button.disabled = {}, True
            self.apply_button.description = "Explain again (the session changed)"
            # the graph's legend says this, not "click Explain": the user just did, on the earlier state
            self.recoveries_gone = STALE

    def _done(self, result, state: tuple | None = None) -> None:
        self.explain_button.disabled = False
        failure = self.task.failure(result, "explain", self)
        if failure is not None:
            self.status = failure
            return
        self._explained = self._state() if state is None else state
        self.explanations, self.extra = result
        self.recoveries_gone = ""
        run = self._explained[1][0].upper()          # the mode explained (it may have changed meanwhile)
        self.table.value = explain_table_html(self.explanations, self.extra, run)
        options = [(f"{k + 1} {e.match.det.name} {e.match.det.score:.2f} ({e.match.status})", k)
                   for k, e in enumerate(self.explanations) if e.match.status != "matched"]
        self.pick.options = options
        self.pick.value = options[0][1] if options else None
        if not options:
            self._show(None)
        lost = sum(e.match.status == "lost" for e in self.explanations)
        self.status = f"explained: {len(options)} shifted or lost detections ({lost} lost)"

    def _on_pick(self, change) -> None:
        self._show(None if change.new is None else self.explanations[change.new])

    def _show(self, e: Explanation | None) -> None:
        if e is None or not e.ranking:
            self.chart.value = b""
            self.recoveries, self.apply_button.disabled = {}, True
            return
        top = e.culprits[:TOP]         # recovery > 0 only: none when no single layer recovers anything
        kinds = self._session.model.layers
        self.chart.value = bar_chart_png([f"{i} {SHORT.get(kinds[i].kind, kinds[i].kind)}" for i, _ in top],
                                         [100 * r for _, r in top],
                                         f"{e.match.det.name} {e.match.det.score:.2f} ({e.match.status}): "
                                         "run one layer FLOAT",
                                         "recovery: % of the score/IoU loss regained (higher = more to blame)",
                                         lo=0.0, hi=100.0) if top else b""
        self.recoveries = {str(i): 100.0 * r for i, r in e.ranking}     # graph colours: every int8 layer
        self.apply_button.disabled = not e.fix
        self.apply_button.description = (f"Keep {', '.join(map(str, e.fix))} FLOAT and re-run" if e.fix
                                          else "no fix found")
        self.sync()

    @shows_errors
    def _on_apply_click(self, _button) -> None:
        if not self.explanations or self.pick.value is None:
            raise ValueError("click Explain first, then pick a lost or shifted detection")
        if not self.current():
            raise ValueError("the explanation is of an earlier run (another image, mode, quantized model, FLOAT "
                             "layers or weights): click Explain again")
        e = self.explanations[self.pick.value]
        s = self._session
        layers = sorted(set(s.float_layers) | set(e.fix))
        s.set_mode(s.mode, float_layers=layers)
        dets = s.run()
        self.revision += 1
        self.status = (f"layers {', '.join(map(str, e.fix))} kept FLOAT (FLOAT layers now {layers}); re-ran: "
                       f"{counted(len(dets), 'detection')}")

    def model_changed(self) -> None:
        self._explained = None
        self.recoveries_gone = ""
        self.explanations, self.extra = [], []
        self.table.value, self.pick.options = "", []
        self._show(None)
