"""The graph model shared by the engine and the views: one node per Darknet layer plus "input".

Node ids are stable strings: "input", "0", "1", ... (the Darknet layer index). Edges live on the
consumer (`inputs`). Per-node numbers (SQNR, saturation, ...) are overlays kept elsewhere as
`dict[node_id, float]`; the structure here never changes after the cfg is parsed. The graph is
built from the layers by engine/darknet/build.py; this module knows no layer type.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

INPUT = "input"


def node_id(index: int) -> str:
    return INPUT if index < 0 else str(index)


@dataclass(frozen=True)
class Node:
    id: str
    index: int
    kind: str
    inputs: tuple[str, ...]
    in_shapes: tuple[tuple[int, int, int], ...]
    out_shape: tuple[int, int, int]
    attrs: dict[str, Any] = field(hash=False)
    params: int = 0
    macs: int = 0
    line: int = 0

    @property
    def label(self) -> str:
        return f"{self.index} {self.kind}" if self.index >= 0 else "input"


@dataclass
class Graph:
    name: str
    input_shape: tuple[int, int, int]
    nodes: list[Node]
    heads: tuple[str, ...] = ()         # ids of the detection heads
    losses: tuple[str, ...] = ()        # ids of training-only layers ([cost])

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, key: str | int) -> Node:
        """The node of a layer index (int or its string id)."""
        try:
            idx = int(key)
        except (TypeError, ValueError):
            raise KeyError(f"no layer {key!r}; ids are '0'..'{len(self.nodes) - 1}'") from None
        if not 0 <= idx < len(self.nodes):
            raise KeyError(f"layer {key!r} does not exist; this model has layers 0..{len(self.nodes) - 1}")
        return self.nodes[idx]

    @property
    def output_ids(self) -> list[str]:
        """Detection heads, or else the last layer that is not [cost]."""
        if self.heads:
            return list(self.heads)
        rest = [n.id for n in self.nodes if n.id not in self.losses]
        return rest[-1:]

    @property
    def total_params(self) -> int:
        return sum(n.params for n in self.nodes)

    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    def consumers(self, nid: str) -> list[str]:
        return [n.id for n in self.nodes if nid in n.inputs]

    def to_networkx(self):
        """A networkx DiGraph: node attributes = Node fields, edges producer -> consumer."""
        import networkx as nx
        g = nx.DiGraph(name=self.name)
        g.add_node(INPUT, index=-1, kind="input", out_shape=self.input_shape, label="input")
        for n in self.nodes:
            g.add_node(n.id, index=n.index, kind=n.kind, out_shape=n.out_shape, params=n.params, macs=n.macs,
                       label=n.label, attrs=dict(n.attrs))
            for src in n.inputs:
                g.add_edge(src, n.id)
        return g

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape),
                "nodes": [_jsonable(asdict(n)) for n in self.nodes]}


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v
