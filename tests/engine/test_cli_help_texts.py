"""`python -m engine <command> -h` as a new user reads it: every argument says what it takes, and an option a
help text names is one that command has (or is written as another command's, `quantize --profile`)."""
from __future__ import annotations

import argparse
import re

from engine.cli.main import build_parser


def commands() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_argument_has_a_help_text():
    # `montecarlo -h` listed `--images DIR_OR_FILES` with nothing beside it (the variants' sources? evaluation
    # images?), `convert -h` its CFG and WEIGHTS, and -o/--output, --json, detect's IMAGE, dump's --image neither
    silent = [f"{name} {a.option_strings[-1] if a.option_strings else a.metavar}"
              for name, parser in commands().items() for a in parser._actions if not (a.help or "").strip()]
    assert silent == []


def test_an_option_named_in_a_help_text_is_one_the_command_takes():
    # `montecarlo -h` and `worst-images -h` said --backend onnxruntime runs "INT for --profile onnxruntime", and
    # `export -h` a model quantized "(--profile onnxruntime, ...)": none of them takes --profile (the quantized
    # model's profile is set by `quantize --profile`); `montecarlo --profile onnxruntime` was refused
    names = set(commands())
    foreign = []
    for name, parser in commands().items():
        own = {o for a in parser._actions for o in a.option_strings}
        texts = [a.help or "" for a in parser._actions] + [parser.description or ""]
        for text in texts:
            for m in re.finditer(r"(?:([\w-]+) )?(--[a-z][a-z0-9-]*)", text):
                if m.group(2) not in own and m.group(1) not in names:
                    foreign.append(f"{name}: {m.group(0)}")
    assert foreign == []


def test_montecarlo_modes_refusal_names_the_option(capsys):
    # it said "error: modes ['float']: expected hybrid and/or int" (the Python argument, as a list), after loading
    # the model and the quantized model: which option, and that FLOAT needs no naming, were left to guess
    from helpers import IMAGES, TINY_CFG, cli
    for value, wrong in (("float", "'float' is not one"), ("int,hybrid,foo", "'foo' is not one"),
                         (",", "none given")):
        code, out, err = cli(capsys, "montecarlo", TINY_CFG, "--quantized", "absent.npz", "--images",
                             IMAGES / "dog.jpg", "--modes", value)
        assert (code, out) == (2, "")
        assert err == (f"error: --modes {value!r}: expected hybrid and/or int, comma-separated ({wrong}; FLOAT is "
                       "the reference every mode is compared with)\n")


def test_every_command_running_a_quantized_model_takes_float_layers_with_one_meaning():
    # montecarlo and report took --quantized but no --float-layers; where it existed its help said "keep these
    # layers FLOAT in hybrid/int" (detect, dump), "layers FLOAT in every run" (explain), "... in the quantized run"
    # (worst-images): none said that it replaces the layers the quantized model keeps FLOAT, nor that those are
    # the default. (export writes an integer graph, which has no FLOAT layer between integer ones.)
    from engine.cli.options import FLOAT_LAYERS_HELP
    takes = {name: {o: a for a in parser._actions for o in a.option_strings} for name, parser in commands().items()}
    running = sorted(name for name, opts in takes.items() if "--quantized" in opts and name != "export")
    assert running == ["detect", "dump", "explain", "montecarlo", "report", "worst-images"]
    assert [name for name in running if "--float-layers" not in takes[name]] == []
    assert {name: FLOAT_LAYERS_HELP in takes[name]["--float-layers"].help for name in running} == \
        dict.fromkeys(running, True)
    assert "instead of the quantized model's own" in FLOAT_LAYERS_HELP


def test_every_command_taking_quantized_takes_q_as_report_does():
    # `report -q QMODEL` (the README's synopsis) was the only short form: `detect -q q.npz --mode int` said
    # "unrecognized arguments: -q q.npz"
    takes = {name: {o for a in parser._actions for o in a.option_strings} for name, parser in commands().items()}
    assert sorted(n for n, opts in takes.items() if "--quantized" in opts and "-q" not in opts) == []


def test_detect_with_q_runs_the_quantized_model(tmp_path, tiny_q, capsys):
    from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli
    q = tiny_q.save(tmp_path / "q.npz")
    runs = {}
    for option in ("-q", "--quantized"):
        code, out, err = cli(capsys, "detect", TINY_CFG, "--weights", TINY_WEIGHTS, "--size", "160", "--mode", "int",
                             option, q, "--float-layers", "15", IMAGES / "dog.jpg", "--json")
        assert code == 0, err
        runs[option] = out
    assert runs["-q"] == runs["--quantized"] and '"bicycle"' in runs["-q"]


