"""ExplorerControls: mode, quantized model, model and image pickers, Run / Step / Run-to / Reset / CROSS /
Continue, and the status line. Every handler reads the UI, makes one Session call and sets traits.

Traits other views observe: `position` (the session's last executed layer, -1 = none), `mode`,
`revision` (bumped when the session restarts: reset, new image, new mode, quantized model or model),
`cross_result` (the last `CrossResult`), `continue_result` (the last `ContinueResult`) and `status`.
`selected_node` is an input (the Explorer links it to the graph's selection) for Run-to-selected.

Switching the quantized model (Load, or Open of a workspace entry) goes through `SwitchGuard`: when
int8 / scale edits would be lost the engine's message is shown and the button asks for a confirming
click. Opening another model (Open model with a path, or Open of a workspace model entry) is
`Session.set_model` through the same guard: it drops every edit, so any edit asks for the confirming
click. The Explorer rebuilds its model-bound views after the switch (`Explorer.on_model_change`).
Open of an image set adds its images to the Image picker.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import ipywidgets as widgets
import traitlets

from engine.graph import INPUT
from engine.imaging.samples import sample_images
from engine.quant.progress import counted
from qwidgets._confirm import Refused, SwitchGuard, dropped_text
from qwidgets._encode import fmt_number
from qwidgets._errors import ErrorDetails, Message, shows_errors
from qwidgets._open_model import model_source, opened_text

MODES = [("FLOAT", "float"), ("HYBRID", "hybrid"), ("INT", "int")]
PATH = "(path below)"
UPLOAD = "(uploaded file)"
IMAGE_PLACEHOLDER = "/path/to/image.jpg + Enter"


def quantized_entries(workspace) -> list[tuple[str, str]]:
    """(label, path) of the workspace's quantized models ([] without a workspace)."""
    if workspace is None:
        return []
    return [(e.name, str(workspace.path_of(e.name))) for e in workspace.list("quantized")]


