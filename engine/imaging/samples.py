"""Small sample photos shipped inside the package, so a first run needs no files."""
from __future__ import annotations

from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def sample_images() -> list[Path]:
    return sorted(SAMPLES.glob("*.jpg"))


def sample(name: str = "dog") -> Path:
    """Path of a bundled photo by stem ('dog', 'person', 'horses')."""
    path = SAMPLES / f"{name}.jpg"
    if not path.is_file():
        raise KeyError(f"no sample {name!r}; available: {', '.join(p.stem for p in sample_images())}")
    return path
