"""Interop: ONNX export (onnx_export.py)."""
