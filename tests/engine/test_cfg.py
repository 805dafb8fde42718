"""cfg lexing and layer building: Darknet's rules, and clear errors with file:line [section]."""
from __future__ import annotations

import pytest

from engine.darknet.cfg import parse_cfg
from engine.errors import CfgError, UnsupportedError
from engine.darknet.build import build_layers

NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"


def layers_of(text: str):
    return build_layers(parse_cfg(NET + text, "t.cfg"))


def test_whitespace_anywhere_is_removed_and_comments_skipped():
    cfg = parse_cfg(NET + "# comment\n; other\n[convolutional]\n fil ters = 8 \r\nsize=3\n", "t.cfg")
    assert cfg.layers[0].get_int("filters") == 8


def test_first_occurrence_of_a_key_wins():
    (layer,) = layers_of("[convolutional]\nfilters=4\nfilters=9\n")
    assert layer.filters == 4


def test_section_aliases_resolve():
    layers = layers_of("[conv]\nfilters=4\n[max]\nsize=2\nstride=2\n[avg]\n[soft]\n")
    assert [l.kind for l in layers] == ["convolutional", "maxpool", "avgpool", "softmax"]


def test_pad_1_means_half_size_and_padding_used_only_without_pad():
    a, b, c = layers_of("[convolutional]\nsize=3\npad=1\n[convolutional]\nsize=1\npad=1\n"
                        "[convolutional]\nsize=3\npadding=2\n")
    assert (a.padding, b.padding, c.padding) == (1, 0, 2)
    assert a.out_shape[1:] == (32, 32) and c.out_shape[1:] == (34, 34)


def test_default_activation_is_logistic_like_darknet():
    (layer,) = layers_of("[convolutional]\nfilters=2\n")
    assert layer.activation == "logistic"


@pytest.mark.parametrize("text, fragment", [
    ("[convolutional]\nfilters=abc\n", "t.cfg:6 [convolutional] (layer 0) filters=abc: expected an integer"),
    ("[convolutional]\nsize=3x\n", "size=3x: expected an integer"),
    ("[convolutional]\nfilters=0\n", "filters=0: must be >= 1"),
    ("[convolutional]\nactivation=leaky#x\n", "activation=leaky#x: unknown activation"),
    ("[bogus]\n", "t.cfg:5 [bogus] (layer 0) unknown section [bogus]"),
    ("[route]\nlayers=-30\n", "layers=-30: points before layer 0 (this is layer 0)"),
    ("[convolutional]\n[route]\nlayers=5\n", "layers=5: refers to layer 5, which is not before this layer 1"),
    ("[convolutional]\nsize=99\n", "empty output shape"),
    ("[maxpool]\nsize=2\nstride=-1\n", "stride=-1: must be >= 1"),
    ("[yolo]\nmask=0,1,2\nnum=2\n", "mask=0,1,2: index 2 is outside 0..1"),
    ("[convolutional]\nfilters=18\n[yolo]\nclasses=80\nmask=0\nnum=1\n", "85 expected"),
    ("[convolutional]\nfilters=4\n[route]\nlayers=-1,\n", None),
    ("[convolutional]\nfilters=4\n[convolutional]\nfilters=4\nsize=3\nstride=2\n[route]\nlayers=-1,-2\n",
     "must have the same spatial size"),
    ("[upsample]\nstride=-2\n", "only positive"),
    ("[convolutional]\nfilters=6\ngroups=4\n", "groups=4 must divide"),
    ("[shortcut]\nfrom=-1\n", "from=-1: points before layer 0"),
    ("[convolutional]\nanchors=1,,2\n", None),
])
def test_bad_cfgs_name_file_line_and_section(text, fragment):
    if fragment is None:  # accepted (Darknet tolerates a trailing comma; unknown keys are ignored)
        layers_of(text)
        return
    with pytest.raises((CfgError, UnsupportedError)) as err:
        layers_of(text)
    assert fragment in str(err.value)


