"""Decoding of [yolo] / [region] / [detection] heads, Darknet's per-class NMS, and boxes in original pixels.

Follows pj `get_network_boxes` + `do_nms_sort` (darknet-semantics.md B.6): thresholds are strict
(`> thresh`), a box's class probability is objectness x class score, NMS is greedy per class by
probability with suppression when IoU > nms, and boxes are mapped back through the letterbox.
"""
from __future__ import annotations

import gc
import operator
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from engine.darknet.image import Preprocessed
from engine.errors import EngineError
from engine.darknet.nms import box_diou, box_iou, nms_sort, nms_suppressed  # noqa: F401  (re-exported)


class Detection(NamedTuple):
    """One (box, class) pair above threshold. cx..h relative to the image; x1..y2 in pixels, unclipped.

    Immutable. A NamedTuple rather than a dataclass: an untrained model can give 100k+ detections,
    and a tuple is made ~4x faster (detect_outputs builds them in one pass)."""
    class_id: int
    name: str
    score: float
    objectness: float
    cx: float
    cy: float
    w: float
    h: float
    x1: float
    y1: float
    x2: float
    y2: float

    def to_dict(self) -> dict:
        return dict(self._asdict())


@dataclass
class Candidates:
    """Boxes (N, 4) as cx, cy, w, h relative to the network input, objectness (N,), probs (N, K)."""
    boxes: np.ndarray
    objectness: np.ndarray
    probs: np.ndarray


def _yolo_kept(y: np.ndarray, a: int, classes: int, thresh: float) -> np.ndarray:
    """Indices (cell, then anchor) of the boxes whose objectness passes `thresh` (strict)."""
    _, h, w = y.shape
    return np.flatnonzero(y.reshape(a, 5 + classes, h * w)[:, 4].T.reshape(-1) > thresh)


def decode_yolo(y: np.ndarray, mask: Sequence[int], anchors: Sequence[float], classes: int, net_w: int, net_h: int,
                thresh: float, keep: np.ndarray | None = None, probs_out: np.ndarray | None = None) -> Candidates:
    """y: the [yolo] layer output (A*(5+K), H, W), already activated. Order: cell row-major, then anchor.
    `keep` (from `_yolo_kept`) and `probs_out` (rows for the probs): from `candidates`, which writes
    every head's probs into one array instead of concatenating copies."""
    a = len(mask)
    _, h, w = y.shape
    keep = _yolo_kept(y, a, classes, thresh) if keep is None else keep
    y = y.reshape(a, 5 + classes, h * w)
    if keep.size * COPY_KEPT > a * h * w:
        # most boxes kept: one sequential copy of the head, then the gather from it. Straight from a
        # head cold in cache (as after a forward) the gather walks 5+K planes at once, a cache miss per
        # element; the copy streams (cold, yolov3-tiny's 26x26 head: 191 -> 109 us, 13x13: 111 -> 59 us)
        y = y.copy()
    cell, anchor = np.divmod(keep, a)
    t = y[anchor, :, cell]                      # (n, 5+K) rows of the kept boxes only, float32
    row, col = np.divmod(cell, w)
    aw = np.array([anchors[2 * m] for m in mask], np.float64)[anchor]
    ah = np.array([anchors[2 * m + 1] for m in mask], np.float64)[anchor]
    tx, ty, tw, th, to = (t[:, j].astype(np.float64) for j in range(5))
    boxes = np.stack([(col + tx) / w, (row + ty) / h, np.exp(tw) * aw / net_w, np.exp(th) * ah / net_h], axis=1)
    # float32 in, exact float64 products (24-bit mantissas); converting first is 2x faster than the
    # mixed-dtype multiply
    probs = np.empty((keep.size, classes)) if probs_out is None else probs_out
    probs[...] = t[:, 5:]
    probs *= to[:, None]
    np.putmask(probs, probs <= thresh, 0.0)
    return Candidates(boxes, to, probs)


COPY_KEPT = 4   # copy the head first when more than 1/COPY_KEPT of its boxes are kept


