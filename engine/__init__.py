"""qwidgets engine: Darknet models in pure NumPy (FLOAT; HYBRID and INT8 come with quantization)."""
