"""The lamp casts and the grey-world white balance of the lighting benchmarks (daemon/lamps.py): numeric checks."""

from __future__ import annotations

import numpy as np
import pytest

from daemon import lamps
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


def daylight_frame() -> np.ndarray:
    """A uniform frame of exactly the training photos' mean daylight colour (green-dominant, not grey)."""
    rg, bg = np.exp(lamps.DAYLIGHT_CHROMA_MEAN)
    lin_bgr = np.array([0.3 * bg, 0.3, 0.3 * rg])
    return np.full((48, 64, 3), np.round(linear_to_srgb(lin_bgr) * 255), np.uint8)


def test_auto_balance_leaves_daylight_alone_and_balances_a_lamp_cast():
    day = daylight_frame()
    assert lamps.daylight_distance(day) < 0.1
    assert lamps.auto_balance(day) is day  # daylight frames pass untouched (plain grey world would shift them)
    assert np.abs(grey_world(day).astype(int) - day).max() > 20
    for lamp in ("hps", "redblue_led"):
        lit = cast(day, lamp, 1.0)
        assert lamps.daylight_distance(lit) > lamps.AUTO_BALANCE_DISTANCE, lamp
        assert np.array_equal(lamps.auto_balance(lit), grey_world(lit)), lamp
    # a faint cast stays inside daylight's spread: left alone
    faint = cast(day, "warm_led", 0.1)
    assert lamps.daylight_distance(faint) < lamps.AUTO_BALANCE_DISTANCE
    assert lamps.auto_balance(faint) is faint


def test_auto_is_a_white_balance_of_the_config_and_the_preprocessing():
    from daemon import config, vision

    assert config.DetectConfig(white_balance="auto").white_balance == "auto"
    sodium = cast(daylight_frame(), "hps", 1.0)
    balanced, _ = vision.preprocess(sodium, (64, 64), "auto")
    grey, _ = vision.preprocess(sodium, (64, 64), "grey_world")
    assert np.array_equal(balanced, grey)