def decode_region(y: np.ndarray, num: int, anchors: Sequence[float], classes: int, thresh: float) -> Candidates:
    """y: the [region] output (num*(5+K), H, W), activated. Every cell/anchor is a candidate (as pj)."""
    _, h, w = y.shape
    t = y.reshape(num, 5 + classes, h, w).transpose(2, 3, 0, 1).reshape(h * w * num, 5 + classes).astype(np.float64)
    cell, anchor = np.divmod(np.arange(h * w * num), num)
    row, col = np.divmod(cell, w)
    an = np.asarray(anchors, np.float64)
    boxes = np.stack([(col + t[:, 0]) / w, (row + t[:, 1]) / h, np.exp(t[:, 2]) * an[2 * anchor] / w,
                      np.exp(t[:, 3]) * an[2 * anchor + 1] / h], axis=1)
    obj = np.where(t[:, 4] > thresh, t[:, 4], 0.0)
    probs = obj[:, None] * t[:, 5:]
    probs[probs <= thresh] = 0.0
    keep = np.flatnonzero(obj > 0)
    return Candidates(boxes[keep], obj[keep], probs[keep])


def decode_detection(y: np.ndarray, side: int, num: int, classes: int, sqrt: int, thresh: float) -> Candidates:
    """y: the [detection] (YOLOv1) output, flat [S*S*K class scores][S*S*B confidences][S*S*B*4 coords]
    (softmax already applied if the cfg asks). As Darknet's get_detection_detections: order cell (row-major),
    then box; x, y relative to the cell, w, h squared when sqrt=1; a class probability is confidence x
    class score, kept when above `thresh`. Boxes of confidence 0 are no candidates (do_nms_sort drops them)."""
    cells = side * side
    flat = np.asarray(y).reshape(-1).astype(np.float64)
    scores = flat[:cells * classes].reshape(cells, classes)
    conf = flat[cells * classes:cells * (classes + num)]
    t = flat[cells * (classes + num):].reshape(cells * num, 4)
    cell = np.arange(cells * num) // num
    row, col = np.divmod(cell, side)
    power = 2.0 if sqrt else 1.0
    boxes = np.stack([(t[:, 0] + col) / side, (t[:, 1] + row) / side, t[:, 2] ** power, t[:, 3] ** power], axis=1)
    probs = conf[:, None] * scores[cell]
    probs[~(probs > thresh)] = 0.0
    keep = np.flatnonzero(conf != 0)
    return Candidates(boxes[keep], conf[keep], probs[keep])


def correct_boxes(boxes: np.ndarray, pre: Preprocessed) -> np.ndarray:
    """Map boxes relative to the network input back to relative-to-image (undo the letterbox)."""
    _, net_h, net_w = pre.x.shape
    new_w, new_h = pre.inner_size()
    b = boxes.copy()
    b[:, 0] = (b[:, 0] - (net_w - new_w) / 2.0 / net_w) / (new_w / net_w)
    b[:, 1] = (b[:, 1] - (net_h - new_h) / 2.0 / net_h) / (new_h / net_h)
    b[:, 2] *= net_w / new_w
    b[:, 3] *= net_h / new_h
    return b


def merge(parts: list[Candidates], classes: int) -> Candidates:
    if not parts:
        return Candidates(np.zeros((0, 4)), np.zeros(0), np.zeros((0, classes)))
    return Candidates(np.concatenate([p.boxes for p in parts]), np.concatenate([p.objectness for p in parts]),
                      np.concatenate([p.probs for p in parts]))


