"""Image work around the model: augmentation, drawing detections, the bundled sample photos."""
