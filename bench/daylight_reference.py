"""Derive daemon/lamps.py's daylight colour reference (for `detect.white_balance: auto`) from training photos.

    .venv/bin/python bench/daylight_reference.py /root/v4/laboro-split/annotations/train.json

A frame's colour is the mean of its pixels in linear light as (log R/G, log B/G) — lamps.frame_chroma; the reference
is the mean and inverse covariance of that over the photos, and the distance printed per photo is the Mahalanobis
distance `auto` compares with lamps.AUTO_BALANCE_DISTANCE. The same photos under each lamp of lamps.LAMPS at full
strength give the threshold: midway between the farthest daylight photo and the nearest cast photo of the lamps whose
every cast photo lies beyond all daylight ones (sodium and red/blue LED here; a full warm or cool white LED cast
overlaps daylight, and the model holds under those as seen). Use training photos only: the reference decides when
the daemon balances, so the photos that score it (valid, test) must not shape it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from daemon import lamps  # noqa: E402


def distances(chroma: np.ndarray, mean: np.ndarray, inv_cov: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row of `chroma` from the reference."""
    d = chroma - mean
    return np.sqrt(np.einsum("ij,jk,ik->i", d, inv_cov, d))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="COCO annotations JSON of training photos (images in <root>/<split>/)")
    args = p.parse_args()
    coco_json = Path(args.data)
    folder = coco_json.parent.parent / coco_json.stem
    chroma, cast_chroma = [], {lamp: [] for lamp in lamps.LAMPS}
    for im in json.loads(coco_json.read_text())["images"]:
        image = cv2.imread(str(folder / im["file_name"]))
        if image is None:
            raise SystemExit(f"cannot read {folder / im['file_name']}")
        chroma.append(lamps.frame_chroma(image))
        for lamp in lamps.LAMPS:
            cast_chroma[lamp].append(lamps.frame_chroma(lamps.cast(image, lamp, 1.0)))
    x = np.array(chroma)
    mean, inv_cov = x.mean(axis=0), np.linalg.inv(np.cov(x.T))
    d = distances(x, mean, inv_cov)
    print(f"{len(x)} photos of {coco_json}")
    print(f"DAYLIGHT_CHROMA_MEAN = ({mean[0]:.4f}, {mean[1]:.4f})")
    print(f"DAYLIGHT_CHROMA_INV_COV = (({inv_cov[0, 0]:.3f}, {inv_cov[0, 1]:.3f}), ({inv_cov[1, 0]:.3f}, "
          f"{inv_cov[1, 1]:.3f}))")
    print(f"distance of the photos from it: median {np.median(d):.2f}, 99th percentile {np.percentile(d, 99):.2f}, "
          f"max {d.max():.2f}")
    nearest = {}
    for lamp, values in cast_chroma.items():
        dl = distances(np.array(values), mean, inv_cov)
        nearest[lamp] = dl.min()
        print(f"  under {lamp} at full strength: min {dl.min():.2f}, median {np.median(dl):.2f}"
              + ("" if dl.min() > d.max() else " (overlaps daylight)"))
    apart = [v for v in nearest.values() if v > d.max()]
    if apart:
        print(f"AUTO_BALANCE_DISTANCE = {(d.max() + min(apart)) / 2:.2f}  (midway between daylight's max and the "
              "nearest full cast of the lamps apart from it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