def candidates(model, outs: Sequence[np.ndarray], thresh: float) -> tuple[Candidates, str]:
    """Decode every detection head of `model` from its outputs (network-relative boxes)."""
    _, net_h, net_w = model.input_shape
    heads, kind = [], "default"
    for layer in model.layers:       # outs may dequantize on access: read the heads only
        if layer.kind in ("yolo", "region", "detection"):
            y = outs[layer.index]
            keep = _yolo_kept(y, len(layer.mask), layer.classes, thresh) if layer.kind == "yolo" else None
            heads.append((layer, y, keep))
            kind = layer.nms_kind if layer.kind == "yolo" and layer.nms_kind == "greedynms" else kind
    if not all(layer.kind == "yolo" and layer.classes == model.num_classes for layer, _, _ in heads):
        return merge([_decode(layer, y, keep, net_w, net_h, thresh) for layer, y, keep in heads],
                     model.num_classes), kind
    # [yolo] heads only: each writes its probs into its rows of one array (no concatenated copy)
    probs = np.empty((sum(keep.size for _, _, keep in heads), model.num_classes))
    ends = np.cumsum([0] + [keep.size for _, _, keep in heads])
    parts = [_decode(layer, y, keep, net_w, net_h, thresh, probs[s:e])
             for (layer, y, keep), s, e in zip(heads, ends[:-1], ends[1:])]
    if not parts:
        return merge(parts, model.num_classes), kind
    return Candidates(np.concatenate([p.boxes for p in parts]), np.concatenate([p.objectness for p in parts]),
                      probs), kind


def _decode(layer, y: np.ndarray, keep, net_w: int, net_h: int, thresh: float, probs_out=None) -> Candidates:
    if layer.kind == "yolo":
        return decode_yolo(y, layer.mask, layer.anchors, layer.classes, net_w, net_h, thresh, keep, probs_out)
    if layer.kind == "detection":
        return decode_detection(y, layer.side, layer.num, layer.classes, layer.sqrt, thresh)
    return decode_region(y, layer.num, layer.anchors, layer.classes, thresh)


def checked_names(model, path):
    """`model`, after an EngineWarning if its names file `path` holds another count than its classes:
    the detections still run (a class without a name is labelled class_N, below), but a names file of
    another model would label every box wrongly."""
    import warnings
    from engine.errors import EngineWarning
    have, classes = len(model.class_names), model.num_classes
    if have < classes:
        warnings.warn(f"{path}: {have} class names for a model of {classes} classes; classes {have}..{classes - 1} "
                      "are shown as class_N (expected one name per line, one per class)", EngineWarning, stacklevel=3)
    elif have > classes:
        warnings.warn(f"{path}: {have} class names for a model of {classes} classes; the last {have - classes} are "
                      "never used (is it the names file of another model?)", EngineWarning, stacklevel=3)
    return model


def head_kinds() -> list[str]:
    """The registered layer kinds that are detection heads (their outputs decode into boxes), sorted."""
    from engine.layers.base import LAYERS
    return sorted(k for k in LAYERS.names() if LAYERS.get(k).is_head)


def require_head(model, what: str, name: str | None = None) -> None:
    """Refuse a model without a detection head (a classifier or a backbone) where detections are the point:
    it has none to find, so `detect` printed "0 detections" and `montecarlo` / `worst-images` scored every
    image as agreeing perfectly with FLOAT (no detections on either side).

    Raises: EngineError naming the model (`name`, else its graph's name), `what` needs a head, and its last layer."""
    if any(layer.is_head for layer in model.layers):
        return
    kinds = [f"[{k}]" for k in head_kinds()]
    last = model.layers[-1]
    raise EngineError(f"{name or model.graph.name}: {what} needs a detection head ({', '.join(kinds[:-1])} or "
                      f"{kinds[-1]}) and this model has none: its {len(model.layers)} layers end with layer "
                      f"{last.index} [{last.kind}] (a classifier or a backbone has no detections to find)")


