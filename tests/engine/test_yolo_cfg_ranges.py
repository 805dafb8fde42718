"""[yolo] scale_x_y and anchors out of range are cfg errors naming file:line, not NaN boxes later."""
import numpy as np
import pytest

import engine
from engine.errors import CfgError

HEAD = ("[net]\nwidth=16\nheight=16\nchannels=3\n\n[convolutional]\nfilters=12\nsize=1\nactivation=linear\n\n"
        "[yolo]\nmask=0,1\nclasses=1\nnum=2\n")


@pytest.mark.parametrize("extra, fragment", [
    ("anchors=4,4,8,8\nscale_x_y=1e39\n", "scale_x_y=1e39: must be <= 16"),
    ("anchors=4,4,8,8\nscale_x_y=-2\n", "scale_x_y=-2: must be >= 0"),
    ("anchors=4,-4,8,8\n", "anchors=4,-4,8,8: anchor sizes must be >= 0"),
])
def test_out_of_range_head_options(tmp_path, extra, fragment):
    path = tmp_path / "head.cfg"
    path.write_text(HEAD + extra)
    with pytest.raises(CfgError, match=r"head\.cfg:1[56] \[yolo\] \(layer 1\) ") as err:
        engine.load(path, random_weights=0)
    assert fragment in str(err.value)


def test_usual_scale_x_y_still_loads(tmp_path):
    path = tmp_path / "ok.cfg"
    path.write_text(HEAD + "anchors=4,4,8,8\nscale_x_y=1.05\n")
    m = engine.load(path, random_weights=0)
    assert all(np.isfinite(y).all() for y in m.forward(np.zeros(m.input_shape, np.float32)))
