"""Darknet `.cfg` lexer: sections with line numbers and strict, typed option getters.

Lexing follows Darknet (`parser.c:read_cfg`): every space and tab anywhere in a line is removed,
lines starting with `#` or `;` are comments, `[name]` opens a section, other lines are
`key=value` split at the first `=`, and the first occurrence of a key wins. Unlike Darknet we
also drop `\\r` (CRLF files work) and we reject values that `atoi`/`atof` would silently
half-read (`size=3x` is an error here, 3 in Darknet).
"""
from __future__ import annotations

import codecs
import math
import numbers
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from engine.errors import ArgumentError, CfgError, EngineError

# Darknet's short section names (parser.c:string_to_layer_type).
ALIASES = {"conv": "convolutional", "max": "maxpool", "avg": "avgpool", "soft": "softmax",
           "conn": "connected", "network": "net"}

# Keys Darknet reads in [net] (parse_net_options, pj and AlexeyAB): the one section no layer class stands for,
# so its keys sit here with the lexer that singles it out (a layer's keys are its class's `cfg_keys` trait).
NET_KEYS = frozenset(
    "B1 B2 adam adversarial_lr angle aspect attention augment_speed badlabels_rejection_percentage batch blur "
    "burn_in center channels clip contrastive contrastive_color contrastive_jit_flip cutmix decay "
    "dynamic_minibatch ema_alpha eps equidistant_point exposure flip gamma gaussian_noise height hue inputs "
    "label_smooth_eps learning_rate learning_rate_min letter_box loss_scale max_batches max_chart_loss "
    "max_crop max_ratio min_crop min_ratio mixup momentum mosaic mosaic_bound notruth "
    "num_sigmas_reject_badlabels optimized_memory policy power random resize_step saturation scale scales "
    "seq_scales sequential_subdivisions sgdr_cycle sgdr_mult step steps subdivisions time_steps track "
    "try_fix_nan unsupervised use_cuda_graph weights_reject_freq width workspace_size_limit_MB".split())

_MISSING = object()
_SECTION_RE = re.compile(r"^\[([A-Za-z0-9_]+)\]$")
# 18 digits always fit an int64; longer values are refused as out of range (and int() of a
# 4300+ digit string would raise a raw ValueError)
_INT_RE = re.compile(r"^[+-]?[0-9]{1,18}$")      # not \d: int() reads '３' (fullwidth) as 3, atoi as 0
_LONG_INT_RE = re.compile(r"^[+-]?[0-9]{19,}$")
MAX_CFG_BYTES = 16 * 1024 * 1024


def _hidden_note(value: str) -> str:
    """Why a value that looks right is refused: it holds a character that does not show (a no-break space
    copied from a web page reads 'filters=16 : expected an integer'); "" if it holds none."""
    odd = next((ch for ch in value if not ch.isprintable()), None)
    if odd is None:
        return ""
    return (f" (the value {value[:40]!r} holds U+{ord(odd):04X} {unicodedata.name(odd, 'an unnamed character')}, "
            "which does not show: retype it)")


