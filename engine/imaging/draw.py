"""Draw detections on an image with Pillow (for notebooks and the Explorer)."""
from __future__ import annotations

from typing import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from engine.darknet.image import ImageLike, open_image

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190)]


def class_colors(*detection_lists: Sequence) -> dict[int, tuple[int, int, int]]:
    """A distinct colour per class present in the lists (first seen, first colour), not class_id % 10:
    two classes in one picture never share a colour while there are at most len(PALETTE) of them."""
    out: dict[int, tuple[int, int, int]] = {}
    for dets in detection_lists:
        for d in dets:
            if d.class_id not in out:
                out[d.class_id] = PALETTE[len(out) % len(PALETTE)]
    return out


def draw_detections(image: ImageLike, detections: Sequence, width: int | None = None, *, scale: float = 1.0,
                    font_size: int | None = None, colors: Mapping[int, tuple] | None = None,
                    labels: Sequence[str] | None = None) -> Image.Image:
    """A copy of `image` with each detection's box and 'name score' label (colour by class).

    Line width and label size follow the image size (default: about 1/200 and 1/40 of its
    shorter side), label text is black or white, whichever reads on the class colour.
    scale: boxes are multiplied by it (draw on a resized image); font_size: label text size in pixels;
    colors: class_id -> RGB (default by class_id); labels: one text per detection instead of 'name score'."""
    im = open_image(image).copy()
    draw = ImageDraw.Draw(im)
    side = min(im.width, im.height)
    width = width or max(2, round(side / 200))
    font = ImageFont.load_default(size=font_size or max(10, round(side / 40)))
    placed: list[tuple[float, float, float, float]] = []
    for k, d in enumerate(detections):
        color = (colors or {}).get(d.class_id, PALETTE[d.class_id % len(PALETTE)])
        box = [max(0, d.x1 * scale), max(0, d.y1 * scale), min(im.width - 1, d.x2 * scale),
               min(im.height - 1, d.y2 * scale)]
        if not (box[0] <= box[2] and box[1] <= box[3]):   # entirely outside the image (or NaN): nothing to draw
            continue
        draw.rectangle(box, outline=color, width=width)
        label = labels[k] if labels is not None else f"{d.name} {d.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        th, tw = bottom - top + 4, right - left + 6
        y = box[1] - th if box[1] >= th else box[1]          # above the box, inside it at the top edge
        y = free_row(placed, box[0], y, tw, th, im.height)
        placed.append((box[0], y, box[0] + tw, y + th))
        draw.rectangle([box[0], y, box[0] + tw, y + th], fill=color)
        ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 else (255, 255, 255)
        draw.text((box[0] + 3, y + 2 - top), label, fill=ink, font=font)
    return im


def free_row(placed: Sequence[tuple[float, float, float, float]], x: float, y: float, w: float, h: float,
             height: int) -> float:
    """The top of a w x h label at (x, y), moved down below every label already `placed` it would cover (boxes
    sharing a corner, e.g. a car also detected as a truck, drew one label over the other: '1 car' hid '2 truck').
    Stays at `y` when no free place is left above the image's bottom (`height`)."""
    top = y
    for _ in range(len(placed) + 1):
        hit = [p for p in placed if p[0] < x + w and x < p[2] and p[1] < top + h and top < p[3]]
        if not hit:
            break
        top = max(p[3] for p in hit)
    return top if top + h <= height else y
