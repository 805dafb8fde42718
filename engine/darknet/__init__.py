"""The Darknet formats: cfg lexer, `.weights`, image decoding and letterbox, building layers, head decoding and NMS."""
