"""Runtimes the graph passes lay a model out for (kept import-light: the CLI parser needs it)."""

#: ``cpu``: ONNX Runtime, token maps channels-last; ``openvino`` and ``npu``: channels-first end to end.
TARGETS = ("cpu", "openvino", "npu")
#: The layout every export gets unless ``--target`` says otherwise (channels-last).
DEFAULT_TARGET = TARGETS[0]
#: The channels-first target ``quantize --layout`` re-exports to (the name of that layout, too).
CHANNELS_FIRST = TARGETS[1]


def channels_first(target: str) -> bool:
    """Whether an export for ``target`` is already laid out channels-first (every target but the default)."""
    return target != DEFAULT_TARGET