@dataclass
class Section:
    """One `[name]` block. `index` is the Darknet layer index (-1 for `[net]`)."""
    name: str
    line: int
    path: str
    index: int
    options: dict[str, tuple[str, int]] = field(default_factory=dict)

    def where(self, key: str | None = None) -> str:
        """`file:line [section]` (the key's own line when given and present)."""
        line = self.options[key][1] if key is not None and key in self.options else self.line
        label = f"[{self.name}]" if self.index < 0 else f"[{self.name}] (layer {self.index})"
        return f"{self.path}:{line} {label}"

    def error(self, message: str, key: str | None = None) -> CfgError:
        note = _hidden_note(self.options[key][0]) if key is not None and key in self.options else ""
        return CfgError(f"{self.where(key)} {message}{note}")

    def has(self, key: str) -> bool:
        return key in self.options

    def raw(self, key: str) -> str:
        return self.options[key][0]

    def get_str(self, key: str, default: object = _MISSING, choices: Sequence[str] | None = None) -> str:
        if key not in self.options:
            return self._default(key, default)  # type: ignore[return-value]
        value = self.options[key][0]
        if choices is not None and value not in choices:
            raise self.error(f"{key}={value}: expected one of {', '.join(choices)}", key)
        return value

    def get_int(self, key: str, default: object = _MISSING, *, lo: int | None = None,
                hi: int | None = None) -> int:
        if key not in self.options:
            return self._default(key, default)  # type: ignore[return-value]
        value = self.options[key][0]
        if _LONG_INT_RE.match(value):
            raise self.error(f"{key}={value[:24]}...: {len(value.lstrip('+-'))} digits is out of range "
                             "(at most 18)", key)
        if not _INT_RE.match(value):
            raise self.error(f"{key}={value}: expected an integer", key)
        return self._check_range(key, int(value), lo, hi)

    def get_float(self, key: str, default: object = _MISSING, *, lo: float | None = None,
                  hi: float | None = None) -> float:
        if key not in self.options:
            return self._default(key, default)  # type: ignore[return-value]
        return self._check_range(key, self._to_float(key, self.options[key][0]), lo, hi)

    def get_int_list(self, key: str, default: object = _MISSING) -> list[int]:
        if key not in self.options:
            return self._default(key, default)  # type: ignore[return-value]
        items = self._items(key)
        bad = [v for v in items if not _INT_RE.match(v)]
        if bad:
            what = "is out of range (at most 18 digits)" if _LONG_INT_RE.match(bad[0]) else "is not an integer"
            raise self.error(f"{key}={self.raw(key)[:40]}: {bad[0][:24]!r} {what}", key)
        return [int(v) for v in items]

    def get_float_list(self, key: str, default: object = _MISSING) -> list[float]:
        if key not in self.options:
            return self._default(key, default)  # type: ignore[return-value]
        return [self._to_float(key, v) for v in self._items(key)]

    def _items(self, key: str) -> list[str]:
        value = self.options[key][0]
        items = [v for v in value.split(",")]
        if value == "" or any(v == "" for v in items[:-1]):
            raise self.error(f"{key}={value}: expected a comma-separated list", key)
        return [v for v in items if v != ""]  # Darknet tolerates one trailing comma

    def _to_float(self, key: str, value: str) -> float:
        try:
            if "_" in value or not value.isascii():  # float() reads 1_0 as 10 and '０.５' as 0.5; atof stops
                raise ValueError(value)
            number = float(value)
        except ValueError:
            raise self.error(f"{key}={value}: expected a number", key) from None
        if not math.isfinite(number):
            raise self.error(f"{key}={value}: expected a finite number", key)
        return number

    def _check_range(self, key: str, value, lo, hi):
        if lo is not None and value < lo:
            raise self.error(f"{key}={self.raw(key)}: must be >= {lo}", key)
        if hi is not None and value > hi:
            raise self.error(f"{key}={self.raw(key)}: must be <= {hi}", key)
        return value

    def _default(self, key: str, default: object) -> object:
        if default is _MISSING:
            raise self.error(f"missing required key {key}=")
        return default


@dataclass
class Cfg:
    """A parsed cfg: the `[net]` section, the layer sections in order, and the source text.

    `path` is the name errors cite (the file name); `file` the absolute path it was read from
    (None for text parsed from memory), for whoever must find the file again.
    """
    path: str
    net: Section
    layers: list[Section]
    text: str
    file: str | None = None
    # building its layers warns once about keys Darknet does not read (engine.darknet.cfg_keys): set by
    # read_cfg, a user's file; not for the copy a model file embeds, nor for a resized copy (warned already)
    warn_unused_keys: bool = field(default=False, repr=False, compare=False)

    def resized(self, width: int, height: int) -> "Cfg":
        """This cfg with [net] width / height replaced (see with_input_size); same path and file."""
        cfg = parse_cfg(with_input_size(self.text, width, height), self.path)
        cfg.file = self.file
        return cfg


def parse_cfg(text: str, path: str = "<cfg>") -> Cfg:
    """Parse cfg text. Raises CfgError naming `path:line` for anything Darknet would misread."""
    sections: list[Section] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"[ \t\r\n\v\f]", "", raw)
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            m = _SECTION_RE.match(line)
            if not m:
                raise CfgError(f"{path}:{lineno} {raw.strip()!r}: malformed section header, expected [name]")
            name = m.group(1).lower()
            name = ALIASES.get(name, name)
            sections.append(Section(name, lineno, path, len(sections) - 1))
            continue
        if "=" not in line:
            raise CfgError(f"{path}:{lineno} {raw.strip()!r}: expected key=value or [section]")
        if not sections:
            raise CfgError(f"{path}:{lineno} {raw.strip()!r}: option before the first section ([net] expected)")
        key, value = line.split("=", 1)
        if not key:
            raise CfgError(f"{path}:{lineno} {raw.strip()!r}: empty key")
        sections[-1].options.setdefault(key, (value, lineno))  # first occurrence wins, as in Darknet
    if not sections:
        raise CfgError(f"{path}: no sections found; a Darknet cfg starts with [net]")
    if sections[0].name != "net":
        raise CfgError(f"{sections[0].where()} the first section must be [net] (or [network])")
    for sec in sections[1:]:
        if sec.name == "net":
            raise CfgError(f"{path}:{sec.line} [net]: only one [net] section is allowed, at the top")
    if len(sections) == 1:
        raise CfgError(f"{path}: [net] has no layers after it")
    return Cfg(path, sections[0], sections[1:], text)


