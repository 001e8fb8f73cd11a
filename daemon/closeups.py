"""Close-up crops around single fruits, as an eye-in-hand camera sees them while the arm approaches: windows, boxes.

One window per target fruit: the fruit spans a chosen fraction of the window's width, the window has a camera's
aspect, sits at a random place that keeps the fruit inside and stays inside the photo. The other fruit in the window
keep their boxes, clipped, when enough of them is inside. Used by the close-up benchmark (bench/closeups.py, on
test/valid photos) and by training's zoom-in crops (daemon/train.py --closeups, on training photos).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

MIN_SIDE = 96         # px of the source photo a window spans at least (smaller ones are more upscaling than picture)
MIN_VISIBLE = 0.5     # share of a neighbour's box area inside the window for it to keep a (clipped) label
ASPECTS = (4 / 3, 16 / 9, 1.0, 3 / 4)  # width / height of the windows training draws from; the benchmark uses 4:3


@dataclass(frozen=True)
class Window:
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1


def window_around(box: tuple[float, float, float, float], image_w: int, image_h: int, fraction: float,
                  aspect: float, rng: random.Random) -> Window | None:
    """A window in which `box` (x1, y1, x2, y2) spans `fraction` of the width, `aspect` = width / height, placed at
    random with the box inside; None when no such window fits the photo (or the box would not fit its height)."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    if bw <= 0 or bh <= 0 or not 0 < fraction <= 1:
        return None
    ww = bw / fraction
    wh = ww / aspect
    if ww > image_w or wh > image_h or wh < bh:
        return None
    # the window's left edge: box inside (wx <= x1, wx + ww >= x2) and window inside the photo
    lo_x, hi_x = max(0.0, x2 - ww), min(x1, image_w - ww)
    lo_y, hi_y = max(0.0, y2 - wh), min(y1, image_h - wh)
    if lo_x > hi_x or lo_y > hi_y:
        return None
    wx, wy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    left, top = int(round(wx)), int(round(wy))
    return Window(left, top, min(image_w, left + int(round(ww))), min(image_h, top + int(round(wh))))


def boxes_in_window(boxes: np.ndarray, window: Window,
                    min_visible: float = MIN_VISIBLE) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N×4, x1 y1 x2 y2 in the photo) clipped to the window and moved into its coordinates, and the indices
    of the ones kept: those with at least `min_visible` of their area inside."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, [0, 2]] = boxes[:, [0, 2]].clip(window.x1, window.x2)
    clipped[:, [1, 3]] = boxes[:, [1, 3]].clip(window.y1, window.y2)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = np.nonzero((area > 0) & (inside >= min_visible * area) & (inside > 0))[0]
    moved = clipped[keep] - np.array([window.x1, window.y1, window.x1, window.y1], dtype=np.float64)
    return moved, keep


def crop(image: np.ndarray, window: Window) -> np.ndarray:
    return image[window.y1:window.y2, window.x1:window.x2]


def fraction_range(box_w: float, lo: float = 0.3, hi: float = 0.9, min_side: int = MIN_SIDE) -> tuple[float, float]:
    """The width fractions a fruit `box_w` px wide can fill in a window at least `min_side` px wide: [lo, hi] cut
    at box_w / min_side (an empty range when lo > hi)."""
    return lo, min(hi, box_w / min_side)


def pick_targets(per_image: dict[str, list[tuple[int, tuple]]], count: int, seed: int, min_width: float = 64.0,
                 per_photo: int = 4) -> list[tuple[str, int]]:
    """(photo, annotation index) pairs: up to `per_photo` fruits at least `min_width` px wide from each photo, the
    classes taken in turn (so each class gets about a third while it has candidates), `count` in all."""
    rng = random.Random(seed)
    pools: dict[int, list[tuple[str, int]]] = {}
    for name in sorted(per_image):
        for idx, (cls, box) in enumerate(per_image[name]):
            if box[2] - box[0] >= min_width:
                pools.setdefault(cls, []).append((name, idx))
    for pool in pools.values():
        rng.shuffle(pool)
    chosen: list[tuple[str, int]] = []
    used: dict[str, int] = {}
    while len(chosen) < count and any(pools.values()):
        for cls in sorted(pools):
            while pools[cls]:
                name, idx = pools[cls].pop()
                if used.get(name, 0) < per_photo:
                    used[name] = used.get(name, 0) + 1
                    chosen.append((name, idx))
                    break
            if len(chosen) >= count:
                break
    return chosen
