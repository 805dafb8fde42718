"""Darknet activations (`activations.c`), applied in place to float32 arrays."""
from __future__ import annotations

from typing import Callable

import numpy as np

from engine.registry import Registry

ACTIVATIONS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("activation")
F = np.float32


@ACTIVATIONS.register("linear")
def linear(y: np.ndarray) -> np.ndarray:
    return y


@ACTIVATIONS.register("leaky")
def leaky(y: np.ndarray) -> np.ndarray:
    # max(y, 0.1y) == (y > 0 ? y : 0.1y) for every float; slope 0.1 as in Darknet (not 0.01)
    return np.maximum(y, y * F(0.1), out=y)


@ACTIVATIONS.register("relu")
def relu(y: np.ndarray) -> np.ndarray:
    return np.maximum(y, F(0), out=y)


@ACTIVATIONS.register("relu6")
def relu6(y: np.ndarray) -> np.ndarray:
    return np.clip(y, F(0), F(6), out=y)


@ACTIVATIONS.register("logistic")
def logistic(y: np.ndarray) -> np.ndarray:
    # 1/(1+e^-x) without overflow warnings for very negative x
    with np.errstate(over="ignore"):
        np.negative(y, out=y)
        np.exp(y, out=y)
        y += F(1)
        return np.reciprocal(y, out=y)


def _softplus(y: np.ndarray) -> np.ndarray:
    # AB's thresholded softplus: x if x > 20, e^x if x < -20, else log1p(e^x)
    with np.errstate(over="ignore"):
        return np.where(y > 20, y, np.where(y < -20, np.exp(y), np.log1p(np.exp(y)))).astype(F)


@ACTIVATIONS.register("mish")
def mish(y: np.ndarray) -> np.ndarray:
    t = np.tanh(_softplus(y))
    return np.multiply(y, t, out=y)


@ACTIVATIONS.register("swish")
def swish(y: np.ndarray) -> np.ndarray:
    s = logistic(y.copy())
    return np.multiply(y, s, out=y)


@ACTIVATIONS.register("ramp")
def ramp(y: np.ndarray) -> np.ndarray:
    y[...] = y * (y > 0) + F(0.1) * y
    return y


@ACTIVATIONS.register("relie")
def relie(y: np.ndarray) -> np.ndarray:
    return np.maximum(y, y * F(0.01), out=y)


@ACTIVATIONS.register("elu")
def elu(y: np.ndarray) -> np.ndarray:
    y[...] = np.where(y >= 0, y, np.expm1(np.minimum(y, 0)))
    return y


@ACTIVATIONS.register("selu")
def selu(y: np.ndarray) -> np.ndarray:
    y[...] = np.where(y >= 0, F(1.0507) * y, F(1.0507 * 1.6732) * np.expm1(np.minimum(y, 0)))
    return y


@ACTIVATIONS.register("loggy")
def loggy(y: np.ndarray) -> np.ndarray:
    logistic(y)
    y *= F(2)
    y -= F(1)
    return y


@ACTIVATIONS.register("hardtan")
def hardtan(y: np.ndarray) -> np.ndarray:
    return np.clip(y, F(-1), F(1), out=y)


@ACTIVATIONS.register("tanh")
def tanh(y: np.ndarray) -> np.ndarray:
    return np.tanh(y, out=y)


def activate(y: np.ndarray, name: str) -> np.ndarray:
    """Apply activation `name` to float32 `y` in place and return it."""
    return ACTIVATIONS.get(name)(y)


def activation_key(sec, key: str = "activation", default: str = "logistic") -> str:
    """Read and validate an activation name. Darknet silently falls back to relu; we refuse."""
    name = sec.get_str(key, default)
    if name not in ACTIVATIONS:
        raise sec.error(f"{key}={name}: unknown activation; known: {', '.join(ACTIVATIONS.names())}", key)
    return name
