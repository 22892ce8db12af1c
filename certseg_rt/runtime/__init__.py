"""Certify with a built model: numpy + a backend (ONNX Runtime, TensorRT, or the torch reference).

Importing this package never imports torch or diffusers; only the torch reference backend does.
"""