def detect_outputs(model, outs: Sequence[np.ndarray], pre: Preprocessed, thresh: float = 0.25,
                   nms: float = 0.45) -> "Detections":
    """Detections (sorted by score, highest first) from a forward pass's outputs: a `Detections`
    (a read-only list view; see there)."""
    if not 0 <= thresh < 1:
        raise ValueError(f"thresh={thresh}: expected 0 <= thresh < 1")
    if not 0 <= nms <= 1:
        raise ValueError(f"nms={nms}: expected 0 <= nms <= 1")
    c, kind = candidates(model, outs, thresh)
    names = model.class_names
    label = [names[j] if j < len(names) else f"class_{j}" for j in range(c.probs.shape[1])]
    if c.boxes.shape[0] == 0:
        return Detections(label, np.zeros((0, 10)), np.zeros(0), np.zeros(0, np.int64), 1)
    c.boxes = correct_boxes(c.boxes, pre)
    probs = c.probs
    # above thresh and not what nms_sort would zero (no zeroed copy of probs), as flat (box, class)
    # indices (15x faster than the 2-D np.nonzero here); ranked (highest first, ties in (box, class)
    # order) when the view is first read in order: `len` needs no sort
    stand = probs > thresh
    gone = nms_suppressed(c, nms, kind)
    if gone is not None:
        stand &= np.logical_not(gone, out=gone)
    flat = np.flatnonzero(stand)
    # per box (objectness, cx, cy, w, h, pixel corners: the same arithmetic, once a box rather than
    # once a detection); `Detections.values` gathers one row per detection when first read
    table = np.empty((probs.shape[0], 10))
    table[:, 1] = c.objectness
    table[:, 2:6] = c.boxes
    cx, cy, w, h = c.boxes.T
    half_w, half_h = w / 2, h / 2
    np.multiply(cx - half_w, pre.image_w, out=table[:, 6])
    np.multiply(cy - half_h, pre.image_h, out=table[:, 7])
    np.multiply(cx + half_w, pre.image_w, out=table[:, 8])
    np.multiply(cy + half_h, pre.image_h, out=table[:, 9])
    return Detections(label, table, probs.reshape(-1), flat, probs.shape[1])


def score_order(score: np.ndarray) -> np.ndarray:
    """The permutation sorting `score` highest first, equal scores in index order: what a stable
    argsort of -score gives (`ranked` over every index)."""
    return ranked(np.asarray(score, np.float64).reshape(-1), np.arange(np.size(score)))[0]


