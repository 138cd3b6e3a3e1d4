"""Whether two ONNX graphs compute the same thing with the same ops, whatever their node names and order.

Each value gets a Merkle hash (its producer's op, domain, attributes and the hashes of its inputs; initializers
by their contents), and two graphs are identical when the multisets of node hashes and the graph outputs' hashes
match. Used to show that a refactor of the passes writes the same graphs (BENCHMARKS.md, issue 12):

    python benchmarks/graph_fingerprint.py before.onnx after.onnx
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import sys

import onnx
from onnx import numpy_helper


def _digest(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()


def fingerprint(path: str) -> tuple[collections.Counter[str], list[str]]:
    """(multiset of node hashes, hashes of the graph outputs)."""
    graph = onnx.load(path).graph
    hashes: dict[str, str] = {}
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        hashes[tensor.name] = _digest(array.tobytes(), array.shape, str(array.dtype))
    for value in graph.input:
        hashes.setdefault(value.name, _digest("input", value.name))
    nodes: collections.Counter[str] = collections.Counter()
    for node in graph.node:  # a valid model lists its nodes in topological order
        attrs = sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in node.attribute)
        key = _digest(node.op_type, node.domain, attrs, [hashes.get(name, "") for name in node.input])
        for k, name in enumerate(node.output):
            hashes[name] = f"{key}:{k}"
        nodes[key] += 1
    return nodes, [hashes[value.name] for value in graph.output]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args()
    (a, out_a), (b, out_b) = fingerprint(args.first), fingerprint(args.second)
    if a == b and out_a == out_b:
        print(f"identical: {sum(a.values())} nodes")
        return 0
    print(f"different: {sum((a - b).values())} nodes only in the first, {sum((b - a).values())} only in the second; "
          f"outputs {'agree' if out_a == out_b else 'differ'}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
