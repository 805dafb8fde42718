"""The command line's errors name the option the user typed (qa12): `--size 0` said "size '0'", `--opset 0`
"opset=0", `--settings '{"percentile": "abc"}'` "percentile percentile='abc'", a one-layer model "1 layers",
and `--json > /dev/full` "No space left on device" without saying it was stdout."""
from __future__ import annotations

import os
import struct
import threading
import warnings

from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli, require


def _one_layer_model(tmp_path):
    cfg = tmp_path / "one.cfg"
    cfg.write_text("[net]\nwidth=16\nheight=16\nchannels=3\n\n[maxpool]\nsize=2\nstride=2\n")
    weights = tmp_path / "one.weights"
    weights.write_bytes(struct.pack("<iiiq", 0, 2, 0, 0))       # a header, no floats: maxpool has none
    return cfg, weights


def test_a_bad_size_names_the_size_option(capsys):
    rc, out, err = cli(capsys, "info", TINY_CFG, "--size", "0")
    assert (rc, out) == (2, "") and err == "error: --size '0': expected a width and height between 1 and 8192\n", err
    rc, out, err = cli(capsys, "detect", TINY_CFG, "--weights", TINY_WEIGHTS, "--size", "big", IMAGES / "dog.jpg")
    assert rc == 2 and err.startswith("error: --size 'big': expected N or WIDTHxHEIGHT"), err


def test_a_bad_opset_names_the_opset_option(capsys, tmp_path):
    cfg, weights = _one_layer_model(tmp_path)
    rc, out, err = cli(capsys, "export", cfg, "--weights", weights, "--opset", "0", "-o", tmp_path / "m.onnx")
    assert rc == 2 and err.startswith("error: --opset=0; this exporter needs 13 <= opset <= "), err
    assert not (tmp_path / "m.onnx").exists()


def test_a_setting_named_after_its_method_is_not_doubled(capsys, tmp_path):
    rc, out, err = cli(capsys, "quantize", TINY_CFG, "--weights", TINY_WEIGHTS, "--calib", IMAGES / "dog.jpg",
                       "--method", "percentile", "--settings", '{"percentile": "abc"}', "-o", tmp_path / "q.npz",
                       "--quiet")
    assert rc == 2 and err == "error: --settings: percentile='abc': expected a number in (0, 100]\n", err


def test_a_one_layer_model_is_one_layer(capsys, tmp_path):
    cfg, weights = _one_layer_model(tmp_path)
    rc, out, err = cli(capsys, "convert", cfg, weights, "-o", tmp_path / "one.npz")
    assert rc == 0, err
    assert ": <Model one: 1 layer, input 3x16x16, 0 params" in err, err


def test_a_full_disk_under_stdout_says_it_was_stdout(capsys, monkeypatch, tmp_path):
    require(os.path.exists("/dev/full"), "no /dev/full on this system")
    cfg, _ = _one_layer_model(tmp_path)
    full = open("/dev/full", "w")
    try:
        monkeypatch.setattr("sys.stdout", full)
        rc, _, err = cli(capsys, "info", cfg, "--json")
        monkeypatch.undo()
    finally:
        try:
            full.close()     # what is still buffered cannot be written either; the descriptor is closed anyway
        except OSError:
            pass
    assert rc == 2 and err == "error: writing the output to stdout: No space left on device\n", err


class _FakeClient:
    """What DaskBackend asks of a client, without a cluster: `submit` runs `during` (another thread's work)."""

    def __init__(self, during) -> None:
        self.during = during

    def scheduler_info(self, n_workers=-1):
        return {"workers": {}}

    def register_plugin(self, plugin, name=None):
        pass

    def submit(self, fn, *args, **kwargs):
        self.during()
        return object()


def test_dask_share_keeps_a_filter_another_thread_adds_meanwhile():
    from engine.scale.backends import DaskBackend

    def other_thread_adds_a_filter():
        t = threading.Thread(target=warnings.filterwarnings, args=("error",),
                             kwargs={"message": "qa12 other thread", "category": RuntimeWarning})
        t.start()
        t.join(30)
    with warnings.catch_warnings():      # this test's own changes are undone; share's must not undo the thread's
        backend = DaskBackend(_FakeClient(other_thread_adds_a_filter))
        before = list(warnings.filters)
        backend.share(b"payload", key="k")
        added = [f for f in warnings.filters if f not in before]
        assert [(f[0], f[1].pattern, f[2]) for f in added] == [("error", "qa12 other thread", RuntimeWarning)]
        # the large-graph warning share meets on purpose stays quiet; the same words from other code do not
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn_explicit("Sending large graph of size 20 MiB.", UserWarning, "client.py", 1,
                                   module="distributed.client")
            warnings.warn_explicit("Sending large graph of size 20 MiB.", UserWarning, "mine.py", 1,
                                   module="mine")
        assert [str(w.message) for w in seen] == ["Sending large graph of size 20 MiB."]
        assert seen[0].filename == "mine.py"
