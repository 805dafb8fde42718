"""WorkspaceView: list, upload, import, rename, delete, export and open workspace entries.

Every callback reads the UI, makes one `engine.workspace.store.Workspace` call and sets traits; errors are
shown in the status label, never as a traceback (`qwidgets._errors.report`: unexpected ones also keep
their traceback in a collapsed section). Deleting takes two clicks: Delete arms a confirmation row
naming the entry, and only its Confirm button deletes. An Open callback may ask for a confirming
click by returning a label: the Open button shows it until the next click or selection change.
"""
from __future__ import annotations

import base64
import html
from typing import Callable

import ipywidgets as widgets
import traitlets

from engine.workspace import KINDS, Entry, Workspace
from qwidgets._errors import ErrorDetails, Message, report

ALL = "all"
ACCEPT = ".cfg,.weights,.npz,.zip,.json,.csv,.txt,.names,.png,.jpg,.jpeg,.bmp,.gif,.tif,.tiff,.webp"
# Above this size an export is not inlined as a data: URI (the comm would carry it); the
# path of the written zip is shown instead.
MAX_INLINE_DOWNLOAD = 20 << 20


class WorkspaceView(widgets.VBox):
    """File manager for one `Workspace`. `on_open(callback)` registers `callback(entry)` for Open."""

    kind_filter = traitlets.Unicode(ALL, help="kind shown in the list, or 'all'")
    entries = traitlets.List(traitlets.Unicode(), help="names of the listed entries")
    selected = traitlets.Unicode(None, allow_none=True, help="name of the selected entry")
    pending_delete = traitlets.Unicode(None, allow_none=True, help="entry awaiting delete confirmation")
    status = Message("", help="last message shown to the user (repeats notify too)")
    error_details = Message("", help="traceback of the last unexpected error (collapsed section)")

    def __init__(self, workspace: Workspace | None = None, **kwargs) -> None:
        self.workspace = workspace or Workspace()
        self._open_callbacks: list[Callable[[Entry], str | None]] = []
        self._kind = widgets.Dropdown(options=[ALL, *KINDS], value=ALL, description="Kind")
        # stretched, not width="100%" (plus 2 px margins: a horizontal scroll bar under the whole view)
        self._list = widgets.Select(options=[], rows=10, layout=widgets.Layout(width="auto"))
        self._info = widgets.HTML()
        self._upload = widgets.FileUpload(accept=ACCEPT, multiple=True, description="Upload",
                                          tooltip="files over the server's websocket limit (10 MiB by "
                                                  "default) fail in transit: use Import from a path")
        # "auto": kinds from file types (each image its own entry); or force one kind. "auto" is shown selected
        # (value=None selected nothing: the box was blank, though uploads ran as auto)
        self._upload_kind = widgets.Dropdown(description="as", index=0, layout=widgets.Layout(width="220px"),
                                             options=[("auto", None), ("one image set", "imageset"),
                                                      ("quantized model", "quantized"), ("record", "record")])
        self._path = widgets.Text(placeholder="/path/to/file-or-folder", description="Path")
        self._import = widgets.Button(description="Import", icon="download")
        self._new_name = widgets.Text(placeholder="new name", description="Name")
        self._rename = widgets.Button(description="Rename", icon="pencil")
        self._delete = widgets.Button(description="Delete", icon="trash", button_style="danger")
        self._confirm = widgets.Button(description="Confirm delete", button_style="danger")
        self._cancel = widgets.Button(description="Cancel")
        self._confirm_row = widgets.HBox([widgets.Label(), self._confirm, self._cancel],
                                         layout=widgets.Layout(display="none"))
        self._export = widgets.Button(description="Export", icon="file-archive-o")
        self._open = widgets.Button(description="Open", icon="folder-open", button_style="primary")
        self._link = widgets.HTML()
        self._status = widgets.Label()
        self._details = ErrorDetails()
        super().__init__(children=[
            widgets.HBox([self._kind, self._upload, self._upload_kind]), self._list, self._info,
            widgets.HBox([self._path, self._import]),
            widgets.HBox([self._new_name, self._rename, self._delete, self._export, self._open]),
            self._confirm_row, self._link, self._status, self._details], **kwargs)
        traitlets.link((self._kind, "value"), (self, "kind_filter"))
        traitlets.dlink((self, "status"), (self._status, "value"))
        traitlets.dlink((self, "error_details"), (self._details, "text"))
        self._list.observe(self._on_list_change, names="value")
        self._upload.observe(self._on_upload_change, names="value")
        for button, handler in [(self._import, self._on_import_click), (self._rename, self._on_rename_click),
                                (self._delete, self._on_delete_click), (self._confirm, self._on_confirm_click),
                                (self._cancel, self._on_cancel_click), (self._export, self._on_export_click),
                                (self._open, self._on_open_click)]:
            button.on_click(handler)
        self.refresh()

    def on_open(self, callback: Callable[[Entry], str | None]) -> None:
        """Call `callback(entry)` when Open is clicked (the Explorer hooks in here). A callback that
        returns a string asks for a confirming click: the Open button shows it as its label."""
        self._open_callbacks.append(callback)

    def refresh(self) -> None:
        """Re-read the index (another kernel may have changed it) and redraw the list."""
        self._guard(self._refresh)

    # ----- trait reactions -----------------------------------------------------------------
    @traitlets.observe("kind_filter")
    def _on_kind_filter_change(self, _change) -> None:
        self.refresh()

    @traitlets.observe("pending_delete")
    def _on_pending_delete_change(self, change) -> None:
        self._confirm_row.children[0].value = f"Delete {change.new!r} and its files?" if change.new else ""
        self._confirm_row.layout.display = "flex" if change.new else "none"

    def _on_list_change(self, change) -> None:
        self.selected = change.new
        self.pending_delete = None
        self._open.description = "Open"
        self._link.value = ""
        self._info.value = self._describe(change.new) if change.new else ""

    # ----- callbacks: one engine call each ---------------------------------------------------
    def _on_upload_change(self, change) -> None:
        if not change.new:
            return
        files = {f["name"]: bytes(f["content"]) for f in change.new}
        done = self._guard(self.workspace.add_upload, files, kind=self._upload_kind.value)
        self._upload.value = ()  # clear, so the same file can be uploaded again
        if done is not None:
            self._after_change(done[-1].name, f"uploaded: {', '.join(e.name for e in done)}")

    def _on_import_click(self, _button) -> None:
        entry = self._guard(self.workspace.import_path, self._path.value.strip())
        if entry is not None:
            self._after_change(entry.name, f"imported {entry.name!r} ({entry.kind}, {entry.size} bytes)")

    def _on_rename_click(self, _button) -> None:
        if self._need_selection("rename"):
            entry = self._guard(self.workspace.rename, self.selected, self._new_name.value.strip())
            if entry is not None:
                self._after_change(entry.name, f"renamed to {entry.name!r}")

    def _on_delete_click(self, _button) -> None:
        if self._need_selection("delete"):
            self.pending_delete = self.selected
            self.status = f"confirm to delete {self.selected!r}"

    def _on_confirm_click(self, _button) -> None:
        name, self.pending_delete = self.pending_delete, None
        if name and self._guard(self.workspace.delete, name, confirm=True) is not None:
            self._after_change(None, f"deleted {name!r}")

    def _on_cancel_click(self, _button) -> None:
        self.pending_delete = None
        self.status = "delete cancelled"

    def _on_export_click(self, _button) -> None:
        if not self._need_selection("export"):
            return
        done = self._guard(self._export_entry, self.selected)
        if done is not None:
            self._link.value, self.status = done

    def _export_entry(self, name: str) -> tuple[str, str]:
        """(link HTML, status) after exporting `name`; the zip's stat and read can fail too (a full or
        vanished disk), so all of it runs inside the guard."""
        path = self.workspace.export(name)
        size = path.stat().st_size
        if size <= MAX_INLINE_DOWNLOAD:
            b64 = base64.b64encode(path.read_bytes()).decode("ascii")
            link = (f'<a download="{html.escape(path.name)}" href="data:application/zip;'
                    f'base64,{b64}">Download {html.escape(path.name)}</a>')
        else:
            link = f"Exported to <code>{html.escape(str(path))}</code>"
        return link, f"exported {name!r} to {path} ({size} bytes)"

    def _on_open_click(self, _button) -> None:
        if not self._need_selection("open"):
            return
        entry = self._guard(self.workspace.info, self.selected)
        if entry is None:
            return
        self.status = f"opened {entry.name!r}"        # a callback's own message (it may fail) comes after
        asks = [label for cb in self._open_callbacks if isinstance(label := self._guard(cb, entry), str)]
        self._open.description = asks[0] if asks else "Open"

    # ----- helpers -----------------------------------------------------------------------------
    def _refresh(self) -> None:
        kind = None if self.kind_filter == ALL else self.kind_filter
        items = self.workspace.list(kind)
        with self.hold_sync():
            self.entries = [e.name for e in items]
            keep = self.selected if self.selected in self.entries else None
            self._list.options = [(f"{e.name}  [{e.kind}, {_size(e.size)}]", e.name) for e in items]
            self._list.value = keep
            self.selected = keep

    def _after_change(self, select: str | None, message: str) -> None:
        self._refresh()
        if select in self.entries:
            self._list.value = select
        self.status = message

    def _need_selection(self, action: str) -> bool:
        if not self.selected:
            self.status = f"select an entry to {action}"
        return bool(self.selected)

    def _describe(self, name: str) -> str:
        e = self._guard(self.workspace.info, name)
        if e is None:
            return ""
        rows = [("kind", e.kind), ("created", e.created), ("source", e.source), ("method", e.method),
                ("parent", e.parent or "-"), ("files", ", ".join(e.files)), ("size", _size(e.size)),
                ("sha256", e.sha256[:16] + "...")]
        return "<table>" + "".join(f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}"
                                   f"</td></tr>" for k, v in rows) + "</table>"

    def _guard(self, fn, *args, **kwargs):
        """Run one call; on any error show it in the status line (`report`) and return None."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:     # noqa: BLE001 - the widget boundary: nothing escapes a callback
            report(self, err, f"WorkspaceView: {getattr(fn, '__name__', fn)}")
            return None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
