"""The lamp casts and the grey-world white balance of the lighting benchmarks (daemon/lamps.py): numeric checks."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.lamps import LAMPS, cast, grey_world, linear_to_srgb, srgb_to_linear


def test_srgb_round_trip():
    x = np.linspace(0, 1, 101)
    assert np.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-6)


def test_no_lamp_at_strength_zero_and_the_mean_luminance_is_kept():
    rng = np.random.default_rng(0)
    photo = rng.integers(30, 220, (40, 60, 3), dtype=np.uint8)
    assert np.abs(cast(photo, "hps", 0.0).astype(int) - photo).max() <= 1
    lin = lambda im: srgb_to_linear(im[..., ::-1] / 255.0) @ np.array([0.2126, 0.7152, 0.0722])  # noqa: E731
    photo = rng.integers(20, 90, (40, 60, 3), dtype=np.uint8)  # dark enough that no lamp's gain clips a channel
    for lamp in LAMPS:
        lit = cast(photo, lamp, 1.0)
        assert abs(lin(lit).mean() - lin(photo).mean()) < 0.01 * lin(photo).mean() + 0.002, lamp


def test_sodium_light_turns_grey_orange_and_grey_world_brings_it_back():
    grey = np.full((8, 8, 3), 128, np.uint8)
    b, g, r = cast(grey, "hps", 1.0)[0, 0].astype(int)
    assert r > g > b  # orange
    balanced = grey_world(cast(grey, "hps", 1.0)).astype(int)[0, 0]
    assert balanced.max() - balanced.min() <= 2 and abs(balanced.mean() - 128) < 16  # neutral again
    b, g, r = cast(grey, "redblue_led", 1.0)[0, 0].astype(int)
    assert r > b > g  # magenta


def test_unknown_lamp_is_named():
    with pytest.raises(ValueError, match="unknown lamp 'uv'"):
        cast(np.zeros((2, 2, 3), np.uint8), "uv")
