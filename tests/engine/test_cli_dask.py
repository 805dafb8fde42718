"""`--dask local:N|ADDRESS` on the batch commands (compare, montecarlo, worst-images): the images' batches run on a Dask
cluster, a local one started and closed by the command, with the figures this process gives. Before, Dask was
reachable from Python only (engine.scale backends)."""
from __future__ import annotations

import json

import pytest

from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli

pytest.importorskip("distributed")
MODEL = (TINY_CFG, "--weights", TINY_WEIGHTS, "--size", "160")


def batches_shipped(monkeypatch) -> list[int]:
    """The number of items of each map_batches call a DaskBackend makes from now on (what went to the cluster)."""
    from engine.scale.backends import DaskBackend
    shipped: list[int] = []
    real = DaskBackend.map_batches
    monkeypatch.setattr(DaskBackend, "map_batches", lambda self, fn, items, *a, **k: shipped.append(len(items))
                        or real(self, fn, items, *a, **k))
    return shipped


def here_and_there(capsys, args, spec: str) -> tuple[str, str]:
    """stdout of the command `args` run in this process, then with `--dask spec`; both must succeed."""
    code, here, err = cli(capsys, *args)
    assert code == 0, err
    code, there, err = cli(capsys, *args, "--dask", spec)
    assert code == 0 and "Traceback" not in err, err
    return here, there


def test_montecarlo_and_compare_on_a_local_cluster_equal_this_process(capsys, tmp_path, tiny_kl_pt, monkeypatch):
    shipped = batches_shipped(monkeypatch)
    q = tiny_kl_pt.save(tmp_path / "q.npz")
    args = ("montecarlo", *MODEL, "--quantized", q, "--images", IMAGES / "dog.jpg", IMAGES / "horses.jpg",
            "--variants", "6", "--seed", "3", "--modes", "int,hybrid", "--json")
    here, there = here_and_there(capsys, args, "local:2")
    here, there = json.loads(here), json.loads(there)
    assert there["variants"] == here["variants"] and there["summary"] == here["summary"]
    assert here["summary"]["int"]["mean_map50_95"] < 1.0          # a run that differs from FLOAT somewhere
    assert shipped == [6]                                          # the variants went to the cluster

    args = ("compare", *MODEL, "--calib", IMAGES / "dog.jpg", "--images", IMAGES / "dog.jpg", IMAGES / "person.jpg",
            "--methods", "minmax,kl", "--quiet", "--json")
    here, there = here_and_there(capsys, args, "local:2")
    assert shipped[1:] == [2]                                      # the comparison's images too
    strip = lambda t: [{k: v for k, v in r.items() if "seconds" not in k} for r in json.loads(t)["methods"]]
    assert strip(there) == strip(here)


def test_worst_images_on_a_local_cluster_equal_this_process(capsys, tmp_path, tiny_kl_pt, monkeypatch):
    """worst-images had no --dask: ranking many images ran in this process only, beside compare and montecarlo.
    On a local cluster the ranking is this process's: the same images in the same order, the same scores."""
    shipped = batches_shipped(monkeypatch)
    q = tiny_kl_pt.save(tmp_path / "q.npz")
    photos = sorted(IMAGES.glob("*.jpg"))
    for mode in ("int", "hybrid"):
        args = ("worst-images", *MODEL, "--quantized", q, "--images", *photos, "--mode", mode, "--json")
        here, there = here_and_there(capsys, args, "local:2")
        here, there = json.loads(here), json.loads(there)
        assert there == here
        assert sorted(r["name"] for r in here["images"]) == sorted(p.name for p in photos)
        assert min(r["map50"] for r in here["images"]) < 1.0       # a ranking with a loser to find
    assert shipped == [len(photos)] * 2                              # the images went to the cluster


