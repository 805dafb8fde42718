"""How many entries a zip archive's central directory holds, counted up to a limit before `zipfile` parses it.

`zipfile.ZipFile` makes a ZipInfo object (~600 bytes) of every entry of the central directory as it opens an
archive, and walks the directory by its declared byte size, whatever entry count the end record gives. A hostile
archive made of nothing but a directory of one-name entries (46 bytes each + the name) thus costs 12 times its
size in memory before anyone can count its members: a 51 MB file took 600 MB and 12 s, a 512 MB upload would take
a kernel's memory. `count_entries` walks the same directory as zipfile does, reading only the 46-byte fixed part
of each entry and stopping one past the caller's limit.
"""
from __future__ import annotations

import struct
from typing import BinaryIO

_END, _END64, _LOCATOR64, _ENTRY = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07", b"PK\x01\x02"
_END_SIZE, _END64_SIZE, _LOCATOR64_SIZE, _ENTRY_SIZE = 22, 56, 20, 46
_SEARCHED = 1 << 16      # zipfile looks this far before the last 22 bytes: one byte more than a comment


def count_entries(fp: BinaryIO, limit: int) -> int:
    """The number of central-directory entries of the zip archive `fp`, at most `limit + 1` (counting stops
    there): the entries zipfile would parse, located as zipfile locates them (the end record nearest the end of
    the file, the zip64 end record just before its locator, the directory just before those). 0 when there is
    no end record or the directory is damaged at its first entry: zipfile refuses such a file itself, naming
    the problem. Seeks `fp` back to its start."""
    end = fp.seek(0, 2)
    start = max(0, end - _END_SIZE - _SEARCHED)
    fp.seek(start)
    tail = fp.read(end - start)
    # zipfile's order: a comment-less record ending the file first, only then the last signature. The record's
    # own fields (disk numbers zipfile never reads) may hold the signature bytes: found by the search alone, that
    # copy left no room for a record, the count was 0 and zipfile went on to parse the whole directory
    fixed = len(tail) - _END_SIZE
    at = fixed if fixed >= 0 and tail[fixed:fixed + 4] == _END and tail[-2:] == b"\0\0" else tail.rfind(_END)
    count = 0
    if at >= 0 and len(tail) - at >= _END_SIZE:
        record = start + at
        cd_size = struct.unpack_from("<L", tail, at + 12)[0]
        if record >= _LOCATOR64_SIZE + _END64_SIZE:
            fp.seek(record - _LOCATOR64_SIZE - _END64_SIZE)
            head = fp.read(_END64_SIZE + 4)
            if head[:4] == _END64 and head[_END64_SIZE:] == _LOCATOR64:
                record -= _LOCATOR64_SIZE + _END64_SIZE
                cd_size = struct.unpack_from("<Q", head, 40)[0]
        pos, stop = record - cd_size, record
        fp.seek(max(pos, 0))
        while 0 <= pos < stop and count <= limit:
            fixed = fp.read(_ENTRY_SIZE)
            if len(fixed) < _ENTRY_SIZE or fixed[:4] != _ENTRY:
                break
            count += 1
            skip = sum(struct.unpack_from("<3H", fixed, 28))   # name, extra field and comment lengths
            pos = fp.seek(skip, 1)
    fp.seek(0)
    return count
