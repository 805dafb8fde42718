"""`--float-layers I,J` (the layers a quantized run keeps FLOAT) on every command that runs a quantized model:
`montecarlo` and `report` had no such option (only the quantized model's own FLOAT layers), so a mixed-precision
choice tried with `detect`/`explain`/`worst-images` could not be checked over many variants or timed."""
from __future__ import annotations

import json

import pytest

from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli

MODEL = (TINY_CFG, "--weights", TINY_WEIGHTS, "--size", "160")
ALL_LAYERS = ",".join(str(i) for i in range(24))      # yolov3-tiny's 24 layers


@pytest.fixture(scope="module")
def qfiles(tmp_path_factory, tiny_kl_pt):
    """yolov3-tiny quantized per tensor with kl, no rules (it loses detections), twice: with no FLOAT layers,
    and keeping layers 0 and 12 FLOAT by default."""
    folder = tmp_path_factory.mktemp("q")
    plain = tiny_kl_pt.save(folder / "q.npz")
    mixed = tiny_kl_pt.copy()
    mixed.float_layers = (0, 12)
    return plain, mixed.save(folder / "q-mixed.npz")


def montecarlo(capsys, qfile, *extra):
    code, out, err = cli(capsys, "montecarlo", *MODEL, "--quantized", qfile, "--images", IMAGES / "dog.jpg",
                         "--variants", "4", "--seed", "0", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_montecarlo_float_layers_keeps_them_float(capsys, qfiles):
    plain, mixed = qfiles
    base = montecarlo(capsys, plain)
    assert base["summary"]["int"]["mean_map50_95"] < 0.99       # the INT run differs from FLOAT on these variants
    everything = montecarlo(capsys, plain, "--float-layers", ALL_LAYERS)
    s = everything["summary"]["int"]
    assert (s["mean"], s["mean_map50_95"], s["perfect"], s["missed"], s["extra"]) == (1.0, 1.0, 1.0, 0, 0)
    assert everything["float_layers"] == list(range(24))
    # --float-layers 0,12 gives what a model keeping 0 and 12 FLOAT gives by itself, variant by variant
    chosen = montecarlo(capsys, plain, "--float-layers", "0,12")
    own = montecarlo(capsys, mixed)
    assert chosen["float_layers"] == own["float_layers"] == [0, 12] and base["float_layers"] == []
    assert [v["int"] for v in chosen["variants"]] == [v["int"] for v in own["variants"]]
    assert [v["int"] for v in chosen["variants"]] != [v["int"] for v in base["variants"]]
    # an explicit list replaces the model's own (as on detect, explain, worst-images)
    assert montecarlo(capsys, mixed, "--float-layers", ALL_LAYERS)["summary"]["int"]["mean_map50_95"] == 1.0


def test_montecarlo_float_layers_refuses_a_layer_the_model_lacks(capsys, qfiles):
    code, out, err = cli(capsys, "montecarlo", *MODEL, "--quantized", qfiles[0], "--images", IMAGES / "dog.jpg",
                         "--variants", "1", "--float-layers", "3,40")
    assert (code, out) == (2, "")
    assert err == "error: --float-layers '3,40': [40] are not layers of this model (0..23)\n"


def report(capsys, qfile, *extra):
    code, out, err = cli(capsys, "report", *MODEL, "-q", qfile, "--repeats", "1", "--image", IMAGES / "dog.jpg",
                         "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_report_float_layers_counts_them_float(capsys, qfiles):
    plain, mixed = qfiles
    base = report(capsys, plain)
    assert base["float_layers"] == []
    assert base["rows"][12]["int8_bytes"] == 1024 * 512 * 9 + 4 * 1024 + 4    # int8 weights, int32 biases, one scale
    kept = report(capsys, plain, "--float-layers", "12", "--ram", "64", "--flash", "9", "--budget-ms", "1e6")
    row = kept["rows"][12]
    assert kept["float_layers"] == [12]
    assert row["int8_bytes"] == row["float_bytes"] == 4 * 4722688 and row["compression_pct"] == 0.0
    assert kept["totals"]["int8_bytes"] == base["totals"]["int8_bytes"] - base["rows"][12]["int8_bytes"] + 4 * 4722688
    # the flash a device needs for INT is the int8 layers plus layer 12's float32 weights: 9 MiB no longer holds it
    assert kept["fit"]["flash"]["needed"] == kept["totals"]["int8_bytes"] and kept["fit"]["flash"]["ok"] is False
    # every layer FLOAT: INT holds float32 activations everywhere, as FLOAT does
    every = report(capsys, plain, "--float-layers", ALL_LAYERS)
    assert every["peak_activation_bytes"]["int"] == every["peak_activation_bytes"]["float"] \
        > base["peak_activation_bytes"]["int"]
    assert every["totals"]["int8_bytes"] == every["totals"]["float_bytes"]
    # without the option, the model's own FLOAT layers are counted the same way
    own = report(capsys, mixed)
    assert own["float_layers"] == [0, 12]
    assert [r["int8_bytes"] for r in own["rows"]] == \
        [r["int8_bytes"] for r in report(capsys, plain, "--float-layers", "0,12")["rows"]]


def test_montecarlo_resize_stretch_reaches_every_variant(capsys, qfiles):
    # montecarlo alone had no --resize (detect, dump, explain, worst-images, quantize and compare have it): a
    # model deployed with stretch, as Darknet's resize_image, could not be checked over variants as it runs
    import engine
    from engine.scale.montecarlo import make_variants, render, source_image
    model = engine.load(TINY_CFG, weights=TINY_WEIGHTS, size=160)
    photo = IMAGES / "horses.jpg"                # wide: letterbox and stretch feed the network differently
    results = {}
    for resize in ("letterbox", "stretch"):
        code, out, err = cli(capsys, "montecarlo", *MODEL, "--quantized", qfiles[0], "--images", photo,
                             "--variants", "3", "--seed", "1", "--json", "--resize", resize)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["resize"] == resize
        results[resize] = [v["float_dets"] for v in doc["variants"]]
        # FLOAT's detections of each variant, rendered and fed as `detect --resize` feeds an image
        expected = [len(model.detect(render(source_image([str(photo)], 0, (160, 160)), v), resize=resize))
                    for v in make_variants(1, 3, seed=1)]
        assert results[resize] == expected
    assert results["letterbox"] != results["stretch"]


def test_montecarlo_text_says_which_layers_were_kept_float(capsys, qfiles):
    # the text report's first line gave the variants and seed only: two runs with different --float-layers or
    # --resize printed the same header over different figures
    code, out, err = cli(capsys, "montecarlo", *MODEL, "-q", qfiles[0], "--images", IMAGES / "dog.jpg",
                         "--variants", "1", "--float-layers", "12,0", "--resize", "stretch")
    assert code == 0, err
    assert out.startswith("Monte Carlo: 1 variant of 1 image, seed 0, layers 0, 12 kept FLOAT, stretch, ")
    code, out, err = cli(capsys, "montecarlo", *MODEL, "-q", qfiles[0], "--images", IMAGES / "dog.jpg",
                         "--variants", "1")
    assert code == 0 and out.startswith("Monte Carlo: 1 variant of 1 image, seed 0, ") and "FLOAT" not in out


def test_model_size_stores_the_layers_kept_float_as_float32(tiny, tiny_q):
    # model_size (quantize's "int8 ... bytes" line, compare's size) counted a layer kept FLOAT as int8, as report did
    from engine.quant.fitness import model_size
    from engine.quant.report import layer_bytes
    mixed = tiny_q.copy()
    mixed.float_layers = (12,)
    lq = tiny_q.layers[12]
    own = lq.w_q.size + 4 * lq.b_q.size + 4 * lq.w_scale.size
    assert own == 1024 * 512 * 9 + 4 * 1024 + 4 * 1024                  # per channel: a scale per filter
    assert model_size(tiny, mixed).int8_bytes == model_size(tiny, tiny_q).int8_bytes - own + 4 * 4722688
    assert sum(q for _, q in layer_bytes(tiny, mixed)) == model_size(tiny, mixed).int8_bytes


def compare(capsys, *extra):
    code, out, err = cli(capsys, "compare", *MODEL, "--calib", IMAGES / "dog.jpg", "--images", IMAGES / "dog.jpg",
                         "--methods", "kl", "--quiet", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_compare_float_layers_ranks_the_methods_as_mixed_precision_runs_them(capsys, tmp_path):
    # compare had no --float-layers: a mixed-precision deployment could not be compared across methods
    plain = compare(capsys)
    assert "float_layers" not in plain                                   # the contract's keys, unless asked
    everything = compare(capsys, "--float-layers", ALL_LAYERS)
    (kl,) = everything["methods"]
    assert everything["float_layers"] == list(range(24))
    assert kl["agreement"]["int"]["map50_95"] == kl["agreement"]["hybrid"]["map50_95"] == 1.0
    assert kl["size"]["int8_bytes"] == kl["size"]["float_bytes"]
    # with two layers kept FLOAT, INT agrees with FLOAT as worst-images finds for the same quantized model
    chosen = compare(capsys, "--float-layers", "0,12")
    q = tmp_path / "kl.npz"
    assert cli(capsys, "quantize", *MODEL, "--calib", IMAGES / "dog.jpg", "--method", "kl", "--quiet", "-o", q)[0] == 0
    code, out, err = cli(capsys, "worst-images", *MODEL, "-q", q, "--images", IMAGES / "dog.jpg", "--json",
                         "--float-layers", "0,12")
    assert code == 0, err
    (row,) = json.loads(out)["images"]
    assert chosen["methods"][0]["agreement"]["int"]["map50_95"] == pytest.approx(row["map50_95"], abs=1e-12)
    assert chosen["methods"][0]["size"]["int8_bytes"] == plain["methods"][0]["size"]["int8_bytes"] \
        + 4 * (496 + 4722688) - (16 * 27 + 4 * 16 + 4) - (1024 * 512 * 9 + 4 * 1024 + 4)