@pytest.mark.parametrize("spec, message", [
    ("local:0", "--dask 'local:0': expected local:N with 1 <= N <= 64"),
    ("local:two", "--dask 'local:two': expected local:N"),
    ("myhost:8786", "--dask 'myhost:8786': expected local:N (N worker processes here) or a scheduler address"),
    ("tcp://127.0.0.1:9", "--dask tcp://127.0.0.1:9: cannot reach the Dask scheduler"),
    # no certificates configured: Dask's Client raised a bare TypeError about ssl_context (a traceback)
    ("tls://127.0.0.1:9", "--dask tls://127.0.0.1:9: a tls:// scheduler needs this client's certificates: set "
                          "DASK_DISTRIBUTED__COMM__TLS__CA_FILE"),
])
def test_a_bad_dask_spec_is_one_line_naming_it(capsys, tmp_path, tiny_kl_pt, spec, message):
    q = tiny_kl_pt.save(tmp_path / "q.npz")
    code, out, err = cli(capsys, "montecarlo", *MODEL, "--quantized", q, "--images", IMAGES / "dog.jpg",
                         "--variants", "2", "--dask", spec)
    assert code != 0 and message in err and "Traceback" not in err, err


def test_a_tls_address_with_certificates_configured_is_connected_to(capsys, tmp_path, tiny_kl_pt, monkeypatch):
    """With the certificates in Dask's configuration (as temporary_tls writes them) the client connects:
    here nothing listens, so the refusal is the unreachable scheduler's, not the missing certificates'."""
    import dask

    from engine.scale.backends import temporary_tls
    temporary_tls(tmp_path)
    q = tiny_kl_pt.save(tmp_path / "q.npz")
    tls = {"distributed.comm.tls.ca-file": str(tmp_path / "dask-tls.pem"),
           "distributed.comm.tls.client.cert": str(tmp_path / "dask-tls.pem"),
           "distributed.comm.tls.client.key": str(tmp_path / "dask-tls.key")}
    with dask.config.set(tls):
        code, out, err = cli(capsys, "montecarlo", *MODEL, "--quantized", q, "--images", IMAGES / "dog.jpg",
                             "--variants", "2", "--dask", "tls://127.0.0.1:9")
    assert code == 2 and "--dask tls://127.0.0.1:9: cannot reach the Dask scheduler" in err, err


def test_a_local_cluster_without_cryptography_is_one_line_naming_it(capsys, tmp_path, tiny_kl_pt, monkeypatch):
    # distributed does not depend on cryptography, which a secure cluster's temporary certificates need: without
    # it --dask local:N stopped with a raw ImportError from inside distributed (a traceback)
    import sys
    monkeypatch.setitem(sys.modules, "cryptography", None)          # import cryptography raises ImportError
    q = tiny_kl_pt.save(tmp_path / "q.npz")
    code, out, err = cli(capsys, "montecarlo", *MODEL, "--quantized", q, "--images", IMAGES / "dog.jpg",
                         "--variants", "2", "--dask", "local:2")
    assert code == 2 and "--dask local:2: a local cluster's TLS needs the 'cryptography' package" in err, err


def test_montecarlo_on_one_worker_with_all_cores_equals_this_process(capsys, tmp_path, tiny_kl_pt):
    """`--dask local:1` gives its one worker every core's BLAS threads (2 here), and its batches ran with OpenBLAS
    split over them (the worker's event loop held threadpoolctl's control of the count): each variant's mean IoU
    came out ~1e-7 off this process's, while local:2 (1 BLAS thread each) was equal."""
    q = tiny_kl_pt.save(tmp_path / "q.npz")
    args = ("montecarlo", *MODEL, "--quantized", q, "--images", IMAGES / "dog.jpg", IMAGES / "horses.jpg",
            "--variants", "4", "--seed", "3", "--modes", "int", "--json")
    here, there = here_and_there(capsys, args, "local:1")
    here, there = json.loads(here), json.loads(there)
    assert [v["int"] for v in there["variants"]] == [v["int"] for v in here["variants"]]
    assert there["summary"] == here["summary"]
    assert any(v["int"]["matched"] for v in here["variants"])      # mean IoUs of matched boxes to compare
