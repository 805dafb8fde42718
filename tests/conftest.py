"""Test configuration: the engine is imported from the source tree; ../shared must be beside the repo."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from helpers import SHARED, TINY_CFG, TINY_WEIGHTS  # noqa: E402


@pytest.fixture(autouse=True)
def _working_directory_kept():
    """Every test leaves the working directory as it found it (`monkeypatch.chdir` does): a leaked
    `os.chdir` made each later test's relative paths, and the CLI's default outputs, depend on which
    tests happened to run before it. The leak is put right and reported as that test's error."""
    before = os.getcwd()
    yield
    try:
        after = os.getcwd()
    except FileNotFoundError:         # the folder it moved into is gone
        after = None
    if after != before:
        os.chdir(before)
        pytest.fail(f"the test left the working directory at {after} (it was {before}): use monkeypatch.chdir",
                    pytrace=False)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} not found: the tests need ../shared beside the repository")
    return SHARED


@pytest.fixture(scope="session")
def tiny(shared):
    """yolov3-tiny with the official weights (loaded once per test session; do not edit in tests)."""
    import engine
    return engine.load(TINY_CFG, weights=TINY_WEIGHTS)


@pytest.fixture
def tiny_copy(tiny):
    """A private copy of yolov3-tiny that a test may edit."""
    return tiny.copy()


@pytest.fixture(scope="session")
def tiny_stats(tiny):
    """Calibration statistics of yolov3-tiny on the four shared photos."""
    from engine.calib.collect import collect
    from helpers import IMAGES
    return collect(tiny, sorted(IMAGES.glob("*.jpg")), progress=False)


@pytest.fixture(scope="session")
def tiny_kl_pt(tiny, tiny_stats):
    """yolov3-tiny quantized per tensor with kl on plain |x| histograms (no calibration rules, as
    before round 2): it loses detections (the explain / diff examples)."""
    from engine.quant.qmodel import quantize_model
    return quantize_model(tiny, tiny_stats, "kl", per_channel=False, rules=(), clip_max=1)


@pytest.fixture(scope="session")
def tiny_q(tiny, tiny_stats):
    """yolov3-tiny quantized per channel with minmax (the best method on these photos)."""
    from engine.quant.qmodel import quantize_model
    return quantize_model(tiny, tiny_stats, "minmax", per_channel=True)


@pytest.fixture(scope="session")
def tiny_ort(tiny, tiny_stats):
    """yolov3-tiny quantized per channel with minmax under the `onnxruntime` profile (ORT's integer rules)."""
    from engine.quant.qmodel import quantize_model
    return quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="onnxruntime")


@pytest.fixture(scope="session")
def photo_inputs(tiny):
    """The four shared photos letterboxed for yolov3-tiny, and a fifth input: photo 1 mirrored."""
    from dataclasses import replace

    import numpy as np

    from helpers import IMAGES
    pres = [tiny.preprocess(p) for p in sorted(IMAGES.glob("*.jpg"))]
    return pres + [replace(pres[1], x=np.ascontiguousarray(pres[1].x[:, :, ::-1]))]


@pytest.fixture(scope="module")
def cfg_family(tmp_path_factory):
    """get(name, profile=None) -> (model, inputs, quantized model or None) for helpers.CFG_FAMILIES[name]:
    random weights (seed 1), inputs (3, 3, H, W) = two shared photos and one random tensor, and the model
    quantized with minmax per channel on the two photos under `profile` (each made once per test module:
    kept for the whole session, their 24 quantized models' kernel forms filled engine.quant.intcache's budget,
    and later tests of what it keeps found nothing kept)."""
    import numpy as np

    import engine
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    from helpers import IMAGES, family_cfg
    made: dict = {}

    def get(name: str, profile: str | None = None):
        if name not in made:
            model = engine.load(family_cfg(name, tmp_path_factory.mktemp(name)), random_weights=1)
            photos = [model.preprocess(p).x for p in sorted(IMAGES.glob("*.jpg"))[:2]]
            noise = np.random.default_rng(3).random(model.input_shape, dtype=np.float32)
            made[name] = (model, np.stack(photos + [noise]), collect(model, photos, progress=False))
        model, xb, stats = made[name]
        if profile is not None and (name, profile) not in made:
            made[name, profile] = quantize_model(model, stats, "minmax", per_channel=True, profile=profile)
        return model, xb, None if profile is None else made[name, profile]
    return get
