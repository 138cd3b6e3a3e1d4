"""Runtimes the graph passes lay a model out for (kept import-light: the CLI parser needs it)."""

#: ``cpu``: ONNX Runtime, token maps channels-last; ``openvino`` and ``npu``: channels-first end to end.
TARGETS = ("cpu", "openvino", "npu")
