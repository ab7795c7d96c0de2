"""resize_bilinear against torch's F.interpolate(mode="bilinear", align_corners=False)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flowad.errors import InputError
from flowad.resize import resize_bilinear

# (h, w) -> (H, W): up, down, mixed, one pixel, non-square, identity, and sizes where float32 coordinates
# round (near 2048) so that only the same rounding as torch's gives the same values
SHAPES = [
    ((8, 8), (64, 64)),
    ((28, 28), (448, 448)),
    ((64, 64), (256, 256)),
    ((3, 7), (448, 300)),
    ((64, 48), (15, 20)),
    ((100, 80), (33, 170)),
    ((12, 40), (96, 9)),
    ((1, 1), (5, 7)),
    ((1, 9), (1, 4)),
    ((13, 1), (7, 1)),
    ((5, 5), (5, 5)),
    ((6, 10), (6, 137)),
    ((256, 256), (1024, 777)),
    ((2900, 3), (4099, 2)),
]


def _torch(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(maps.reshape(-1, 1, *maps.shape[-2:]))
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return out.numpy().reshape(*maps.shape[:-2], *size)


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize(("shape", "size"), SHAPES)
def test_matches_torch(shape: tuple[int, int], size: tuple[int, int], dtype: type, tolerance: float) -> None:
    maps = np.random.default_rng(sum(shape) + sum(size)).standard_normal((2, 3, *shape)).astype(dtype)
    out = resize_bilinear(maps, size)
    assert out.dtype == dtype and out.shape == (2, 3, *size)
    np.testing.assert_allclose(out, _torch(maps, size), rtol=0, atol=tolerance)


def test_float32_is_torch_bit_for_bit_on_image_sizes() -> None:
    # outputs with H + W > 128 go through ATen's generic kernel, whose fused multiply-adds resize_bilinear follows
    maps = np.random.default_rng(0).standard_normal((1, 256, 256)).astype(np.float32) * 50
    for size in [(448, 448), (1000, 1500), (4000, 3000)]:
        assert np.array_equal(resize_bilinear(maps, size), _torch(maps, size))


def test_any_leading_dims_and_dtypes() -> None:
    maps = np.arange(12.0).reshape(3, 4)
    out = resize_bilinear(maps, (6, 8))
    assert out.shape == (6, 8) and out.dtype == np.float64
    np.testing.assert_allclose(out, _torch(maps, (6, 8)), rtol=0, atol=1e-12)
    ints = resize_bilinear(np.arange(12).reshape(1, 1, 1, 3, 4), (6, 8))
    assert ints.dtype == np.float64 and np.array_equal(ints[0, 0, 0], out)
    # clamped at 0 below: the first output pixel repeats the first input pixel exactly
    assert out[0, 0] == maps[0, 0] and out[-1, -1] == maps[-1, -1]
    same = resize_bilinear(maps, (3, 4))
    assert np.array_equal(same, maps) and not np.shares_memory(same, maps)


@pytest.mark.parametrize(
    ("maps", "size", "message"), [(np.zeros(4), (2, 2), "expected"), (np.zeros((2, 2)), (0, 3), "size")]
)
def test_bad_inputs_are_clear_errors(maps: np.ndarray, size: tuple[int, int], message: str) -> None:
    with pytest.raises(InputError, match=message):
        resize_bilinear(maps, size)
