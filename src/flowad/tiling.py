"""Large images as tiles: where an image's tiles lie, how their maps blend into one map, and the NFA over tiles.

With ``--tile T`` a model never sees a whole image: it is trained on T x T tiles cut from the full-resolution
training images, and an image is scored tile by tile. Each tile goes through the run's preprocessing like a
whole image would (resized to the model's input size: T = the input size keeps full resolution, a larger T
trades resolution for fewer tiles), its map comes back at T x T and is added into the image's map with a
smooth window, so overlapping tiles blend without seams:

    map(p) = sum_t w_t(p) m_t(p) / sum_t w_t(p),   w(y, x) = v(y) v(x),
    v(i) = FLOOR + (1 - FLOOR) sin^2(pi (i + 1/2) / T)

With a stride of T / 2 the sin^2 windows of neighbouring tiles add up to a constant inside the image, so a
tile's border counts little where another tile's centre covers the same pixels. A map that is the same
constant on every tile blends to that constant. The image score is the maximum of the blended map.

The a contrario test (:mod:`flowad.nfa`) runs on each tile's latents; every window of every tile is one test,
so the number of tests of a tile is multiplied by the image's number of tiles, and a pixel's log NFA is the
smallest over the tiles that cover it: "fewer than one false detection expected per image" holds for the
whole image, by the union bound over all its tests.

Only ``batch`` tiles are scored at once, and the image's map (and log NFA) are the only full-size arrays, so
memory stays bounded whatever the image's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowad.errors import InputError
from flowad.resize import resize_bilinear

FLOOR = 0.01  # every pixel of a tile keeps some weight: an image border is covered by one tile's edge only


@dataclass(frozen=True)
class Tiling:
    """Square tiles of ``tile`` pixels every ``stride`` pixels; the last row and column of tiles end at the
    image's border, so every pixel is covered."""

    tile: int
    stride: int

    def __post_init__(self) -> None:
        if not isinstance(self.tile, int) or self.tile < 8:
            raise InputError(f"tile is {self.tile!r}; expected a whole number of pixels of at least 8")
        if not isinstance(self.stride, int) or not 0 < self.stride <= self.tile:
            raise InputError(f"tile stride is {self.stride!r}; expected a whole number from 1 to the tile, {self.tile}")

    def positions(self, height: int, width: int) -> list[tuple[int, int]]:
        """The (top, left) corner of every tile of a ``height`` x ``width`` image, row by row."""
        if height < self.tile or width < self.tile:
            raise InputError(
                f"image of {width}x{height} pixels is smaller than the tile ({self.tile}x{self.tile}); "
                f"expected images at least as large as --tile"
            )
        return [(y, x) for y in starts(height, self.tile, self.stride) for x in starts(width, self.tile, self.stride)]

    def count(self, height: int, width: int) -> int:
        return len(starts(height, self.tile, self.stride)) * len(starts(width, self.tile, self.stride))


def tiling_of(tile: int | None, stride: int | None) -> Tiling | None:
    """The tiling of a run's settings: None without ``tile``; the stride defaults to half the tile."""
    if tile is None:
        return None
    return Tiling(tile, stride if stride is not None else max(tile // 2, 1))


def starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: 0, stride, 2 stride, ... and the last at ``length - tile``."""
    found = list(range(0, length - tile + 1, stride))
    if found[-1] != length - tile:
        found.append(length - tile)
    return found


def blend_window(tile: int) -> np.ndarray:
    """The (tile, tile) float32 weight of a tile's pixels (module docstring)."""
    v = FLOOR + (1 - FLOOR) * np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    return np.outer(v, v).astype(np.float32)


class MapBlender:
    """Adds tiles' maps into one (height, width) map, weighted by :func:`blend_window`."""

    def __init__(self, height: int, width: int, tile: int) -> None:
        self.total = np.zeros((height, width), np.float32)
        self.weight = np.zeros((height, width), np.float32)
        self.window = blend_window(tile)
        self.tile = tile

    def add(self, tile_map: np.ndarray, top: int, left: int) -> None:
        rows, cols = slice(top, top + self.tile), slice(left, left + self.tile)
        self.total[rows, cols] += self.window * tile_map
        self.weight[rows, cols] += self.window

    def result(self) -> np.ndarray:
        return self.total / self.weight


@dataclass
class TiledScore:
    """An image scored tile by tile: its blended map, score, and log NFA (when asked), at the image's size."""

    map: np.ndarray
    score: float
    log_nfa: np.ndarray | None = None


RunTiles = Callable[[np.ndarray, bool], Any]
"""Scores uint8 tiles (N, h, w, 3) at the model's size; returns ``maps`` (N, h, w), and ``latents`` when asked."""


def score_tiled(
    rgb: np.ndarray,
    tiling: Tiling,
    resize: Callable[[np.ndarray], np.ndarray],
    run_tiles: RunTiles,
    batch: int,
    nfa: Callable[[list[np.ndarray], int], np.ndarray] | None = None,
) -> TiledScore:
    """``rgb`` (H, W, 3) uint8 scored by ``run_tiles`` a ``batch`` of tiles at a time; each tile is brought to the
    model's size by ``resize``. ``nfa(latents of one tile, number of tiles)`` gives its log NFA at the model's size."""
    height, width = rgb.shape[:2]
    positions = tiling.positions(height, width)
    blender = MapBlender(height, width, tiling.tile)
    log_nfa = None if nfa is None else np.full((height, width), np.inf, np.float32)
    t = tiling.tile
    for chunk in _chunks(positions, batch):
        tiles = np.stack([resize(rgb[y : y + t, x : x + t]) for y, x in chunk])
        out = run_tiles(tiles, nfa is not None)
        for i, (y, x) in enumerate(chunk):
            blender.add(_at_tile_size(out.maps[i], t), y, x)
            if log_nfa is not None:
                tile_nfa = nfa([z[i : i + 1] for z in out.latents], len(positions))[0]
                view = log_nfa[y : y + t, x : x + t]
                np.minimum(view, _at_tile_size(tile_nfa.astype(np.float32), t), out=view)
    blended = blender.result()
    return TiledScore(blended, float(blended.max()), log_nfa)


def _at_tile_size(values: np.ndarray, tile: int) -> np.ndarray:
    return values if values.shape == (tile, tile) else resize_bilinear(values, (tile, tile))


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
