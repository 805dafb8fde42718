"""engine/ must stay free of widget code: importing it loads no ipywidgets/traitlets/IPython."""
import subprocess
import sys

from helpers import ROOT


def test_engine_imports_no_widget_modules():
    code = ("import sys, engine, engine.cli.main, engine.zoo, engine.darknet.detect\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('ipywidgets', 'traitlets', 'IPython', "
            "'ipycytoscape', 'qwidgets')]\nprint(bad)\nassert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
