"""ONNX graph pieces around a model: uint8 images in, resized and normalised as :class:`~flowad.preprocess.Preprocess`
does, and the map, scores, verdict and mask out at the image's own size.

The resize is :func:`flowad.preprocess.resize_uint8` bit for bit, for an input size known only when the graph
runs: the weights are computed from that size in int64, then per output pixel the taps of its window are
gathered, weighted by the fixed-point integers and summed in int32, each pass rounded to uint8. (ONNX's own
``Resize`` with ``antialias=1`` uses float arithmetic and differs by up to 16 grey levels on some pixels.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from flowad.preprocess import PRECISION_BITS


class GraphBuilder:
    """Nodes and constants of a graph, each given a fresh name under ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.nodes, self.initializers, self._count = prefix, [], [], 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value: Any, dtype: Any = None, hint: str = "c") -> str:
        array = np.asarray(value, dtype=dtype)
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, name: str | None = None, **attrs: Any) -> str:
        """Add a node of one output; returns the output's name (``name`` when given)."""
        output = name or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=self._name(op_type), **attrs))
        return output

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", x, to=to)

    def dim(self, x: str, axis: int) -> str:
        """The length of ``x`` along ``axis``, as an int64 tensor of shape (1,)."""
        return self.op("Shape", x, start=axis, end=axis + 1)


def resize_uint8(b: GraphBuilder, images: str, size: tuple[int, int]) -> str:
    """uint8 (N, C, H, W) of any H, W -> uint8 (N, C, height, width): :func:`flowad.preprocess.resize_uint8`."""
    height, width = size
    rows_done = _resample_axis(b, images, axis=3, out_len=width)
    return _resample_axis(b, rows_done, axis=2, out_len=height)


def _resample_axis(b: GraphBuilder, x: str, axis: int, out_len: int) -> str:
    """One pass along ``axis`` (2 or 3) of uint8 (N, C, H, W): gathered taps, int32 weighted sums, rounded."""
    taps, weights = _bilinear_taps(b, b.dim(x, axis), out_len)  # (out, T) each
    gathered = b.cast(b.op("Gather", x, taps, axis=axis), TensorProto.INT32)
    if axis == 2:  # (N, C, out, T, W): the weights need a trailing axis
        weights = b.op("Unsqueeze", weights, b.const([2], np.int64))
    summed = b.op("ReduceSum", b.op("Mul", gathered, weights), b.const([axis + 1], np.int64), keepdims=0)
    half = b.const(1 << (PRECISION_BITS - 1), np.int32)
    rounded = b.op("Div", b.op("Add", summed, half), b.const(1 << PRECISION_BITS, np.int32))
    return b.cast(b.op("Clip", rounded, b.const(0, np.int32), b.const(255, np.int32)), TensorProto.UINT8)


def _bilinear_taps(b: GraphBuilder, in_len: str, out_len: int) -> tuple[str, str]:
    """:func:`flowad.preprocess.bilinear_taps` in int64 ops, for an input length known when the graph runs."""
    i64 = np.int64
    longest = b.op("Max", in_len, b.const([out_len], i64))  # (1,)
    n_taps = b.op(
        "Add",
        b.op(
            "Div", b.op("Add", b.op("Mul", longest, b.const(2, i64)), b.const(out_len - 1, i64)), b.const(out_len, i64)
        ),
        b.const(1, i64),
    )
    odd_out = b.const((2 * np.arange(out_len, dtype=i64) + 1)[:, None])  # (out, 1): 2i + 1
    reach = b.op("Mul", longest, b.const(2, i64))
    # the first tap: floor(((2i + 1) in - 2M) / (2 out)), at least 0 (Div truncates, but negatives become 0)
    start = b.op(
        "Max", b.op("Div", b.op("Sub", b.op("Mul", odd_out, in_len), reach), b.const(2 * out_len, i64)), b.const(0, i64)
    )
    tap = b.op("Range", b.const(0, i64), b.op("Squeeze", n_taps, b.const([0], i64)), b.const(1, i64))
    j = b.op("Add", start, tap)  # (out, T)
    odd_in = b.op("Add", b.op("Mul", j, b.const(2, i64)), b.const(1, i64))
    offset = b.op("Abs", b.op("Sub", b.op("Mul", odd_in, b.const(out_len, i64)), b.op("Mul", odd_out, in_len)))
    weight = b.op("Max", b.op("Sub", reach, offset), b.const(0, i64))
    weight = b.op("Where", b.op("Less", j, in_len), weight, b.const(0, i64))
    total = b.op("ReduceSum", weight, b.const([1], i64), keepdims=1)
    scaled = b.op("Add", b.op("Mul", weight, b.const(1 << (PRECISION_BITS + 1), i64)), total)
    fixed = b.op("Div", scaled, b.op("Mul", total, b.const(2, i64)))  # round half up, exactly
    index = b.op("Min", j, b.op("Sub", in_len, b.const(1, i64)))
    return index, b.cast(fixed, TensorProto.INT32)