class ExplorerControls(widgets.VBox):
    """Buttons and pickers driving one Session; `status` is the Explorer's status line."""

    position = traitlets.Int(-1, help="index of the last layer the session ran (-1 = none yet)")
    mode = traitlets.Unicode("float", help="session mode: float, hybrid or int")
    revision = traitlets.Int(0, help="bumped whenever the session restarts (reset, image, mode, model)")
    selected_node = traitlets.Unicode("", help="node picked in the graph (target of Run to selected)")
    cross_result = traitlets.Any(None, allow_none=True, help="the last CrossResult")
    continue_result = traitlets.Any(None, allow_none=True, help="the last ContinueResult")
    image_name = traitlets.Unicode("", help="name of the image last loaded through the picker")
    status = Message("", help="last message shown to the user (repeats notify too)")
    error_details = Message("", help="traceback of the last unexpected error (collapsed section)")

    def __init__(self, session, workspace=None, **kwargs) -> None:
        self._session = session
        self.workspace = workspace
        self._load_guard, self._open_guard, self._model_guard = SwitchGuard(), SwitchGuard(), SwitchGuard()
        self._compared: list[tuple[str, object]] = []
        def b(**kw):
            return widgets.Button(layout=kw.pop("layout", widgets.Layout(width="96px")), **kw)
        self.run_button = b(description="Run", icon="fast-forward", tooltip="run to the end")
        self.step_button = b(description="Step", icon="step-forward", button_style="primary")
        self.run_to_button = b(description="Run to selected", icon="forward", layout=widgets.Layout(width="150px"))
        self.reset_button = b(description="Reset", icon="undo")
        self.cross_button = b(description="CROSS", icon="exchange", tooltip="run the current layer in the other "
                                                                           "precision on the same inputs")
        self.continue_button = b(description="Continue", icon="play", layout=widgets.Layout(width="110px"),
                                 tooltip="run the rest of the network from the CROSS result")
        self._mode = widgets.Dropdown(options=MODES, value=session.mode, description="Mode",
                                      layout=widgets.Layout(width="180px"))
        self._qm_pick = widgets.Dropdown(description="Quantized", layout=widgets.Layout(width="260px"))
        self._qm_path = widgets.Text(placeholder="/path/to/quantized.npz", layout=widgets.Layout(width="220px"))
        self.load_qm_button = b(description="Load", icon="folder-open", layout=widgets.Layout(width="80px"))
        self._model_path = widgets.Text(placeholder="/path/to/model.npz or .cfg", description="Model",
                                        layout=widgets.Layout(width="280px"))
        self.open_model_button = b(description="Open model", icon="folder-open",
                                   layout=widgets.Layout(width="120px"),
                                   tooltip="open another model in this session (drops its edits)")
        images = {p.stem: str(p) for p in sample_images()}
        self._image_pick = widgets.Dropdown(options=[*images.items(), (PATH, PATH), (UPLOAD, UPLOAD)],
                                            value=images.get("dog"), description="Image",
                                            layout=widgets.Layout(width="220px"))
        # Enter (or leaving the box) opens a typed path: continuous updates would open every prefix
        self._image_path = widgets.Text(placeholder=IMAGE_PLACEHOLDER, continuous_update=False,
                                        layout=widgets.Layout(width="220px"))
        self._upload = widgets.FileUpload(accept="image/*", multiple=False, description="Upload")
        self.load_image_button = b(description="Use image", icon="image", layout=widgets.Layout(width="120px"),
                                   tooltip="open the picked image again (picking one already opens it)")
        self._offering = False
        self.current_label = widgets.Label()
        self.current_label.add_class("qw-current")
        self._status = widgets.Label()
        self._status.add_class("qw-status")
        self._details = ErrorDetails()
        buttons = widgets.HBox([self.step_button, self.run_button, self.run_to_button, self.reset_button,
                                self.cross_button, self.continue_button, self.current_label])
        pickers = widgets.HBox([self._mode, self._qm_pick, self._qm_path, self.load_qm_button,
                                self._image_pick, self._image_path, self._upload, self.load_image_button,
                                self._model_path, self.open_model_button],
                               layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__(children=[pickers, buttons, self._status, self._details], **kwargs)
        self.add_class("qw-controls")
        self.refresh_quantized()
        self._mode.observe(self._on_mode_pick, names="value")
        self._qm_pick.observe(self._on_qm_target_change, names="value")
        self._qm_path.observe(self._on_qm_target_change, names="value")
        self._model_path.observe(self._on_model_path_change, names="value")
        # picking an image opens it; typing a path (Enter) or uploading a file opens that (issue 18 item 2)
        self._image_pick.observe(self._on_image_pick, names="value")
        self._image_path.observe(self._on_image_path, names="value")
        self._upload.observe(self._on_upload, names="value")
        traitlets.dlink((self, "status"), (self._status, "value"))
        traitlets.dlink((self, "error_details"), (self._details, "text"))
        for button, handler in [(self.step_button, self._on_step_click), (self.run_button, self._on_run_click),
                                (self.run_to_button, self._on_run_to_click),
                                (self.reset_button, self._on_reset_click), (self.cross_button, self._on_cross_click),
                                (self.continue_button, self._on_continue_click),
                                (self.load_qm_button, self._on_load_qm_click),
                                (self.open_model_button, self._on_open_model_click),
                                (self.load_image_button, self._on_load_image_click)]:
            button.on_click(handler)
        self.sync()

    # ------------------------------------------------------------------ state from the session
    def sync(self) -> None:
        """Set the traits from the session (after a change made elsewhere, e.g. adopting a model)."""
        s = self._session
        with self.hold_sync():
            self.mode = self._mode.value = s.mode
            self.position = s.position
            self.current_label.value = self.current_text()
        self._show_image()

    def _show_image(self) -> None:
        """Point the Image picker at the image the session runs on, without opening it again. It said "dog"
        for a session made on another photo, and after `session.reset(image=...)` in a cell. Images are
        told apart by file name, all the session keeps of a path."""
        name, pick = self._session.image_name, self._image_pick.value
        if pick == UPLOAD and self._upload.value and self._upload.value[0]["name"] == name:
            return
        if pick == PATH:
            if name and Path(self._image_path.value.strip()).name == name:
                return
        elif pick != UPLOAD and name and Path(pick).name == name:
            return
        match = next((v for _, v in self._image_pick.options
                      if v not in (PATH, UPLOAD) and name and Path(v).name == name), None)
        self._offering = True
        try:
            self._image_pick.value = match or PATH
        finally:
            self._offering = False
        self._image_path.placeholder = IMAGE_PLACEHOLDER if match else \
            f"session: {name or 'an image array'}; a path + Enter"

    def current_text(self) -> str:
        s = self._session
        if s.position < 0:
            return f"current: input ({s.mode})"
        i = s.position
        return f"current: {i} ({s.model.layers[i].kind}, {s.precision(i)})" + stale_note(s)

    def refresh_quantized(self) -> None:
        """Re-list the quantized models in the picker: the last comparison's (in memory), the workspace's,
        then the path box."""
        options = [*self._compared, *quantized_entries(self.workspace), (PATH, PATH)]
        self._qm_pick.options = options
        self._qm_pick.value = options[0][1]

    def offer_quantized(self, models: dict) -> None:
        """Offer in-memory quantized models (label -> QuantizedModel), e.g. every method Compare produced
        (issue 18 item 12: the picker offered only the path box after a comparison)."""
        self._compared = [(label, qm) for label, qm in models.items()]
        self.refresh_quantized()

    def restarted(self, message: str) -> None:
        """After the session restarted elsewhere too (e.g. a model was adopted): sync and bump `revision`."""
        with self.hold_sync():
            self.cross_result = None
            self.continue_result = None
            self.sync()
            self.revision += 1
            self.status = message

    def model_changed(self) -> None:
        """After the session opened another model: confirmations asked for the old model's edits are void."""
        for guard in (self._load_guard, self._open_guard, self._model_guard):
            guard.disarm()
        self.load_qm_button.description = "Load"
        self.open_model_button.description = "Open model"

    # ------------------------------------------------------------------ execution
    @shows_errors
    def _on_step_click(self, _button) -> None:
        r = self._session.step()
        self._moved(f"layer {r.index} [{r.kind}] ran in {r.precision} in {1000 * r.seconds:.0f} ms")

    @shows_errors
    def _on_run_click(self, _button) -> None:
        dets = self._session.run()
        self._moved(f"ran to the end: {counted(len(dets), 'detection')} ({self._session.mode})")

    @shows_errors
    def _on_run_to_click(self, _button) -> None:
        nid = self.selected_node
        if not nid or nid == INPUT:
            raise ValueError("select a layer in the graph first (the input node has nothing to run)")
        r = self._session.run_to(int(nid))
        self._moved(f"ran to layer {r.index} [{r.kind}] ({r.precision})")

    def _moved(self, message: str) -> None:
        with self.hold_sync():
            self.cross_result = None
            self.status = message
            self.position = self._session.position
            self.current_label.value = self.current_text()

    @shows_errors
    def _on_reset_click(self, _button) -> None:
        self._session.reset()
        self.restarted("reset: no layer has run yet")

    @shows_errors
    def _on_cross_click(self, _button) -> None:
        c = self._session.cross()
        d = c.diff
        self.cross_result = c
        self.status = (f"CROSS layer {c.index}: ran {c.precision}, other {c.other}: SQNR {fmt_number(d.sqnr_db, '.1f')} "
                       f"dB, max |diff| {fmt_number(d.max_abs)}")

    @shows_errors
    def _on_continue_click(self, _button) -> None:
        source = "other" if self.cross_result is not None else "this"
        r = self._session.continue_from(source)
        self.continue_result = r
        names = ", ".join(d.name for d in r.detections) or "none"
        self.status = (f"continued from layer {r.index} ({'CROSS result' if source == 'other' else 'this result'}):"
                       f" {counted(len(r.detections), 'detection')}: {names}")

    # ------------------------------------------------------------------ pickers
    # the dropdown and the `mode` trait both ask for a mode; the session decides, both then show its mode
    def _on_mode_pick(self, change) -> None:
        self._set_mode(change.new)

    @traitlets.observe("mode")
    def _on_mode_change(self, change) -> None:
        self._set_mode(change.new)

    @shows_errors
    def _set_mode(self, mode: str) -> None:
        if mode == self._session.mode:
            self.mode = self._mode.value = mode
            return
        try:
            self._session.set_mode(mode)
        finally:
            self.mode = self._mode.value = self._session.mode     # refused: back to the session's mode
        self.restarted(f"mode {mode}: restarted from the input")

    def _on_qm_target_change(self, _change) -> None:
        # a confirmation is for one model: another pick needs its own
        self._load_guard.disarm()
        self.load_qm_button.description = "Load"

    @shows_errors
    def _on_load_qm_click(self, _button) -> None:
        path = self._qm_path.value.strip() if self._qm_pick.value == PATH else self._qm_pick.value
        if not path:
            raise ValueError("type the path of a quantized model (.npz) or pick a workspace entry")
        label = self._qm_pick.label if not isinstance(path, str) else Path(path).name
        try:
            dropped = self._load_guard.switch(self._session, path, path if isinstance(path, str) else id(path))
        except Refused as ask:
            self.load_qm_button.description = ask.label
            self.status = f"confirm: {ask.message}"
            return
        finally:
            if self._load_guard.armed is None:
                self.load_qm_button.description = "Load"
        self.restarted(f"quantized model {label} loaded ({self._session.mode}){dropped_text(dropped)}")

    @shows_errors
    def open_entry(self, entry) -> str | None:
        """Use a workspace entry (`WorkspaceView.on_open`): a model, a quantized model, an image, or an
        image set (its images join the Image picker). Returns a label for the Open button when the switch
        needs a confirming click (edits would be dropped), else None."""
        if self.workspace is None:
            raise ValueError("no workspace: ExplorerControls(session, workspace=...)")
        path = self.workspace.path_of(entry.name)
        dropped = 0
        if entry.kind == "model":
            return self._open_model(self._open_guard, path, entry.files, entry.name)
        if entry.kind == "quantized":
            try:
                dropped = self._open_guard.switch(self._session, path, entry.name)
            except Refused as ask:
                self.status = f"confirm: {ask.message}"
                return ask.label
        elif entry.kind == "image":
            self._session.reset(image=path)
            self.image_name = entry.name
            self.offer_images(entry.name, [path], shown=path)       # and the picker shows it
        elif entry.kind == "imageset":
            self.offer_images(entry.name, [path / f for f in entry.files] if path.is_dir() else [path])
            return None
        else:
            raise ValueError(f"entry {entry.name!r} is a {entry.kind}: the Explorer opens models, quantized "
                             "models, images and image sets")
        self._open_guard.disarm()
        self.restarted(f"opened {entry.kind} {entry.name!r} ({self._session.mode}){dropped_text(dropped)}")
        return None

    def _on_model_path_change(self, _change) -> None:
        self._model_guard.disarm()            # a confirmation is for one model
        self.open_model_button.description = "Open model"

    @shows_errors
    def _on_open_model_click(self, _button) -> None:
        path = self._model_path.value.strip()
        if not path:
            raise ValueError("type the path of a model: an engine .npz, or a Darknet .cfg with its .weights beside it")
        label = "Open model"         # also after an error: the guard is disarmed by then
        try:
            label = self._open_model(self._model_guard, path, None, Path(path).name) or label
        finally:
            self.open_model_button.description = label

    def _open_model(self, guard: SwitchGuard, path: str | Path, files: Sequence[str] | None, label: str) -> str | None:
        """`set_model` through `guard`; the Explorer then rebuilds its views (session reset event). Returns
        the confirming label when edits would be dropped, else None."""
        try:
            dropped = guard.switch_model(self._session, lambda: model_source(path, files), str(path))
        except Refused as ask:
            self.status = f"confirm: {ask.message}"
            return ask.label
        self.restarted(f"opened model {label!r}: {opened_text(self._session, dropped)}")
        return None

    def disarm_open(self) -> None:
        """Forget a pending Open confirmation (the workspace selection moved on)."""
        self._open_guard.disarm()

    def offer_images(self, label: str, paths: list, shown: Path | None = None) -> None:
        """Add images to the Image picker as '<label>/<file>' without running them; the picker goes on
        showing the session's image (it showed the first offered one, which had not run), or `shown`, the
        one just opened (then no status line)."""
        new = [(f"{label}/{Path(p).name}", str(p)) for p in paths]
        keep = [o for o in self._image_pick.options if o[1] not in {v for _, v in new} and o[1] not in (PATH, UPLOAD)]
        # new options move the picker's value, which opens that image unless we say we are offering
        self._offering = True
        try:
            self._image_pick.options = [*keep, *new, (PATH, PATH), (UPLOAD, UPLOAD)]
            if shown is not None:
                self._image_pick.value = str(shown)
        finally:
            self._offering = False
        if shown is not None:
            return
        self._show_image()
        self.status = (f"image set {label!r}: {counted(len(new), 'image')} added to the Image picker; "
                       "pick one there to open it")

    def _on_image_pick(self, change) -> None:
        if not self._offering and change.new not in (PATH, UPLOAD):
            self._on_load_image_click(None)

    def _on_image_path(self, change) -> None:
        if change.new.strip():
            self._offering = True           # the path box decides: the picker only shows where it came from
            try:
                self._image_pick.value = PATH
            finally:
                self._offering = False
            self._on_load_image_click(None)

    def _on_upload(self, change) -> None:
        if change.new:
            self._offering = True
            try:
                self._image_pick.value = UPLOAD
            finally:
                self._offering = False
            if not self._on_load_image_click(None):
                # refused: the button said "Upload (1)" as if that file were the session's image
                self._upload.value = ()
            self._show_image()          # a refused upload left the picker on "(uploaded file)"

    @shows_errors
    def _on_load_image_click(self, _button) -> bool:
        """Open the picked image; True once the session runs on it (None: refused, the status says why)."""
        choice = self._image_pick.value
        if choice == UPLOAD:
            if not self._upload.value:
                raise ValueError("choose a file with Upload first")
            up = self._upload.value[0]
            image, name = bytes(up["content"]), up["name"]
        else:
            image = self._image_path.value.strip() if choice == PATH else choice
            if not image:
                raise ValueError("type the path of an image")
            name = Path(image).name
        # an upload's bytes have no file name of their own: its errors said "<image bytes>: ..."
        self._session.reset(image=image, name=name if choice == UPLOAD else None)
        self.image_name = name
        self.restarted(f"image {html.escape(name)}: restarted from the input")
        return True


def stale_note(session) -> str:
    """' (outputs from layer N on predate an edit: Rerun or Run)' while kept outputs are stale, else ''."""
    first = getattr(session, "stale_from", None)
    if first is None or first > session.position:
        return ""
    return f" (outputs from layer {first} on predate an edit: Rerun or Run)"

