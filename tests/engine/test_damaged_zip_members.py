"""A damaged compressed member of a zip (an .npz of the engine's, an image-set upload) is refused naming the file
and the member, whatever compression it uses: zlib's and lzma's own errors subclass only Exception, so a damaged
deflate member of an uploaded zip and a damaged LZMA member of an .npz escaped as raw `zlib.error` / `LZMAError`
tracebacks instead of the one WeightsError / WorkspaceError every other damage gives."""
from __future__ import annotations

import io
import zipfile

import pytest

from engine.errors import WeightsError
from engine.quant.qmodel import QuantizedModel
from engine.workspace import Limits, Workspace, WorkspaceError
from helpers import IMAGES, cli, one_conv_session


def damaged(members: dict[str, bytes], method: int, target: str) -> bytes:
    """A zip of `members` compressed with `method`, the compressed data of member `target` garbled (its local
    header kept, so the archive still opens and the damage is met only when the member is decompressed)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    raw = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = zf.getinfo(target)
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    skip = 9 if method == zipfile.ZIP_LZMA else 0      # zipfile's LZMA header: version and properties
    for i in range(start + skip, start + info.compress_size):
        raw[i] ^= 0xA5
    return bytes(raw)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA], ids=["deflate", "lzma"])
def test_a_quantized_model_with_a_damaged_compressed_member_is_refused_naming_it(tmp_path, capsys, method):
    good = tmp_path / "good.npz"
    one_conv_session(tmp_path).qmodel.save(good)
    with zipfile.ZipFile(good) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    bad = tmp_path / "q.npz"
    bad.write_bytes(damaged(members, method, "layer0/w_q.npy"))
    with pytest.raises(WeightsError, match=r"q\.npz: .*'layer0/w_q'"):
        QuantizedModel.load(bad)
    code, out, err = cli(capsys, "info", bad)
    assert code == 2 and err.startswith("error: ") and "q.npz" in err and "Traceback" not in err + out


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA], ids=["deflate", "lzma"])
def test_an_image_set_zip_with_a_damaged_member_is_refused_naming_it(tmp_path, method):
    ws = Workspace(tmp_path / "ws", limits=Limits())
    photo = (IMAGES / "dog.jpg").read_bytes()
    data = damaged({"set/a.jpg": photo, "set/b.jpg": photo}, method, "set/b.jpg")
    with pytest.raises(WorkspaceError, match=r"^holiday\.zip:set/b\.jpg: cannot read zip member"):
        ws.add_upload({"holiday.zip": data})
    (tmp_path / "holiday.zip").write_bytes(data)
    with pytest.raises(WorkspaceError, match=r"holiday\.zip:set/b\.jpg: cannot read zip member"):
        ws.import_path(tmp_path / "holiday.zip")
    assert ws.list() == []
