"""Greenhouse lamp colour casts and grey-world white balance: the lighting bench's conditions, training's augmentation.

A lamp is a per-channel gain in linear light (the camera's R, G, B response to the lamp's spectrum relative to
daylight, normalised to the strongest channel); the camera's auto exposure then brings the mean luminance back. At
strength s the gains are 1 + s·(g − 1), so 0 is the photo as it is and 1 the lamp in full. The gains are coarse
readings of each lamp's spectrum through a typical CMOS sensor, not measurements of one camera: a benchmark of how
far colour moves, not a colour science model.
"""

from __future__ import annotations

import numpy as np

# (R, G, B) linear gains, daylight = (1, 1, 1)
LAMPS = {
    "hps": (1.0, 0.62, 0.12),         # high-pressure sodium, ~2000 K: deep orange, almost no blue
    "redblue_led": (1.0, 0.18, 0.75),  # horticultural red + blue LED: magenta, green nearly gone
    "warm_led": (1.0, 0.80, 0.55),     # warm white LED, ~3000 K
    "cool_led": (0.82, 0.94, 1.0),     # cool white LED, ~5500-6500 K
}

_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # Rec. 709, linear RGB


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055)


# lookup tables (a training data loader casts every other image): 8-bit sRGB → linear, and linear in 65536 steps →
# 8-bit sRGB, rounded (a step is 1.5e-5 linear: under 0.06 of an 8-bit level even where the sRGB curve is steepest)
_TO_LINEAR = srgb_to_linear(np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
_LEVELS = 65535
_TO_SRGB8 = np.round(linear_to_srgb(np.arange(_LEVELS + 1, dtype=np.float64) / _LEVELS) * 255.0).astype(np.uint8)


def _to_srgb8(lin: np.ndarray) -> np.ndarray:
    return _TO_SRGB8[(np.clip(lin, 0.0, 1.0) * _LEVELS + 0.5).astype(np.int32)]


def cast(image_bgr: np.ndarray, lamp: str, strength: float = 1.0) -> np.ndarray:
    """The photo (uint8 BGR, as OpenCV reads it) as a daylight-balanced camera would take it under `lamp`."""
    if lamp not in LAMPS:
        raise ValueError(f"unknown lamp {lamp!r}; lamps: {', '.join(LAMPS)}")
    gains_bgr = (1.0 + strength * (np.array(LAMPS[lamp], dtype=np.float32) - 1.0))[::-1]
    lin = _TO_LINEAR[image_bgr]
    lit = lin * gains_bgr
    luma_bgr = _LUMA[::-1]
    before, after = float((lin @ luma_bgr).mean()), float((lit @ luma_bgr).mean())
    lit *= before / max(after, 1e-6)  # auto exposure keeps the mean luminance
    return _to_srgb8(lit)


def grey_world(image_bgr: np.ndarray) -> np.ndarray:
    """A camera-like automatic white balance: each channel scaled in linear light so the frame's mean is grey."""
    lin = _TO_LINEAR[image_bgr]
    means = lin.reshape(-1, 3).mean(axis=0)
    gains = means.mean() / np.maximum(means, 1e-6)
    return _to_srgb8(lin * gains)


def frame_chroma(image_bgr: np.ndarray) -> np.ndarray:
    """A frame's colour: the mean of every 4th pixel each way in linear light, as (log R/G, log B/G)."""
    b, g, r = np.maximum(_TO_LINEAR[image_bgr[::4, ::4]].reshape(-1, 3).mean(axis=0), 1e-6)
    return np.log(np.array([r / g, b / g]))


# Daylight as the training photos show it, for `detect.white_balance: auto`: mean and inverse covariance of
# frame_chroma over the recorded split's 263 training photos (bench/daylight_reference.py prints them; valid and test
# photos play no part). A greenhouse in daylight is green, not grey: that is why plain grey world costs accuracy.
DAYLIGHT_CHROMA_MEAN = (-0.1293, -0.7605)
DAYLIGHT_CHROMA_INV_COV = ((68.675, -21.195), (-21.195, 12.997))
# Mahalanobis distance from daylight beyond which `auto` balances, from the training photos alone: midway between the
# farthest of them (3.13) and the nearest of them under a full sodium or red/blue LED cast (6.36); a faint cast and a
# warm or cool white LED, which the model holds under as seen, stay below it (bench/daylight_reference.py)
AUTO_BALANCE_DISTANCE = 4.74
_DAYLIGHT_MEAN = np.array(DAYLIGHT_CHROMA_MEAN)
_DAYLIGHT_INV_COV = np.array(DAYLIGHT_CHROMA_INV_COV)


def daylight_distance(image_bgr: np.ndarray) -> float:
    """How far a frame's colour lies from daylight, in standard deviations of the training photos' spread."""
    d = frame_chroma(image_bgr) - _DAYLIGHT_MEAN
    return float(np.sqrt(d @ _DAYLIGHT_INV_COV @ d))


def auto_balance(image_bgr: np.ndarray) -> np.ndarray:
    """Grey world only for a frame whose colour no daylight training photo has (a lamp's cast); else as it is."""
    return grey_world(image_bgr) if daylight_distance(image_bgr) > AUTO_BALANCE_DISTANCE else image_bgr


def random_cast(image_bgr: np.ndarray, rng, max_strength: float = 1.0, balance_p: float = 0.25) -> np.ndarray:
    """Training's colour augmentation: one lamp at a random strength in (0, max_strength], then with probability
    `balance_p` the camera's grey world (a camera with auto white balance under that lamp). `rng`: random.Random."""
    lamp = rng.choice(sorted(LAMPS))
    out = cast(image_bgr, lamp, rng.uniform(0.0, max_strength))
    return grey_world(out) if rng.random() < balance_p else out


class LampAugment:
    """An Ultralytics transform (labels dict in, labels dict out) applying random_cast to `img` with probability p.

    Boxes do not move; classes keep their names: ripeness under a lamp is still judged against the leaves beside it."""

    def __init__(self, p: float, max_strength: float = 1.0, balance_p: float = 0.25, seed: int | None = None):
        import random

        self.p, self.max_strength, self.balance_p = p, max_strength, balance_p
        # unseeded: the random module, which Ultralytics seeds per data-loader worker (a seeded copy of one
        # generator in each forked worker would give them all the same draws)
        self.rng = random.Random(seed) if seed is not None else random

    def __call__(self, labels: dict) -> dict:
        if self.p > 0 and self.rng.random() < self.p:
            labels["img"] = random_cast(labels["img"], self.rng, self.max_strength, self.balance_p)
        return labels
