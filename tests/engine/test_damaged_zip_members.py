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


def _photo_zip(names: tuple[str, ...] = ("set/a.jpg", "set/b.jpg")) -> tuple[bytearray, int]:
    """A stored zip of the dog photo under `names`, and the offset of its central directory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(zipfile.ZipInfo(name), (IMAGES / "dog.jpg").read_bytes())
        start = zf.start_dir
    return bytearray(buf.getvalue()), start


def _version_too_new() -> bytes:
    raw, cd = _photo_zip()
    raw[cd + 6] = 184               # 'version needed to extract' 18.4
    return bytes(raw)


def _name_not_utf8() -> bytes:
    raw, cd = _photo_zip(("set/\u00e9.jpg",))     # zipfile flags a non-ASCII name UTF-8 (bit 11)
    at = raw.index("\u00e9".encode(), cd)
    raw[at:at + 2] = b"\x8f\x8f"                 # no UTF-8 sequence starts with 0x8f
    return bytes(raw)


def _offset_before_the_file() -> bytes:
    raw, _ = _photo_zip()
    end = len(raw) - 22
    raw[end + 16:end + 20] = (len(raw)).to_bytes(4, "little")     # the directory said to start past the end
    return bytes(raw)


@pytest.mark.parametrize("make, why", [
    (_version_too_new, r"^holiday\.zip: not a zip archive \(zip file version 18\.4\)"),
    (_name_not_utf8, r"^holiday\.zip: not a zip archive \('utf-8' codec can't decode"),
    (_offset_before_the_file, r"^holiday\.zip:set/a\.jpg: cannot read zip member \(negative seek value"),
], ids=["version", "name", "offset"])
def test_an_image_set_zip_damaged_in_its_directory_is_one_workspace_error(tmp_path, make, why):
    # zipfile raises more than BadZipFile on a damaged archive: these escaped the upload as raw NotImplementedError,
    # UnicodeDecodeError and ValueError tracebacks
    data = make()
    ws = Workspace(tmp_path / "ws", limits=Limits())
    with pytest.raises(WorkspaceError, match=why):
        ws.add_upload({"holiday.zip": data})
    assert ws.list() == []


def test_a_member_without_a_name_is_skipped_as_any_other_non_image():
    # ZipInfo.is_dir() reads the name's last character: an empty name raised a raw IndexError
    raw, _ = _photo_zip(("set/a.jpg", ""))
    from engine.workspace.uploads import read_zip_images
    assert list(read_zip_images("holiday.zip", bytes(raw), Limits())) == ["a.jpg"]
