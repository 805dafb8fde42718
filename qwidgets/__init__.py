"""qwidgets: Jupyter views over the engine's Session API (the engine never imports this package)."""
from qwidgets.augment_view import AugmentView
from qwidgets.controls import ExplorerControls
from qwidgets.detections_view import DetectionsView
from qwidgets.explorer import Explorer
from qwidgets.graph_view import GraphView, graph_to_cytoscape
from qwidgets.layer_panel import LayerPanel
from qwidgets.quant_view import QuantizationView
from qwidgets.weight_editor import WeightEditor
from qwidgets.workspace_view import WorkspaceView

__all__ = ["AugmentView", "DetectionsView", "Explorer", "ExplorerControls", "GraphView", "LayerPanel",
           "QuantizationView", "WeightEditor", "WorkspaceView", "graph_to_cytoscape"]
