"""The network input a session runs on, from whatever names an image (path, array, PIL, tensor)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.darknet.image import Preprocessed, open_image


def session_input(model, image, resize: str,
                  name: str | None = None) -> tuple[Preprocessed, object | None, str | None]:
    """(network input, the decoded original as a PIL image or None when only a tensor is known,
    its file name if any). No image: the bundled dog photo. `name`: the file name of an image given as
    bytes or an array (an upload), for its errors and the session's `image_name`."""
    if image is None:
        from engine.imaging.samples import sample
        image = sample("dog")
    given = name
    name = name or (image if isinstance(image, (str, Path)) else getattr(image, "filename", None))
    name = Path(name).name if name else None
    if isinstance(image, Preprocessed):
        return image, None, name
    if isinstance(image, np.ndarray) and image.shape == model.input_shape and image.dtype == np.float32:
        _, h, w = image.shape
        return Preprocessed(model.check_input(image), w, h, "stretch"), None, name
    original = None
    if not isinstance(image, np.ndarray):
        image = original = open_image(image, name=given)
    return model.preprocess(image, resize), original, name
