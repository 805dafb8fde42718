"""Draw detections on an image with Pillow (for notebooks and the Explorer)."""
from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw

from engine.darknet.image import ImageLike, open_image

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190)]


def draw_detections(image: ImageLike, detections: Sequence, width: int = 3) -> Image.Image:
    """A copy of `image` with each detection's box and 'name score' label (colour by class)."""
    im = open_image(image).copy()
    draw = ImageDraw.Draw(im)
    for d in detections:
        color = PALETTE[d.class_id % len(PALETTE)]
        box = [max(0, d.x1), max(0, d.y1), min(im.width - 1, d.x2), min(im.height - 1, d.y2)]
        draw.rectangle(box, outline=color, width=width)
        label = f"{d.name} {d.score:.2f}"
        tw = draw.textlength(label)
        draw.rectangle([box[0], max(0, box[1] - 12), box[0] + tw + 4, max(12, box[1])], fill=color)
        draw.text((box[0] + 2, max(0, box[1] - 12)), label, fill=(0, 0, 0))
    return im