def normalise(
    b: GraphBuilder, images: str, mean: Sequence[float], std: Sequence[float], name: str | None = None
) -> str:
    """uint8 (N, 3, H, W) -> float32 (x / 255 - mean) / std per channel, in float32 as Preprocess computes it."""
    scaled = b.op("Div", b.cast(images, TensorProto.FLOAT), b.const(255.0, np.float32))
    shape = (1, 3, 1, 1)
    centred = b.op("Sub", scaled, b.const(np.asarray(mean, np.float32).reshape(shape)))
    return b.op("Div", centred, b.const(np.asarray(std, np.float32).reshape(shape)), name=name)


def image_batch_to_nchw(b: GraphBuilder, images: str) -> str:
    """uint8 (N, H, W, 3), as images are decoded, -> (N, 3, H, W)."""
    return b.op("Transpose", images, perm=[0, 3, 1, 2])


def map_at_image_size(b: GraphBuilder, maps: str, images: str, name: str) -> str:
    """Maps (N, h, w) -> (N, H, W) at the size of ``images`` (N, H, W, 3): bilinear, half-pixel centres, as
    ``F.interpolate(mode="bilinear", align_corners=False)`` and :func:`flowad.resize.resize_bilinear`."""
    i64 = np.int64
    sizes = b.op("Concat", b.dim(maps, 0), b.const([1], i64), b.dim(images, 1), b.dim(images, 2), axis=0)
    channel = b.const([1], i64)
    resized = b.op(
        "Resize",
        b.op("Unsqueeze", maps, channel),
        "",
        "",
        sizes,
        mode="linear",
        coordinate_transformation_mode="half_pixel",
    )
    return b.op("Squeeze", resized, channel, name=name)


def verdict_and_mask(b: GraphBuilder, full_map: str, scores: str, thresholds: Any, names: dict[str, str]) -> None:
    """The normalised scores, verdicts and masks of :class:`~flowad.thresholds.Thresholds`, with its arithmetic:
    scores compared and normalised in float64, the map compared in float32 (as numpy compares it)."""
    score64 = b.cast(scores, TensorProto.DOUBLE)
    image, low = b.const(thresholds.image, np.float64), b.const(thresholds.low, np.float64)
    below = b.op(
        "Div",
        b.op("Mul", b.op("Sub", score64, low), b.const(0.5)),
        b.const(max(thresholds.image - thresholds.low, 1e-12)),
    )
    above_part = b.op(
        "Div",
        b.op("Mul", b.op("Sub", score64, image), b.const(0.5)),
        b.const(max(thresholds.high - thresholds.image, 1e-12)),
    )
    above = b.op("Add", b.const(0.5), above_part)
    piecewise = b.op("Where", b.op("Less", score64, image), below, above)
    b.op("Clip", piecewise, b.const(0.0), b.const(1.0), name=names["normalised_score"])
    anomalous = b.op("GreaterOrEqual", score64, image, name=names["anomalous"])
    flagged = b.op("Unsqueeze", anomalous, b.const([1, 2], np.int64))
    # float64 holds every float32 exactly: the same test as numpy's, and safe from a conversion of the
    # graph's float32 constants to float16 (OpenVINO's FP16)
    pixel = b.const(float(np.float32(thresholds.pixel)), np.float64)
    above_pixel = b.op("GreaterOrEqual", b.cast(full_map, TensorProto.DOUBLE), pixel)
    b.op("And", above_pixel, flagged, name=names["mask"])