def ranked(scores: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """idx (ascending indices into the 1-D float64 `scores`) ordered by score highest first, equal
    scores in index order (a stable argsort of -scores[idx]), and their scores in that order.

    Non-negative finite scores (detections') as a stable sort of 32-bit keys, the scores rounded to
    float32 (monotone, so its bits order as the scores do), in two passes of NumPy's radix sort on
    16-bit digits: stable, so equal keys stay in index order. 100k scores 1.5 ms, against 3.7 ms for a
    sort of packed 64-bit keys (NumPy's sorts of 32/64-bit keys are comparison sorts here). Then a
    lexsort of the runs where two different scores rounded to one float32 (a few hundred in 100k
    scores from float32 products). Other scores: an unstable argsort plus a lexsort of tied runs."""
    n = idx.size
    s = scores[idx]
    if n < 2 or int(s.view(np.uint64).max()) >= 0x7FF0000000000000:   # not all in +0.0 .. the largest finite
        out = idx[_score_order_ties(s)]
        return out, scores[out]
    key = s.astype(np.float32).view(np.uint32)
    np.invert(key, out=key)                     # highest score first
    o = np.argsort(key.astype(np.uint16), kind="stable")              # the low digit (wraps: mod 2^16)
    np.right_shift(key, np.uint32(16), out=key)
    o = o[np.argsort(key.astype(np.uint16)[o], kind="stable")]
    out, s = idx[o], s[o]
    wrong = s[1:] > s[:-1]                      # only where two different scores share a float32
    if wrong.any():
        top = s.astype(np.float32)
        run = np.cumsum(np.concatenate(([True], top[1:] != top[:-1])))   # runs of equal float32
        bad = np.zeros(int(run[-1]) + 1, bool)
        bad[run[1:][wrong]] = True
        pos = np.flatnonzero(bad[run])
        fix = np.lexsort((out[pos], -s[pos], run[pos]))
        out[pos], s[pos] = out[pos][fix], s[pos][fix]
    return out, s


def _score_order_ties(score: np.ndarray) -> np.ndarray:
    order = np.argsort(-score)
    s = score[order]
    tie = s[1:] == s[:-1]
    if tie.any():
        in_run = np.zeros(s.size, bool)
        in_run[1:] |= tie
        in_run[:-1] |= tie
        pos = np.flatnonzero(in_run)
        run = np.cumsum(np.concatenate(([True], ~tie)))[pos]   # runs of equal scores, numbered
        order[pos] = order[pos][np.lexsort((order[pos], run))]
    return order


class Detections(SequenceABC):
    """The detections of one image, highest score first: a read-only list of `Detection` kept as
    arrays and turned into tuples on first use (an untrained yolov3 gives 150k+ detections, and
    building them all took longer than decode + NMS; a caller that reads the top few, or only
    `len`, never pays for the rest). Equal to a list of the same Detections; `+` and slices give lists.

    Arrays: `class_ids` (N,) int, `values` (10, N) float64: score, objectness, cx, cy, w, h, x1, y1, x2, y2,
    gathered on first read from the per-box `table` (B, 10) (the gather is a fresh 12 MB on an
    untrained yolov3: its page faults alone cost more than the NMS after a forward).

    Ordered lazily: built from the survivors' flat (box, class) indices `flat` (ascending) into the
    1-D `scores` (B x classes), ranked by `ranked` (a radix sort of N keys: 1.5 ms of 100k on random
    yolov3-tiny) on the first read that needs the order (an item, `class_ids`, `values`,
    iteration, comparison); `len` and truthiness need none.
    """

    def __init__(self, labels: list[str], table: np.ndarray, scores: np.ndarray, flat: np.ndarray,
                 classes: int) -> None:
        self.labels = labels
        self._table, self._scores, self._flat, self._classes = table, scores, flat, classes
        self._order: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None   # class_ids, box, score
        self._values: np.ndarray | None = None
        self._rows: list[Detection] | None = None
        self._one: dict[int, Detection] = {}   # items read singly: the same object on every read

    def _ranked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class_ids, box, score) per detection, highest score first: sorted on first call."""
        if self._order is None:
            flat, score = ranked(self._scores, self._flat)
            box = flat // self._classes             # floor_divide: 5x faster than np.divmod here
            self._order = (flat - box * self._classes, box, score)
            self._scores = None                     # every probability of the image: no longer needed
        return self._order

    @property
    def class_ids(self) -> np.ndarray:
        return self._ranked()[0]

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            _, box, score = self._ranked()
            rows = np.take(self._table, box, axis=0)   # a 2x faster take than 9 column gathers
            rows[:, 0] = score
            self._values = rows.T
            self._values.flags.writeable = False
        return self._values

    def _all(self) -> list[Detection]:
        if self._rows is None:
            k = self.class_ids.tolist()
            cols = [k, [self.labels[j] for j in k]] + [v.tolist() for v in self.values]
            paused = gc.isenabled()   # many small objects: the cyclic GC would rescan them over and over
            gc.disable()
            try:
                new = tuple.__new__
                rows = [new(Detection, row) for row in zip(*cols)]
            finally:
                if paused:
                    gc.enable()
            for i, d in self._one.items():   # identity is kept (callers may key on id(d))
                rows[i] = d
            self._rows = rows
        return self._rows

    def __len__(self) -> int:
        return self._flat.size

    def __getitem__(self, index):
        n = self._flat.size
        if isinstance(index, slice) and self._rows is None:
            picked = range(*index.indices(n))
            if len(picked) * 4 < n:         # a top few (dets[:10]) must not build 150k tuples
                return [self[i] for i in picked]
        if self._rows is not None or isinstance(index, slice):
            return self._all()[index]
        i = operator.index(index)
        if not -n <= i < n:
            raise IndexError("Detections index out of range")
        i %= n
        d = self._one.get(i)
        if d is None:
            class_ids, box, score = self._ranked()
            k = int(class_ids[i])
            row = self._table[box[i]].tolist()
            row[0] = float(score[i])
            d = self._one[i] = Detection(k, self.labels[k], *row)
        return d

    def __iter__(self):
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, Detections)):
            return self._all() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  (mutable-list semantics: unhashable, like a list)

    def __add__(self, other) -> list[Detection]:
        return self._all() + list(other)

    def __radd__(self, other) -> list[Detection]:
        return list(other) + self._all()

    def __repr__(self) -> str:
        return repr(self._all())