def with_input_size(text: str, width: int, height: int) -> str:
    """cfg text with [net] width= / height= set (added if absent); the layers are untouched.

    Convolutional nets run at any input size their strides divide (Darknet's own `-width/-height`);
    edge devices often want 320 or 256 instead of the 416 or 608 a cfg ships with.
    """
    m = re.search(r"^\s*\[(?!net\]|network\])", text, flags=re.M)
    head, tail = (text[:m.start()], text[m.start():]) if m else (text, "")
    for key, v in (("width", width), ("height", height)):
        head, n = re.subn(rf"^(\s*{key}\s*=).*$", rf"\g<1>{int(v)}", head, flags=re.M)
        if n == 0:
            head = head.rstrip("\n") + f"\n{key}={int(v)}\n"
    return head + tail


def parse_size(size: int | str | Sequence[int], name: str = "size") -> tuple[int, int]:
    """416, "416", "320x256" (width x height) or (320, 256) -> (width, height). Raises ArgumentError naming
    `name`, the argument as the caller spells it (the CLI's "--size")."""
    def whole(v) -> bool:   # True is an int to Python, and 3.5 would be truncated: neither is a size
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if isinstance(size, str):
        parts = size.lower().split("x")
        try:
            vals = [int(v) for v in parts]
        except ValueError:
            raise ArgumentError(f"{name} {size!r}: expected N or WIDTHxHEIGHT, e.g. 416 or 320x256") from None
    elif whole(size):
        vals = [int(size)]
    else:
        try:
            vals = list(size)
        except TypeError:
            vals = None
        if vals is None or not all(whole(v) for v in vals):
            raise ArgumentError(f"{name} {size!r}: expected an int N, a (width, height) pair of ints or a "
                                "'WIDTHxHEIGHT' string, e.g. 416, (320, 256) or '320x256'")
        vals = [int(v) for v in vals]
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or not all(1 <= v <= 8192 for v in vals):
        raise ArgumentError(f"{name} {size!r}: expected a width and height between 1 and 8192")
    return vals[0], vals[1]


NUL_BYTES = "it contains NUL bytes"
# PowerShell 5's `>` and `Out-File` write UTF-16 with a byte-order mark (so does Notepad's "Unicode"): a
# cfg edited by such a script is text, though every other byte is NUL
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def text_problem(head: bytes, complete: bool = False) -> str | None:
    """Why the start of a file is not text, or None if it is: "byte N is not UTF-8" (or UTF-16) or `NUL_BYTES`.
    The one text rule of the engine: `looks_binary`, `read_cfg`, `names_from_bytes` and
    `engine.filekind.classify` (hence `info`, `sniff` and the CLI's messages) all ask it. Unless `complete`
    (`head` is the whole file), a character cut at the end of `head` is text. UTF-8 (with or without a
    byte-order mark) and UTF-16 after its byte-order mark are text; UTF-16 without one is not (NUL bytes)."""
    utf16 = head.startswith(UTF16_BOMS)
    try:
        text = codecs.getincrementaldecoder("utf-16" if utf16 else "utf-8")().decode(head, final=complete)
    except UnicodeDecodeError as err:
        return f"byte {err.start} is not {'UTF-16' if utf16 else 'UTF-8'}"
    return NUL_BYTES if "\x00" in text else None


def decode_text(data: bytes) -> str:
    """A text file's bytes (`text_problem` is None): UTF-16 after its byte-order mark, else UTF-8 (a leading
    U+FEFF kept; read_cfg drops it)."""
    return data.decode("utf-16") if data.startswith(UTF16_BOMS) else data.decode("utf-8")


