"""The keys Darknet reads in each cfg section, and a warning for the others (a typo in a hand-edited cfg).

Darknet (`parser.c`, pjreddie and AlexeyAB) reads each key it knows with `option_find*` and prints
"Unused field" for the rest; this engine reads only the keys that change inference and ignored all
others silently, so `activaton=leaky` or `strides=2` built another network without a word (and with
weights of the same size, ran). The keys Darknet reads (training options, loss settings) stay silent:
a layer section's are its class's `cfg_keys` trait (engine/layers/), [net]'s `engine.darknet.cfg.NET_KEYS`,
plus `EVERY_SECTION_KEYS`. Darknet warns while it builds the network, and so does `build_layers`.
"""
from __future__ import annotations

import difflib
import unicodedata
import warnings
from typing import Iterator, Mapping

from engine.darknet.cfg import NET_KEYS
from engine.errors import EngineWarning
from engine.layers import LAYERS
from engine.layers.base import EVERY_SECTION_KEYS


def known_keys(section: str) -> frozenset[str] | None:
    """The keys Darknet reads in a `[section]` (its name after ALIASES), or None for a section no layer type
    registers (the build refuses it)."""
    if section == "net":
        return NET_KEYS | EVERY_SECTION_KEYS
    if section not in LAYERS:
        return None
    return LAYERS.get(section).cfg_keys | EVERY_SECTION_KEYS


class _KnownKeys(Mapping[str, frozenset[str]]):
    """section name -> `known_keys`, read from the layer classes at each lookup (a layer type registered
    later is in it)."""

    def __getitem__(self, section: str) -> frozenset[str]:
        keys = known_keys(section)
        if keys is None:
            raise KeyError(section)
        return keys

    def __iter__(self) -> Iterator[str]:
        return iter(["net", *LAYERS])

    def __len__(self) -> int:
        return 1 + len(LAYERS.names())


# the table this module used to hold, kept for its readers: a view of the traits, not a second list
DARKNET_KEYS: Mapping[str, frozenset[str]] = _KnownKeys()
MAX_WARNINGS = 5


def unknown_keys(cfg) -> list[tuple[object, str]]:
    """(section, key) of every key Darknet does not read in its section, in file order; sections no layer
    type registers (the build refuses them) are skipped."""
    out = []
    for sec in [cfg.net, *cfg.layers]:
        known = known_keys(sec.name)
        if known is not None:
            out += [(sec, key) for key in sec.options if key not in known]
    return out


def warn_unknown_keys(cfg, stacklevel: int = 3) -> None:
    """One EngineWarning per key Darknet would report as 'Unused field' (at most MAX_WARNINGS, then a count),
    naming file:line, the section and the closest key of that section (a typo?). `stacklevel`: as warnings.warn's,
    1 being this function (3: the caller of its caller)."""
    found = unknown_keys(cfg)
    for sec, key in found[:MAX_WARNINGS]:
        close = difflib.get_close_matches(key, sorted(known_keys(sec.name)), n=1, cutoff=0.82)
        hint = f"; did you mean {close[0]}=?" if close else ""
        shown, note = _shown(key)
        warnings.warn(f"{sec.where(key)} {shown}={sec.raw(key)[:40]}{note}: not a key of [{sec.name}]; ignored "
                      f"(Darknet prints 'Unused field'){hint}", EngineWarning, stacklevel=stacklevel)
    if len(found) > MAX_WARNINGS:
        warnings.warn(f"{cfg.path}: {len(found) - MAX_WARNINGS} more keys that Darknet does not read in their "
                      "sections were ignored", EngineWarning, stacklevel=stacklevel)


def _shown(key: str) -> tuple[str, str]:
    """(the key, a note): as typed, or escaped with the culprit named when it holds a character that does not
    show: a no-break space copied from a web page makes `batch_normalize\xa0=1` look exactly like the real key."""
    short = key if len(key) <= 40 else key[:40] + "..."      # a 10 MB line is one key
    odd = next((ch for ch in short if not ch.isprintable()), None)
    if odd is None:
        return short, ""
    return ascii(short), f" (the key contains U+{ord(odd):04X} {unicodedata.name(odd, 'an unnamed character')})"
