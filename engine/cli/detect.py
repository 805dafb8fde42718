"""`detect`: objects in images, as text or JSON (FLOAT, or HYBRID/INT with a quantized model)."""
from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from engine.cli.options import (NMS_HELP, THRESH_HELP, add_model_args, forward_for, json_text, load_model, number,
                                thresh_type)
from engine.errors import EngineError, FileError
from engine.quant.progress import counted

# formats Pillow writes that keep the input's extension; anything else is saved as .png
_SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF", ".webp": "WEBP"}


def add_detect_parser(sub: argparse._SubParsersAction) -> None:
    """Add `detect`."""
    s = sub.add_parser("detect", help="detect objects in images")
    add_model_args(s)
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ... as Pillow reads them)")
    s.add_argument("--thresh", type=thresh_type(), default=0.25,
                   help=THRESH_HELP)
    s.add_argument("--nms", type=number("IoU", 0, 1, lo_open=False), default=0.45, help=NMS_HELP)
    s.add_argument("--json", action="store_true", help="print the detections of every image as JSON (docs/cli.md)")
    s.add_argument("--save", metavar="DIR", help="also write each image with its boxes drawn and labelled "
                   "(colour by class) into DIR (created if absent), under the image's own file name")
    s.set_defaults(func=cmd_detect)


def cmd_detect(args: argparse.Namespace) -> int:
    from engine.darknet.detect import detect_outputs, require_head
    save_dir = save_folder(args.save) if args.save else None
    written: set[str] = set()      # names this run saved: two inputs photo.jpg get photo.jpg, photo-1.jpg
    if save_dir is not None:       # never replace an input image (detect photos/a.jpg --save photos)
        inputs = {_inode(image) for image in args.images} - {None}
        written |= {p.name for p in save_dir.iterdir() if _inode(p) in inputs}
    model = load_model(args)
    require_head(model, "detect", args.model)
    forward = forward_for(model, args)
    result: dict[str, dict] = {}
    failed = 0
    for image in args.images:
        name = Path(image).name
        if name in result:         # a/photo.jpg and b/photo.jpg: the second is keyed by its path as given
            name, base, k = image, image, 1
            while name in result:
                name, k = f"{base}#{k}", k + 1
        try:
            pre = model.preprocess(image, args.resize)
            dets = detect_outputs(model, forward(pre.x), pre, args.thresh, args.nms)
            if save_dir is not None:
                out = save_drawn(image, dets, save_dir, written)
                print(f"saved {out}", file=sys.stderr)
        except EngineError as err:
            failed += 1
            result[name] = {"error": str(err), "detections": []}
            print(f"error: {err}", file=sys.stderr)
            continue
        result[name] = {"width": pre.image_w, "height": pre.image_h, "detections": [d.to_dict() for d in dets]}
    if args.json:
        print(json_text({"images": result}))
    else:
        for name, r in result.items():
            if "error" in r:        # reported on stderr above; "0 detections" would be a lie
                continue
            print(f"{name}: {counted(len(r['detections']), 'detection')}")
            for d in r["detections"]:
                print(f"  {d['name']}: {100 * d['score']:.0f}%  box ({d['x1']:.0f}, {d['y1']:.0f}) - "
                      f"({d['x2']:.0f}, {d['y2']:.0f})")
    return 1 if failed else 0


def save_folder(path: str) -> Path:
    """--save DIR: created if absent (its parent must exist); anything but a folder is refused."""
    folder = Path(path)
    try:
        folder.mkdir(exist_ok=True)
    except FileNotFoundError:
        raise FileError(f"--save {folder}: the folder {folder.parent} does not exist; create it first") from None
    except OSError as err:
        raise FileError(f"--save {folder}: {err.strerror or err}") from None
    if not folder.is_dir():
        raise FileError(f"--save {folder}: exists and is not a folder")
    return folder


def _inode(path) -> tuple[int, int] | None:
    """(device, inode) of a regular file, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def save_drawn(image: str, dets, folder: Path, written: set[str]) -> Path:
    """Write `image` with `dets` drawn into `folder` atomically, under its own name (unique in this run)."""
    from engine.atomic import atomic_write
    from engine.imaging.draw import draw_detections
    src = Path(image)
    ext = src.suffix.lower() if src.suffix.lower() in _SAVE_FORMATS else ".png"
    stem, n = src.stem, 1
    name = stem + ext
    while name in written:
        name, n = f"{stem}-{n}{ext}", n + 1
    drawn = draw_detections(image, dets)
    out = atomic_write(folder / name, lambda f: drawn.save(f, format=_SAVE_FORMATS[ext]))
    written.add(name)
    return out