def test_quantize_and_compare_list_what_the_registries_hold(monkeypatch):
    # architecture.md's recipes say a new calibrator, profile or refinement needs no CLI change, but `quantize -h`
    # listed methods and profiles from lists of its own (a registered method or profile was usable yet never named),
    # and `quantize --refine` took only its own choices: a refinement added to the pipeline was refused there
    from engine.calib import CALIBRATORS
    from engine.calib.minmax import MinMaxCalibrator
    from engine.quant.profiles import PROFILES
    from engine.quant.profiles.qwidgets import QwidgetsProfile
    from engine.quant.refine import REFINEMENTS, pipeline
    assert REFINEMENTS == tuple(sorted(pipeline.AFTER + pipeline.BEFORE))   # the package's list is the pipeline's
    monkeypatch.setitem(CALIBRATORS._items, "halfmax", MinMaxCalibrator)
    monkeypatch.setitem(PROFILES._items, "npu_pt", QwidgetsProfile())
    monkeypatch.setattr(pipeline, "AFTER", (*pipeline.AFTER, "fold"))
    cmds = commands()
    options = {name: {o: a for a in cmds[name]._actions for o in a.option_strings} for name in ("quantize", "compare")}
    method_help = " ".join(options["quantize"]["--method"].help.split())
    assert "calibration method: minmax, percentile, mse, kl, log2, aciq, yolo2_light, auto, halfmax (default" in \
        method_help
    for name in ("quantize", "compare"):
        help_text = " ".join(options[name]["--profile"].help.split())
        assert all(p in help_text for p in PROFILES.names()), (name, help_text)
        assert "fold" in options[name]["--refine"].choices, name
    assert tuple(options["quantize"]["--refine"].choices) == ("bias", "cle", "cle_act", "eq", "fold", "gptq", "head",
                                                               "margin")
    assert tuple(options["compare"]["--refine"].choices) == (*pipeline.AFTER,)
    assert build_parser().parse_args(["quantize", "m.cfg", "--calib", "d", "-o", "q.npz", "--refine", "fold",
                                      "--method", "halfmax", "--profile", "npu_pt"]).refine == ["fold"]


def synopsis_lines(text: str) -> list[str]:
    """The `python -m engine ...` lines of a page's code blocks, continuation lines joined, comments dropped."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            line = line.split("#", 1)[0].rstrip()
            if line.startswith("python -m engine "):
                out.append(line)
            elif out and line.startswith(" ") and line.strip().startswith("["):
                out[-1] += " " + line.strip()
    return out


def synopsis_options(line: str) -> tuple[str, list[tuple[str, bool]]]:
    """(command, [(option, shown as required)]): an option outside [...] is shown as required; one inside
    (... | ...) is one of a required choice and left out."""
    command, *tokens = line.split()[3:]
    square = round_ = 0
    found = []
    for tok in tokens:
        square += tok.count("[")
        round_ += tok.count("(")
        m = re.match(r"[\[(]*(--?[a-z][\w-]*)", tok)
        if m and not round_:
            found.append((m.group(1), square == 0))
        square -= tok.count("]")
        round_ -= tok.count(")")
    return command, found


def test_the_synopses_mark_an_option_required_only_when_the_command_requires_it():
    # README's and cli.md's synopses showed `explain MODEL --weights W ...`, `montecarlo MODEL --weights W ...`,
    # `worst-images MODEL --weights W ...` unbracketed: a newcomer passing an engine model file and --weights, as
    # shown, is refused ("drop --weights"); --method, --methods, --format and --json were shown as required too
    from helpers import ROOT
    wrong = []
    for doc in ("README.md", "docs/cli.md"):
        lines = synopsis_lines((ROOT / doc).read_text())
        assert {line.split()[3] for line in lines} == set(commands()), doc
        for line in lines:
            command, found = synopsis_options(line)
            takes = {o: a for a in commands()[command]._actions for o in a.option_strings}
            wrong += [f"{doc}: {command} {option}: no such option" for option, _ in found if option not in takes]
            wrong += [f"{doc}: {command} {option} shown as {'required' if shown else 'optional'}"
                      for option, shown in found if option in takes and shown != bool(takes[option].required)]
    assert wrong == []
    assert synopsis_options("python -m engine dump M (--image I | --input X) [--mode a --quantized Q] -o O") == \
        ("dump", [("--mode", False), ("--quantized", False), ("-o", True)])