def names_from_bytes(data: bytes, label: str) -> list[str]:
    """The class names of a names file's content, one per non-blank line, read as a cfg is read: the engine's
    text rule (`text_problem`: UTF-8, or UTF-16 after its byte-order mark; no NUL byte), a UTF-8 mark dropped.
    Raises EngineError naming `label`. `engine.model.read_names` reads a file with it, and the workspace checks
    a model entry's .names with it."""
    # Notepad's UTF-8 mark made class 0 '\ufeffperson'; PowerShell's `>` writes UTF-16 with a mark, and without
    # one UTF-16 decodes as UTF-8 into names full of NULs ('p\x00e\x00r\x00...'): the text rule refuses those
    why = text_problem(data, complete=True)
    if why is not None:
        also = " (nor UTF-16 after a byte-order mark)" if why.endswith("UTF-8") else ""
        raise EngineError(f"{label}: cannot read class names: {why}{also}; expected a text file, one name per line")
    return [ln.strip() for ln in decode_text(data).removeprefix("\ufeff").splitlines() if ln.strip()]


def download_mistake(head: bytes) -> str | None:
    """What a wrong download left under a binary file's name, from its first bytes (20 are enough): a Git LFS
    pointer (a clone without `git lfs pull`) or an HTML page (an error or sign-in page); else None."""
    if head.startswith(b"version https://git"):
        return ("a Git LFS pointer (a small text file): the real file was never downloaded (run `git lfs pull` "
                "in its repository, or download the file itself)")
    if head.lstrip().lower().startswith((b"<!doc", b"<html", b"<?xml", b"<head", b"<!--")):
        return ("an HTML/XML page: the download saved an error or sign-in page (download the file itself, e.g. "
                "from its release's direct link)")
    return None


def looks_binary(head: bytes, complete: bool = False) -> bool:
    """Whether the start of a file is plainly not text (`text_problem`): a NUL byte, or bytes that are neither
    UTF-8 nor UTF-16 after its byte-order mark (a character cut at the end of `head` does not count unless
    `complete`)."""
    return text_problem(head, complete) is not None


def read_cfg(path: str | Path) -> Cfg:
    """Read and parse a cfg file. Raises CfgError for unreadable, binary or malformed files. Building its
    layers (engine.darknet.build.build_layers) warns (EngineWarning) for each key Darknet does not read in its
    section: the keys are traits of the layer classes, which sit above this lexer (engine.darknet.cfg_keys)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_CFG_BYTES + 1)  # bounded: /dev/zero or a FIFO report size 0 and never end
        if len(data) > MAX_CFG_BYTES:
            if looks_binary(data[:4096]):     # a .weights, an ONNX, a photo given where the cfg goes
                raise CfgError(f"{p}: not a text cfg file (a binary file of more than {MAX_CFG_BYTES} bytes); "
                               "did you pass the .weights file instead?")
            raise CfgError(f"{p}: more than {MAX_CFG_BYTES} bytes is too large for a cfg")
    except OSError as err:
        raise CfgError(f"{p}: cannot read cfg: {err.strerror or err}") from err
    cfg = cfg_from_bytes(data, p)
    cfg.file = str(p.resolve())
    cfg.warn_unused_keys = True     # a typo'd key was silently ignored: Darknet says 'Unused field'
    return cfg


def cfg_from_bytes(data: bytes, p: Path) -> Cfg:
    """A cfg file's whole content parsed as `read_cfg` reads it (the text rule, UTF-16 after its byte-order mark,
    a UTF-8 byte-order mark dropped); `p` names it in every CfgError. Also the workspace's check of an uploaded
    pair, which holds the bytes but no file."""
    why = text_problem(data, complete=True)
    if why == NUL_BYTES:
        raise CfgError(f"{p}: contains NUL bytes; not a text cfg file")
    if why is not None and data.startswith(UTF16_BOMS):
        raise CfgError(f"{p}: not a text cfg file: not UTF-8, nor UTF-16 after its byte-order mark ({why}); "
                       "save the cfg as UTF-8")
    if why is not None:
        raise CfgError(f"{p}: not a text cfg file ({why}); did you pass the .weights file instead?")
    text = decode_text(data)
    mistake = download_mistake(data[:64])
    if mistake is not None:     # an engine model .npz or a cfg kept in Git LFS: not "line 1: expected key=value"
        raise CfgError(f"{p}: {mistake}, not a Darknet cfg or engine model file")
    # Notepad saves UTF-8 with a byte-order mark; Darknet would read '\ufeff[net]' as a bad line, but
    # the file is plainly a cfg (and the mark is not kept: model files embed the text without it)
    text = text.removeprefix("\ufeff")
    return parse_cfg(text, p.name)
