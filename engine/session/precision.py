"""One layer across precisions: CROSS (the other precision on the same inputs), fitness against the
FLOAT run, and the rest of the network run from a given output.

Functions of an Executor and explicit values; the Session calls them with its own state.
"""
from __future__ import annotations

from typing import Callable

from engine.errors import EngineError
from engine.quant.executor import FLOAT, INT8, Executor, LayerRecord, Value
from engine.quant.fitness import ErrorStats, error_stats
from engine.quant.modes import Mode
from engine.session.results import CrossResult

InputsOf = Callable[[int, list[Value]], list[Value]]     # (layer, the values so far) -> its inputs


def _against(ref, value: Value, record: LayerRecord, *stat_keys: str) -> ErrorStats:
    saturated = sum(record.stats.get(k, 0) for k in stat_keys)
    return error_stats(ref, value.float(), value.q.q if value.q is not None else None, saturated)


def other_precision(executor: Executor, index: int) -> str:
    return INT8 if executor.precision(index) == FLOAT else FLOAT


def cross_layer(executor: Executor, index: int, inputs: list[Value], value: Value, record: LayerRecord) -> CrossResult:
    """Layer `index` run in the other precision on `inputs` (those that produced `value`, `record`)."""
    other = other_precision(executor, index)
    if other == INT8:
        if executor.qmodel is None:
            raise EngineError("CROSS to int8 needs a quantized model (Session(quantized=...))")
        if not executor.has_int_path(index, Mode.HYBRID if executor.mode == Mode.HYBRID else Mode.INT8):
            kind = executor.model.layers[index].kind
            raise EngineError(f"layer {index} [{kind}] has no int8 path in {executor.mode} mode (it always runs float)")
    v_other, rec_other = executor.run_layer(index, inputs, other)
    y = value.float()
    return CrossResult(index, record.precision, other, y, v_other.float(), v_other, rec_other,
                       _against(y, v_other, rec_other, "saturated"))


def layer_fitness(executor: Executor, index: int, value: Value, record: LayerRecord, float_ref: list,
                  inputs_of: InputsOf, local: bool = True) -> dict[str, ErrorStats | None]:
    """Propagated (the run's output `value`) and local (this layer alone in int8 on the FLOAT run's
    inputs, with `local`) error statistics against the FLOAT outputs `float_ref`."""
    prop = _against(float_ref[index], value, record, "saturated", "input_saturated")
    local_stats = None
    if local and executor.precision(index) == INT8:
        lv, lrec = executor.run_layer(index, inputs_of(index, [Value(f=y) for y in float_ref]))
        local_stats = _against(float_ref[index], lv, lrec, "saturated", "input_saturated")
    return {"propagated": prop, "local": local_stats}


def run_rest(executor: Executor, values: list[Value], inputs_of: InputsOf) -> list[Value]:
    """`values` (the outputs of the first layers) completed by running the remaining layers."""
    values = list(values)
    for i in range(len(values), len(executor.model.layers)):
        values.append(executor.run_layer(i, inputs_of(i, values))[0])
    return values
