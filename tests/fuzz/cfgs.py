"""Small, fast base cfgs for fuzzing: real shared cfgs shrunk to a 32x32 input and few filters."""
from __future__ import annotations

import re
from functools import lru_cache

from helpers import CFG_DIR, ROOT

# real cfgs covering every layer kind the shared models use (route groups, shortcut, reorg,
# upsample, region, yolo, connected, softmax, avgpool, dropout, cost, detection via the corpus)
BASES = ("yolov3-tiny", "yolov2-tiny", "yolov2", "yolov3-tiny-prn", "yolov4-tiny", "yolov4-tiny-3l",
         "tiny", "darknet", "resnet18", "yolov3")
SMALL = {"corpus-detector": ROOT / "tests" / "corpus" / "detector.cfg",
         "corpus-weights": ROOT / "tests" / "corpus" / "weights" / "tiny.cfg"}


def shrink(text: str, size: int = 32) -> str:
    """Input size -> size x size, filters -> filters/16 (even, >= 2), heads -> 1 class.

    The conv right before a [yolo]/[region] gets filters = anchors x (5 + 1).
    """
    lines = text.splitlines()
    sections: list[tuple[str, int]] = []  # (name, line index)
    for i, ln in enumerate(lines):
        m = re.match(r"^\s*\[(\w+)\]", ln)
        if m:
            sections.append((m.group(1), i))
    out = list(lines)
    for k, (name, start) in enumerate(sections):
        end = sections[k + 1][1] if k + 1 < len(sections) else len(lines)
        nxt = sections[k + 1][0] if k + 1 < len(sections) else ""
        body = range(start + 1, end)
        if name in ("net", "network"):
            for i in body:
                out[i] = re.sub(r"^(\s*)(width|height)\s*=.*$", rf"\g<1>\g<2>={size}", out[i])
        elif name in ("yolo", "region"):
            for i in body:
                out[i] = re.sub(r"^(\s*)classes\s*=.*$", r"\g<1>classes=1", out[i])
        elif name in ("convolutional", "conv"):
            for i in body:
                m = re.match(r"^\s*filters\s*=\s*(\d+)", out[i])
                if not m:
                    continue
                if nxt in ("yolo", "region"):
                    out[i] = f"filters={_head_anchors(lines, sections, k + 1) * 6}"
                else:
                    out[i] = f"filters={max(2, int(m.group(1)) // 32 * 2)}"
    return "\n".join(out) + "\n"


def _head_anchors(lines: list[str], sections, k: int) -> int:
    start = sections[k][1]
    end = sections[k + 1][1] if k + 1 < len(sections) else len(lines)
    keys = dict(re.match(r"^\s*(\w+)\s*=\s*(.*)$", ln).groups() for ln in lines[start + 1:end]
                if re.match(r"^\s*\w+\s*=", ln))
    if "mask" in keys:
        return len([v for v in keys["mask"].replace(" ", "").split(",") if v])
    return int(keys.get("num", "1"))


@lru_cache(maxsize=None)
def base_texts() -> dict[str, str]:
    texts = {name: shrink((CFG_DIR / f"{name}.cfg").read_text()) for name in BASES}
    texts.update({name: p.read_text() for name, p in SMALL.items()})
    return texts
