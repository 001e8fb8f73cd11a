"""Greenhouse lamp colour casts for photos: what a camera balanced for daylight sees under grow lights.

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


def cast(image_bgr: np.ndarray, lamp: str, strength: float = 1.0) -> np.ndarray:
    """The photo (uint8 BGR, as OpenCV reads it) as a daylight-balanced camera would take it under `lamp`."""
    if lamp not in LAMPS:
        raise ValueError(f"unknown lamp {lamp!r}; lamps: {', '.join(LAMPS)}")
    gains_rgb = 1.0 + strength * (np.array(LAMPS[lamp], dtype=np.float32) - 1.0)
    lin = srgb_to_linear(image_bgr[..., ::-1].astype(np.float32) / 255.0)
    lit = lin * gains_rgb
    before, after = float((lin @ _LUMA).mean()), float((lit @ _LUMA).mean())
    lit *= before / max(after, 1e-6)  # auto exposure keeps the mean luminance
    out = linear_to_srgb(lit)[..., ::-1]
    return np.round(out * 255.0).astype(np.uint8)


def grey_world(image_bgr: np.ndarray) -> np.ndarray:
    """A camera-like automatic white balance: each channel scaled in linear light so the frame's mean is grey."""
    lin = srgb_to_linear(image_bgr.astype(np.float32) / 255.0)
    means = lin.reshape(-1, 3).mean(axis=0)
    gains = means.mean() / np.maximum(means, 1e-6)
    return np.round(linear_to_srgb(lin * gains) * 255.0).astype(np.uint8)