@pytest.mark.parametrize("text, fragment", [
    ("", "no sections found"),
    ("[convolutional]\nfilters=2\n", "the first section must be [net]"),
    ("width=3\n[net]\n", "option before the first section"),
    ("[net]\nwidth=32\n", "has no layers"),
    ("[net\nwidth=3\n", "malformed section header"),
    ("[net]\nwidth\n", "expected key=value"),
    ("[net]\n=3\n", "empty key"),
    ("[net]\nwidth=32\n[net]\n", "only one [net]"),
])
def test_structural_errors(text, fragment):
    with pytest.raises(CfgError) as err:
        build_layers(parse_cfg(text, "t.cfg"))
    assert fragment in str(err.value)


def test_missing_net_size_is_reported():
    with pytest.raises(CfgError, match=r"t.cfg:1 \[net\] missing required key height="):
        build_layers(parse_cfg("[net]\nwidth=32\n[convolutional]\n", "t.cfg"))


def test_unsupported_darknet_features_are_refused_not_ignored():
    with pytest.raises(UnsupportedError, match="dilation=2"):
        layers_of("[convolutional]\ndilation=2\n")
    with pytest.raises(UnsupportedError, match="weights_type"):
        layers_of("[convolutional]\nfilters=3\n[shortcut]\nfrom=-1\nweights_type=per_channel\n")


def test_read_cfg_rejects_binary_files(tmp_path):
    from engine.darknet.cfg import read_cfg
    p = tmp_path / "w.cfg"
    p.write_bytes(b"\x00\x00\x00\x00\x02\x00\xff\xfe")
    with pytest.raises(CfgError, match="w.cfg"):
        read_cfg(p)
    with pytest.raises(CfgError, match="no such file|cannot read"):
        read_cfg(tmp_path / "missing.cfg")


def test_read_cfg_accepts_a_utf8_byte_order_mark(tmp_path):
    # Notepad's "UTF-8" adds EF BB BF; it used to fail as "'\ufeff[net]': expected key=value"
    from engine.darknet.cfg import read_cfg
    from helpers import TINY_CFG
    plain = TINY_CFG.read_text()
    p = tmp_path / "notepad.cfg"
    p.write_bytes(b"\xef\xbb\xbf" + plain.encode())
    cfg = read_cfg(p)
    assert cfg.text == plain and cfg.net.options == read_cfg(TINY_CFG).net.options
    assert len(build_layers(cfg)) == 24


