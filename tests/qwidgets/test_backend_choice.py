"""The Backend dropdown of the Explorer's batch views (Compare, Rank images, mixed-precision Search):
picking ONNX Runtime gives the NumPy engine's results (INT identical with the onnxruntime profile, the
FLOAT reference within 1e-4), and what ORT cannot run shows the engine's reason in the status line."""
from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

import engine  # noqa: E402
from engine.export import ort_backend  # noqa: E402
from engine.imaging.samples import sample  # noqa: E402
from engine.quant.qmodel import quantize_model  # noqa: E402
from qwidgets.backend_choice import BackendChoice  # noqa: E402
from qwidgets.images_view import WorstImagesView  # noqa: E402
from qwidgets.mixed_view import MixedPrecisionView  # noqa: E402
from qwidgets.quant_view import QuantizationView  # noqa: E402


@pytest.fixture(scope="module")
def tiny_ort(tiny, tiny_stats):
    return quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="onnxruntime")


def test_the_choice_offers_the_engine_backends():
    choice = BackendChoice()
    assert [v for _, v in choice.options] == list(ort_backend.BACKENDS) and choice.value == "numpy"


def same_agreement(a, b) -> None:
    assert (a.matched, a.missed, a.extra) == (b.matched, b.missed, b.extra)
    assert abs(a.map50_95 - b.map50_95) <= 1e-4 and abs(a.map50 - b.map50) <= 1e-4


def test_compare_on_onnxruntime_equals_numpy_and_refusal_is_shown(tiny):
    tables = {}
    for backend in ("numpy", "onnxruntime"):
        ort_backend.clear_sessions()
        qv = QuantizationView(engine.Session(tiny), images=[sample("dog")], methods=("minmax",))
        qv.profile_choice.value, qv.backend.value = "onnxruntime", backend
        qv.compare_button.click()
        qv.wait()
        assert qv.status.startswith("compared 1 method on"), qv.status
        assert bool(ort_backend._SESSIONS) == (backend == "onnxruntime")    # the runs went where picked
        tables[backend] = qv.table
    a, b = (tables[k].best for k in ("numpy", "onnxruntime"))
    assert a.agreement["int"].matched > 3
    for mode in ("int", "hybrid"):
        same_agreement(a.agreement[mode], b.agreement[mode])
    qv = QuantizationView(engine.Session(tiny), images=[sample("dog")], methods=("minmax",))
    qv.backend.value = "onnxruntime"                                 # profile qwidgets: ORT cannot run its INT
    qv.compare_button.click()
    qv.wait()
    assert qv.status.startswith("error: backend='onnxruntime' cannot run INT") and "profile 'qwidgets'" in qv.status
    assert qv.error_details == "" and "Traceback" not in qv.status
    qv.backend.value = "auto"                                        # auto: NumPy where ORT cannot
    qv.compare_button.click()
    qv.wait()
    assert qv.status.startswith("compared 1 method on"), qv.status


def test_rank_images_on_onnxruntime_equals_numpy_and_hybrid_is_refused(tiny, tiny_ort):
    images = [sample("dog"), sample("horses")]
    rows = {}
    for backend in ("numpy", "onnxruntime"):
        view = WorstImagesView(engine.Session(tiny, tiny_ort, mode="int"), images=images, background=False)
        view.backend.value = backend
        view.rank_button.click()
        assert view.status.startswith("ranked 2 images"), view.status
        rows[backend] = view.rows
    for a, b in zip(rows["numpy"], rows["onnxruntime"]):
        assert (a.index, a.name, a.n_float, a.lost, a.shifted, a.extra) == (b.index, b.name, b.n_float, b.lost,
                                                                              b.shifted, b.extra)
        assert abs(a.map50 - b.map50) <= 1e-4 and abs(a.map50_95 - b.map50_95) <= 1e-4
    assert sum(r.n_float for r in rows["numpy"]) > 5
    view = WorstImagesView(engine.Session(tiny, tiny_ort, mode="hybrid"), images=images, background=False)
    view.backend.value = "onnxruntime"
    view.rank_button.click()
    assert view.status.startswith("error: backend='onnxruntime' cannot run HYBRID"), view.status
    assert view.error_details == "" and not view.rows and not view.rank_button.disabled


def test_mixed_search_shows_the_refusal_for_a_profile_ort_cannot_run(tiny, tiny_q):
    view = MixedPrecisionView(engine.Session(tiny, tiny_q, mode="int"), images=[sample("dog")], background=False)
    view.backend.value = "onnxruntime"
    view.search_button.click()
    assert view.status.startswith("error: backend='onnxruntime' cannot run"), view.status
    assert "profile" in view.status and view.error_details == "" and view.result is None
