"""The worst-images ranking over many images on a backend (this process or Dask), the in-process rows.

    rows = rank_images(model, qmodel, "int", images, backend=DaskBackend(client))   # == quant's rank_images

`engine.quant.worst_images.rank_images` runs in this process; here batches of the images run as tasks
(`rank_batch`) and their rows, in the images' order, are ranked by the same `worst_first`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

from engine.calib.collect import image_list
from engine.darknet.detect import require_head
from engine.export.ort_backend import resolve, split_backend
from engine.quant.modes import QUANT_MODES, float_layer_indices
from engine.quant.worst_images import ImageAgreement, image_agreements, image_name, worst_first
from engine.quant.worst_images import rank_images as rank_here
from engine.scale.backends import qmodel_ref, shippable_items
from engine.scale.sources import load_source, resolve_qmodel


def rank_batch(source: Any, qref: Any, mode: str, float_layers: tuple[int, ...], resize: str, thresh: float,
               nms: float, runtime: str, batch: list) -> list[ImageAgreement]:
    """One batch's rows (run on a worker; `index` and `name` are the batch's, the caller sets the set's)."""
    return image_agreements(load_source(source), resolve_qmodel(qref), mode, batch, float_layers=float_layers,
                            resize=resize, thresh=thresh, nms=nms, backend=runtime)


def rank_images(model_source: Any, qmodel: Any, mode: str, images: Sequence, *, float_layers: Sequence[int] = (),
                resize: str = "letterbox", thresh: float = 0.25, nms: float = 0.45,
                on_progress: Callable[[int, int], Any] | None = None, backend: Any = None,
                batch_size: int | None = None, progress: bool = False) -> list[ImageAgreement]:
    """`engine.quant.worst_images.rank_images` with `backend` an InProcess / DaskBackend (its `runtime`), or a
    runtime name ("numpy" | "onnxruntime" | "auto": that function, in this process). The same rows, worst first.
    on_progress(done, total) as each batch's rows arrive (it may raise to cancel: the batches not done are).

    Raises:
        ValueError: a mode other than int / hybrid, or a float layer the model lacks (before any work).
        EngineError: a model without a detection head; a mode ORT cannot run with runtime "onnxruntime"; a bad
            image; the cluster failing."""
    where, runtime = split_backend(backend)
    qm = resolve_qmodel(qmodel)
    if where is None:
        return rank_here(load_source(model_source), qm, mode, images, float_layers=float_layers, resize=resize,
                         thresh=thresh, nms=nms, on_progress=on_progress, backend=runtime)
    if mode not in QUANT_MODES:               # refused here, not on a worker for every batch
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(QUANT_MODES)} (FLOAT is the reference)")
    model = load_source(model_source)
    require_head(model, "rank_images")       # here, not on a worker for every batch
    kept = float_layer_indices(model, float_layers)
    if runtime == "onnxruntime":              # ORT's refusal before any image is shipped
        resolve(runtime, model, None, "float")
        resolve(runtime, model, qm, mode, kept)
    listed = image_list(images, "evaluation")
    done = 0

    def arrived(first: int, batch: list) -> None:
        nonlocal done
        done += len(batch)
        if on_progress is not None:
            on_progress(done, len(listed))
    parts = where.map_batches(rank_batch, shippable_items(listed), batch_size, progress, "ranking images",
                              args=(where.portable(model_source), qmodel_ref(qmodel, where), mode, kept, resize,
                                    thresh, nms, runtime), on_batch=arrived)
    rows = [r for part in parts for r in part]
    # a task numbers its batch from 0: each row gets its place (and name) in the whole list, as in this process
    return worst_first([replace(r, index=k, name=image_name(image, k))
                        for k, (r, image) in enumerate(zip(rows, listed))])
