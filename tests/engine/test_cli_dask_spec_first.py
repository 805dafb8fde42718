"""A malformed --dask is refused before any work, and an empty one is refused, not run here: `compare` calibrated
every --calib image (minutes on a real set) before saying "--dask 'local:0': expected local:N ...", and
`--dask ''` (an unset shell variable) ran the whole comparison in this process without a word."""
from __future__ import annotations

import pytest

from helpers import IMAGES, cli

DOG = IMAGES / "dog.jpg"


@pytest.mark.parametrize("command", ["compare", "montecarlo", "worst-images"])
@pytest.mark.parametrize("spec, message", [
    ("local:0", "error: --dask 'local:0': expected local:N with 1 <= N <= 64 worker processes\n"),
    ("", "error: --dask '': expected local:N (N worker processes here) or a scheduler address such as "
         "tcp://host:8786\n"),
])
def test_a_bad_dask_spec_is_refused_before_the_model_is_read(capsys, tmp_path, command, spec, message):
    # MODEL does not exist: the refusal must be the --dask one, made before anything is loaded or calibrated
    extra = {"compare": ["--calib", DOG, "--images", DOG, "--quiet"],
             "montecarlo": ["-q", tmp_path / "q.npz", "--images", DOG, "--variants", "1"],
             "worst-images": ["-q", tmp_path / "q.npz", "--images", DOG]}[command]
    rc, out, err = cli(capsys, command, tmp_path / "missing.npz", *extra, "--dask", spec)
    assert rc == 2 and out == "" and err == message


def test_dask_workers_reads_the_form_without_starting_anything():
    from engine.errors import ArgumentError
    from engine.scale.backends import dask_workers
    assert dask_workers("local:3") == 3 and dask_workers("tcp://127.0.0.1:8786") is None
    for spec in ("", "local:", "local:65", "host:8786", "tcp://"):
        with pytest.raises(ArgumentError, match="--dask"):
            dask_workers(spec)