def test_a_key_darknet_does_not_read_warns_with_file_line_and_the_key_meant(tmp_path):
    """(regression) a typo'd key in a hand-edited cfg was ignored without a word: `activaton=leaky` built a
    linear conv and ran with the same weights. Darknet prints 'Unused field' while it builds the network; the
    engine warns likewise, when it builds the layers of a cfg read from a file (a layer's keys are its class's)."""
    import warnings

    from engine.darknet.cfg import read_cfg
    from engine.errors import EngineWarning
    path = tmp_path / "typo.cfg"
    path.write_text(NET + "momentum=0.9\n[convolutional]\nfilters=6\nsize=3\nactivaton=leaky\nxnor=0\n"
                    "[yolo]\nmask=0\nanchors=1,1\nnum=1\nclasses=1\nignore_thresh=.7\nnms_thresh=0.4\n")
    cfg = read_cfg(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_layers(cfg)
        build_layers(cfg)                                   # once per file read, not per build
        build_layers(cfg.resized(64, 64))                   # a resized copy: warned already
    msgs = [str(w.message) for w in caught if issubclass(w.category, EngineWarning)]
    assert msgs == ["typo.cfg:9 [convolutional] (layer 0) activaton=leaky: not a key of [convolutional]; ignored "
                    "(Darknet prints 'Unused field'); did you mean activation=?",
                    "typo.cfg:17 [yolo] (layer 1) nms_thresh=0.4: not a key of [yolo]; ignored (Darknet prints "
                    "'Unused field')"]
    assert cfg.layers[0].get_str("activation", "logistic") == "logistic"   # still Darknet's reading of the file


def test_a_typo_that_makes_the_build_fail_is_named_before_the_refusal(tmp_path):
    """`layer=-1` leaves [route] without layers=: the warning that names the key meant comes first."""
    import warnings

    from engine.darknet.cfg import read_cfg
    path = tmp_path / "layer.cfg"
    path.write_text(NET + "[convolutional]\nfilters=4\n[route]\nlayer=-1\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CfgError, match=r"layer\.cfg:7 \[route\] \(layer 1\) missing required key layers="):
            build_layers(read_cfg(path))
    assert [str(w.message) for w in caught] == [
        "layer.cfg:8 [route] (layer 1) layer=-1: not a key of [route]; ignored (Darknet prints 'Unused field'); "
        "did you mean layers=?"]


def test_a_key_darknet_does_not_read_warns_once_whatever_size_the_cfg_is_built_at(tmp_path, capsys):
    """`info --size` builds only a resized copy of the cfg it read, `load(size=)` the cfg then the copy: each
    says once which key Darknet would not read, at the line of the file."""
    import warnings

    import engine
    from engine.errors import EngineWarning
    from helpers import cli
    path = tmp_path / "typo.cfg"
    path.write_text(NET + "[convolutional]\nfilters=4\nsize=3\nactivaton=leaky\n")
    said = ("typo.cfg:8 [convolutional] (layer 0) activaton=leaky: not a key of [convolutional]; ignored (Darknet "
            "prints 'Unused field'); did you mean activation=?")
    code, out, err = cli(capsys, "info", path, "--size", 64)
    assert (code, err) == (0, f"warning: {said}\n") and "input 3x64x64" in out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = engine.load(path, random_weights=0, size=64)
    assert [str(w.message) for w in caught if issubclass(w.category, EngineWarning)] == [said]
    assert model.input_shape == (3, 64, 64)


def test_every_layer_type_declares_the_keys_darknet_reads_on_its_class():
    """The keys of a section are a trait of the class that builds it (no table elsewhere); [net], which no
    class builds, keeps its keys beside the lexer. Both are what Darknet's parser.c reads."""
    from engine.darknet.cfg import NET_KEYS
    from engine.darknet.cfg_keys import DARKNET_KEYS
    from engine.layers import LAYERS, Layer
    from engine.layers.base import EVERY_SECTION_KEYS
    for name in LAYERS:
        cls = LAYERS.get(name)
        owner = next(k for k in cls.__mro__ if "cfg_keys" in vars(k))
        assert owner is not Layer, f"[{name}]: {cls.__name__} declares no cfg_keys"
        assert DARKNET_KEYS[name] == cls.cfg_keys | EVERY_SECTION_KEYS
    assert {"filters", "size", "stride", "pad", "batch_normalize", "activation"} <= LAYERS.get("convolutional").cfg_keys
    assert {"anchors", "mask", "classes", "num", "scale_x_y"} <= LAYERS.get("yolo").cfg_keys
    assert LAYERS.get("reorg").cfg_keys == LAYERS.get("reorg3d").cfg_keys == {"extra", "flatten", "reverse", "stride"}
    assert {"width", "height", "channels", "batch", "subdivisions"} <= NET_KEYS
    assert DARKNET_KEYS["net"] == NET_KEYS | EVERY_SECTION_KEYS
    assert sorted(DARKNET_KEYS) == sorted(["net", *LAYERS])


def test_the_shipped_cfgs_raise_no_unused_key_warning():
    import warnings

    from engine.darknet.cfg import read_cfg
    from helpers import CFG_DIR, TINY_CFG
    cfgs = sorted(CFG_DIR.glob("*.cfg")) + [TINY_CFG]
    assert len(cfgs) > 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in cfgs:
            build_layers(read_cfg(path))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_a_utf16_cfg_with_its_byte_order_mark_reads_like_its_utf8_twin(tmp_path, capsys, encoding):
    """(regression) PowerShell 5's `(Get-Content a.cfg) -replace 'classes=80','classes=2' > b.cfg` writes UTF-16
    with a byte-order mark; load said "not a text cfg file (byte 0 is not UTF-8); did you pass the .weights file
    instead?", `detect` "MODEL is neither a Darknet .cfg ...", `info` read it as a bad .weights header."""
    import codecs

    import engine
    from engine.darknet.cfg import read_cfg
    from engine.workspace import Workspace
    from helpers import TINY_CFG, cli
    plain = TINY_CFG.read_text()
    bom = codecs.BOM_UTF16_BE if encoding == "utf-16-be" else b""      # "utf-16" writes its own mark
    p = tmp_path / "ps.cfg"
    p.write_bytes(bom + plain.replace("\n", "\r\n").encode(encoding))
    cfg = read_cfg(p)
    assert [s.options for s in cfg.layers] == [s.options for s in read_cfg(TINY_CFG).layers]
    graphs = [{**engine.load(f, random_weights=0).graph.to_dict(), "name": ""} for f in (p, TINY_CFG)]
    assert graphs[0] == graphs[1]
    code, out, err = cli(capsys, "info", p)
    assert (code, err) == (0, "") and "24 layers" in out
    code, out, err = cli(capsys, "detect", p, TINY_CFG)
    assert code == 2 and "is a .cfg: pass its weights with --weights FILE" in err
    from helpers import TINY_WEIGHTS
    entry = Workspace(tmp_path / "ws").add_upload({"ps.cfg": p.read_bytes(), "ps.weights": TINY_WEIGHTS.read_bytes()})[0]
    assert entry.kind == "model"


def test_a_cfg_that_starts_like_utf16_but_is_not_names_the_byte(tmp_path):
    from engine.darknet.cfg import read_cfg
    p = tmp_path / "bad.cfg"
    p.write_bytes(b"\xff\xfe[\x00n\x00\x00\xd8a\x00a\x00")       # a lone surrogate
    with pytest.raises(CfgError, match=r"bad.cfg: not a text cfg file: not UTF-8, nor UTF-16 after its byte-order mark \(byte 6 is not UTF-16\); save the cfg as UTF-8"):
        read_cfg(p)


def test_an_unknown_key_with_a_character_that_does_not_show_is_escaped_and_named(tmp_path):
    """A no-break space copied from a web page: the warning showed 'batch_normalize =1: not a key ...; did you
    mean batch_normalize=?', the key looking exactly like the one it suggests."""
    import warnings

    from engine.darknet.cfg import read_cfg
    from engine.errors import EngineWarning
    path = tmp_path / "web.cfg"
    path.write_text(NET + "[convolutional]\nbatch_normalize\u00a0=1\nfilters=4\n", encoding="utf-8")
    with pytest.warns(EngineWarning) as caught:
        warnings.simplefilter("always")
        build_layers(read_cfg(path))
    assert [str(w.message) for w in caught] == [
        "web.cfg:6 [convolutional] (layer 0) 'batch_normalize\\xa0'=1 (the key contains U+00A0 NO-BREAK SPACE): not "
        "a key of [convolutional]; ignored (Darknet prints 'Unused field'); did you mean batch_normalize=?"]


@pytest.mark.parametrize("body, fragment", [
    ("[convolutional]\nfilters=16\u00a0\n", "filters=16\u00a0: expected an integer (the value '16\\xa0' holds U+00A0 "
                                             "NO-BREAK SPACE, which does not show: retype it)"),
    ("[convolutional]\nactivation=leaky\u200b\n", "unknown activation; known: "),
])
def test_a_value_refused_for_a_character_that_does_not_show_names_it(body, fragment):
    """(regression) 'filters=16 : expected an integer' for a no-break space copied from a web page: the value
    looked right, the message gave no clue."""
    with pytest.raises(CfgError) as err:
        layers_of(body)
    assert fragment in str(err.value) and "which does not show: retype it)" in str(err.value)


@pytest.mark.parametrize("body, fragment", [
    ("[convolutional]\nfilters=4\nsize=\uff13\n", "size=\uff13: expected an integer"),
    ("[convolutional]\nfilters=4\n[dropout]\nprobability=\uff10.\uff15\n", "probability=\uff10.\uff15: expected a number"),
    ("[convolutional]\nfilters=4\n[route]\nlayers=-\uff11\n", "'-\uff11' is not an integer"),
])
def test_fullwidth_digits_are_refused_as_darknet_would_misread_them(body, fragment):
    """Python's int()/float() read the fullwidth '３' (an IME's digits) as 3; Darknet's atoi/atof as 0."""
    with pytest.raises(CfgError, match=fragment):
        layers_of(body)


def test_an_unknown_key_of_a_10_mb_line_is_shown_cut(tmp_path):
    import warnings

    from engine.darknet.cfg import read_cfg
    path = tmp_path / "long.cfg"
    path.write_text(NET + "[convolutional]\nfilters=4\n" + "k" * (10 << 20) + "=1\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_layers(read_cfg(path))
    (w,) = caught
    assert str(w.message).startswith("long.cfg:7 [convolutional] (layer 0) " + "k" * 40 + "...=1: not a key")
    assert len(str(w.message)) < 300
