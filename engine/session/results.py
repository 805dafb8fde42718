"""What Session calls return: one step, a CROSS run, a continuation, a rerun after an edit."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.darknet.detect import Detection
from engine.quant.executor import FLOAT, LayerRecord, Value
from engine.quant.fitness import ErrorStats


@dataclass
class StepResult:
    index: int
    node_id: str
    kind: str
    precision: str
    value: Value = field(repr=False)
    record: LayerRecord = field(repr=False)
    seconds: float = 0.0

    @property
    def y(self) -> np.ndarray:
        return self.value.float()


@dataclass
class CrossResult:
    index: int
    precision: str                 # what the session ran
    other: str                     # what CROSS ran
    y: np.ndarray = field(repr=False)
    y_other: np.ndarray = field(repr=False)
    value_other: Value = field(repr=False)
    record_other: LayerRecord = field(repr=False)
    diff: ErrorStats = None        # y_other against y

    @property
    def float_and_int(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.y, self.y_other) if self.precision == FLOAT else (self.y_other, self.y)


@dataclass
class ContinueResult:
    source: str                    # "this" or "other"
    index: int
    detections: list[Detection]
    values: list[Value] = field(repr=False)


@dataclass
class RerunResult:
    index: int
    before: np.ndarray = field(repr=False)
    after: np.ndarray = field(repr=False)
    diff: ErrorStats = None
    changed: int = 0                         # number of output values that changed
    detections_before: list | None = None
    detections_after: list | None = None
