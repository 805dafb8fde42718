"""A worker loads an engine model file at the client's input size: `montecarlo M.npz --size 224 --dask local:2`
(and compare, evaluate) failed on every worker with "an engine model file has a fixed input size; size=(224, 224)
cannot apply", a Dask traceback on stderr, though the same file runs at 224 in this process (detect --size 224)."""
from __future__ import annotations

from engine.quant.qmodel import fingerprint
from engine.scale.sources import ModelSource, load_source, source_of


def test_a_model_file_loads_on_a_worker_at_the_clients_size(tiny, tmp_path):
    import engine
    path = tiny.save(tmp_path / "tiny.npz")
    client = engine.load(path, size="224x160")
    src = source_of(client)                               # what the backends ship to the workers
    assert src == ModelSource(str(path), None, (224, 160), fingerprint(tiny))
    worker = load_source(src)
    assert worker.input_shape == client.input_shape == (3, 160, 224)
    assert [n.out_shape for n in worker.graph] == [n.out_shape for n in client.graph]
    assert load_source(ModelSource(str(path), size=(416, 416))).input_shape == (3, 416, 416)
