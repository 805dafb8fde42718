"""qwidgets: Jupyter views over the engine's Session API (the engine never imports this package)."""
from qwidgets.augment_view import AugmentView
from qwidgets.explorer_preview import ModelView
from qwidgets.graph_view import GraphView, graph_to_cytoscape
from qwidgets.layer_panel import LayerPanel
from qwidgets.workspace_view import WorkspaceView

__all__ = ["AugmentView", "GraphView", "LayerPanel", "ModelView", "WorkspaceView", "graph_to_cytoscape"]
