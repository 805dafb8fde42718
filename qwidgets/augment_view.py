"""AugmentView: preview the augmentations of a workspace image and save them as an image set.

Picking an image or moving a slider recomputes the set with `engine.imaging.augment.augment` (sliders
update on release, not while dragging) and shows PNG thumbnails; Save stores the full-size set
with `engine.imaging.augment.save_augmented` as an `imageset` usable for calibration.
"""
from __future__ import annotations

import ipywidgets as widgets
import traitlets
from PIL import Image

from engine.imaging.augment import BASIC, augment, save_augmented, to_png
from engine.workspace import Workspace
from engine.quant.progress import counted
from qwidgets._errors import report

THUMB = 160  # pixels, longest side of a preview
# flip / flop are ImageMagick's words: which mirror each is, under its thumbnail
CAPTIONS = {"flip": "flip (top-bottom)", "flop": "flop (left-right)"}


class AugmentView(widgets.VBox):
    """Image picker, angle/blur sliders, five preview thumbnails and Save-as-image-set."""

    image_name = traitlets.Unicode(None, allow_none=True, help="workspace image entry being augmented")
    angle = traitlets.Float(15.0, help="rotation in degrees, counter-clockwise")
    blur_radius = traitlets.Float(2.0, help="Gaussian blur radius in pixels")
    set_name = traitlets.Unicode("", help="name of the imageset entry Save creates")
    saved = traitlets.Unicode(None, allow_none=True, help="name of the last imageset saved")
    status = traitlets.Unicode("", help="last message shown to the user")

    def __init__(self, workspace: Workspace | None = None, **kwargs) -> None:
        self.workspace = workspace or Workspace()
        self.images: dict[str, Image.Image] = {}   # full-size outputs of the last preview
        self._auto_name: str | None = None          # the set name last filled in from the image's name
        self._picker = widgets.Dropdown(description="Image", options=[])
        self._refresh = widgets.Button(description="Refresh", icon="refresh")
        self._angle = widgets.FloatSlider(min=-180, max=180, step=1, description="Angle",
                                          continuous_update=False)
        self._radius = widgets.FloatSlider(min=0, max=10, step=0.5, description="Blur radius",
                                           continuous_update=False)
        self.thumbnails = {key: widgets.Image(format="png") for key in BASIC}
        self.captions = {key: widgets.Label(CAPTIONS.get(key, key)) for key in BASIC}
        tiles = [widgets.VBox([self.captions[key], img]) for key, img in self.thumbnails.items()]
        self._name = widgets.Text(description="Set name", placeholder="e.g. dog-aug")
        # as wide as its text (the default width cut it to "Save as image ...")
        self._save = widgets.Button(description="Save as image set", icon="save", button_style="primary",
                                    layout=widgets.Layout(width="auto", min_width="180px"))
        self._status = widgets.Label()
        super().__init__(children=[widgets.HBox([self._picker, self._refresh]),
                                   widgets.HBox([self._angle, self._radius]), widgets.HBox(tiles),
                                   widgets.HBox([self._name, self._save]), self._status], **kwargs)
        # the traits are the source of truth: link(source, target) copies source -> target first
        traitlets.link((self, "angle"), (self._angle, "value"))
        traitlets.link((self, "blur_radius"), (self._radius, "value"))
        traitlets.link((self._picker, "value"), (self, "image_name"))
        traitlets.link((self, "set_name"), (self._name, "value"))
        traitlets.dlink((self, "status"), (self._status, "value"))
        self._refresh.on_click(self._on_refresh_click)
        self._save.on_click(self._on_save_click)
        self._on_refresh_click(None)

    @traitlets.observe("image_name", "angle", "blur_radius")
    def _on_params_change(self, _change) -> None:
        self.images = {}
        if not self.image_name:
            for img in self.thumbnails.values():
                img.value = b""
            return
        try:
            self.images = augment(self.workspace.path_of(self.image_name),
                                  angle=self.angle, blur_radius=self.blur_radius)
        except Exception as err:     # noqa: BLE001 - the widget boundary (qwidgets._errors)
            report(self, err, "AugmentView: preview")
            return
        with self.hold_sync():
            for key, img in self.thumbnails.items():
                img.value = to_png(self.images[key], THUMB)
            # the name follows the picked image until the user types one (it kept the first image's
            # "dog-aug": horses' set was saved under it, or refused as existing)
            if not self.set_name or self.set_name == self._auto_name:
                self.set_name = self._auto_name = f"{self.image_name}-aug"
        self.status = f"preview of {self.image_name!r}: angle {self.angle:g}, blur {self.blur_radius:g}"

    def _on_refresh_click(self, _button) -> None:
        try:
            names = [e.name for e in self.workspace.list("image")]
        except Exception as err:     # noqa: BLE001 - the widget boundary (qwidgets._errors)
            report(self, err, "AugmentView: list images")
            return
        keep = self.image_name if self.image_name in names else (names[0] if names else None)
        self._picker.options = names
        self._picker.value = keep
        if not names:
            self.status = "no image in the workspace: upload one in the workspace view"

    def _on_save_click(self, _button) -> None:
        if not self.images:
            self.status = "pick an image first"
            return
        params = {"angle": self.angle, "blur_radius": self.blur_radius}
        try:
            entry = save_augmented(self.workspace, self.set_name.strip(), self.images,
                                   stem=self.image_name, parent=self.image_name, params=params)
        except Exception as err:     # noqa: BLE001 - the widget boundary (qwidgets._errors)
            report(self, err, "AugmentView: save")
            return
        self.saved = entry.name
        self.status = f"saved image set {entry.name!r}: {counted(len(entry.files), 'image')}"
