"""ONNX export (KV-cache layout of optimum / transformers.js) and a small onnxruntime runner."""

from .export import BACKENDS, ExportResult, OnnxCausalLM, PastEntry, export_model_folder, export_onnx, io_names, \
    optimum_available, past_entries

__all__ = ["BACKENDS", "ExportResult", "OnnxCausalLM", "PastEntry", "export_model_folder", "export_onnx", "io_names",
           "optimum_available", "past_entries"]
