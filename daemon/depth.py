"""3D positions from depth: robust depth in a box, pixel deprojection, camera→arm rigid transform fit, Locate step."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

# Distortion models as librealsense names them (rs2_distortion); only these reach the colour stream of a D4xx.
PINHOLE_MODELS = {"none", "brown_conrady", "inverse_brown_conrady"}


@dataclass(frozen=True)
class Intrinsics:
    """A stream's pinhole intrinsics in pixels, with librealsense's distortion model name and 5 coefficients."""

    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: str = "none"
    coeffs: tuple = (0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass
class DepthMap:
    """A depth image aligned to its colour frame: raw units (0 = no depth) × units_mm gives millimetres."""

    depth: np.ndarray  # H×W, uint16 as the camera sends it
    units_mm: float
    intrinsics: Intrinsics
    meta: dict = field(default_factory=dict)  # e.g. the camera's own frame number, for pairing checks


GRID = 20  # samples per side of a box's central region: 400 depths per box


def boxes_depth_mm(depth: DepthMap, boxes: Sequence[Sequence[float]], central: float = 0.5, min_valid: float = 0.25,
                   min_mm: float = 100.0, max_mm: float = 10000.0) -> list[Optional[float]]:
    """Per box, the median depth (mm) of the valid pixels in its central region; None when too few are valid.

    The central `central` fraction of width and height keeps leaves and background at the box edges out; zeros
    (holes) and values outside [min_mm, max_mm] are not depths. A region with under `min_valid` of its pixels valid
    gives None rather than a guess: a hole-riddled fruit must not be sent to the arm at 0 mm. Each region is read
    on an even GRID×GRID lattice of pixels (the same median as all of them, for a fixed cost), all boxes at once.
    """
    raw = depth.depth
    if raw.dtype.kind != "u":
        raise ValueError(f"depth must be unsigned integer raw units (z16), got {raw.dtype}")
    if len(boxes) == 0:
        return []
    h, w = raw.shape[:2]
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centre, half = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]) * (central / 2)
    lo_xy, hi_xy = np.floor(centre - half), np.ceil(centre + half) - 1  # inclusive pixel range of each region
    lo_xy, hi_xy = np.maximum(lo_xy, 0), np.minimum(hi_xy, [w - 1, h - 1])
    empty = (hi_xy < lo_xy).any(axis=1)
    t = (np.arange(GRID) + 0.5) / GRID
    xs = np.rint(lo_xy[:, :1] + t * (hi_xy[:, :1] - lo_xy[:, :1])).astype(np.intp).clip(0, w - 1)
    ys = np.rint(lo_xy[:, 1:] + t * (hi_xy[:, 1:] - lo_xy[:, 1:])).astype(np.intp).clip(0, h - 1)
    samples = raw[ys[:, :, None], xs[:, None, :]].reshape(len(b), -1)  # boxes × GRID²
    top = np.iinfo(raw.dtype).max
    lo = min(math.ceil(min_mm / depth.units_mm), top)
    hi = min(int(max_mm / depth.units_mm), top)
    invalid = (samples < lo) | (samples > hi)
    missing = invalid.sum(axis=1)
    counts = samples.shape[1] - missing
    # The median of the valid samples without a per-row sort: invalid ones become alternately 0 and the top value
    # (the first of each pair low), which leaves the middle of the row where the valid median is; one partition
    # then finds it for all boxes. With an odd number invalid there is one more low, and the median sits at n/2.
    low = (np.cumsum(invalid, axis=1) % 2) == 1
    filled = np.where(invalid, np.where(low, 0, top), samples).astype(raw.dtype)
    k = samples.shape[1] // 2
    middle = np.partition(filled, [k - 1, k], axis=1)[:, k - 1:k + 1].astype(np.float64)
    medians = np.where(missing % 2 == 0, middle.mean(axis=1), middle[:, 1]) * depth.units_mm
    ok = ~empty & (counts > 0) & (counts >= min_valid * samples.shape[1])
    return [float(m) if good else None for m, good in zip(medians, ok)]


def box_depth_mm(depth: DepthMap, box: Sequence[float], **kwargs) -> Optional[float]:
    """boxes_depth_mm for one box."""
    return boxes_depth_mm(depth, [box], **kwargs)[0]


def undistort_pixel(intr: Intrinsics, u, v):
    """Pixel → normalised image coordinates (x/z, y/z), as librealsense's rs2_deproject_pixel_to_point does.

    u, v may be floats or numpy arrays (element-wise)."""
    x, y = (u - intr.ppx) / intr.fx, (v - intr.ppy) / intr.fy
    k1, k2, p1, p2, k3 = (tuple(intr.coeffs) + (0.0,) * 5)[:5]
    if intr.model == "none" or not any((k1, k2, p1, p2, k3)):
        return x, y
    if intr.model in ("inverse_brown_conrady", "brown_conrady"):
        # librealsense (rsutil.h) inverts both by 10 fixed-point iterations; the same steps give the same point
        x0, y0 = x, y
        for _ in range(10):
            r2 = x * x + y * y
            icdist = 1.0 / (1 + ((k3 * r2 + k2) * r2 + k1) * r2)
            xq, yq = (x / icdist, y / icdist) if intr.model == "inverse_brown_conrady" else (x, y)
            dx = 2 * p1 * xq * yq + p2 * (r2 + 2 * xq * xq)
            dy = 2 * p2 * xq * yq + p1 * (r2 + 2 * yq * yq)
            x, y = (x0 - dx) * icdist, (y0 - dy) * icdist
        return x, y
    raise ValueError(f"distortion model {intr.model!r} is not supported (one of {sorted(PINHOLE_MODELS)})")


def deproject(intr: Intrinsics, u: float, v: float, z_mm: float) -> tuple[float, float, float]:
    """Pixel (u, v) at depth z (mm) → camera-frame point (x right, y down, z forward), mm."""
    x, y = undistort_pixel(intr, u, v)
    return (x * z_mm, y * z_mm, z_mm)


def locate_boxes(depth: DepthMap, boxes: Sequence[Sequence[float]]) -> list[Optional[list[float]]]:
    """The camera-frame position (mm) of the thing in each box, or None without valid depth there."""
    if len(boxes) == 0:
        return []
    z = boxes_depth_mm(depth, boxes)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    # undistort_pixel is plain arithmetic: it deprojects every box centre at once
    x, y = undistort_pixel(depth.intrinsics, (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2)
    zz = np.array([v if v is not None else np.nan for v in z])
    xyz = np.round(np.stack([x * zz, y * zz, zz], axis=1), 1).tolist()
    return [p if v is not None else None for p, v in zip(xyz, z)]


def locate_box(depth: DepthMap, box: Sequence[float]) -> Optional[list[float]]:
    return locate_boxes(depth, [box])[0]


class DegenerateCalibration(ValueError):
    """The point pairs cannot determine a rigid transform."""


@dataclass(frozen=True)
class RigidFit:
    matrix: np.ndarray  # 4×4, row-major, mm: arm = matrix · [camera, 1]
    rms_mm: float
    max_mm: float


def fit_rigid(camera: np.ndarray, arm: np.ndarray) -> RigidFit:
    """Least-squares rotation + translation (no scale) taking camera points to arm points (Kabsch, numpy SVD).

    Needs ≥ 3 pairs that are not collinear (nor coincident) in both frames; raises DegenerateCalibration otherwise.
    """
    camera, arm = np.asarray(camera, dtype=np.float64), np.asarray(arm, dtype=np.float64)
    if camera.ndim != 2 or camera.shape[1:] != (3,) or arm.shape != camera.shape:
        raise DegenerateCalibration(f"need pairs of 3D points, got shapes {camera.shape} and {arm.shape}")
    if len(camera) < 3:
        raise DegenerateCalibration(f"need at least 3 point pairs, got {len(camera)}")
    if not (np.isfinite(camera).all() and np.isfinite(arm).all()):
        raise DegenerateCalibration("point coordinates must be finite numbers")
    for name, pts in (("camera", camera), ("arm", arm)):
        centred = pts - pts.mean(axis=0)
        s = np.linalg.svd(centred, compute_uv=False)
        # the second singular value measures spread off the best line: tiny means collinear
        if s[0] < 1.0 or s[1] < 1e-3 * max(s[0], 1.0) or s[1] < 1.0:
            raise DegenerateCalibration(f"the {name} points are collinear or coincident: a rotation about their "
                                        "line cannot be told; use ≥ 3 points spread over a plane or volume")
    c_mean, a_mean = camera.mean(axis=0), arm.mean(axis=0)
    h = (camera - c_mean).T @ (arm - a_mean)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0  # a reflection is not a rigid motion
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation, a_mean - rotation @ c_mean
    residual = np.linalg.norm(apply_transform(matrix, camera) - arm, axis=1)
    return RigidFit(matrix, float(np.sqrt((residual ** 2).mean())), float(residual.max()))


def apply_transform(matrix: np.ndarray, points) -> np.ndarray:
    """4×4 homogeneous transform applied to one point (3,) or many (N×3)."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:3, :3].T + matrix[:3, 3]


def check_transform(rows) -> np.ndarray:
    """A 4×4 row-major camera→arm matrix from config; its top-left 3×3 must be a rotation, last row 0 0 0 1."""
    m = np.asarray(rows, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"must be a 4×4 matrix (row-major), got shape {m.shape}")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-9):
        raise ValueError("last row must be [0, 0, 0, 1]")
    r = m[:3, :3]
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-3) or np.linalg.det(r) < 0:
        raise ValueError("top-left 3×3 must be a rotation (orthonormal, determinant +1): mm in, mm out, no scale")
    return m


class Locate:
    """Pipeline step: each detection's camera-frame position (`xyz_mm`) and, for targets, the arm's (`arm_xyz`).

    One call per frame with the frame's depth (None: a source without depth, and nothing is added) and the
    candidate detections with their track ids. Target messages of a track not seen in this frame (a withdrawal)
    carry the track's last known position.
    """

    def __init__(self, camera_to_arm: Optional[np.ndarray] = None, remember: int = 1000):
        self.camera_to_arm = camera_to_arm
        self.last_by_track: OrderedDict[int, Optional[list]] = OrderedDict()
        self.remember = remember

    def run(self, depth: Optional[DepthMap], boxes: Sequence[Optional[Sequence[float]]],
            track_ids: Optional[Sequence[Optional[int]]] = None) -> Optional[Located]:
        """Positions per box (a None box is skipped: weak detections that only keep a track alive)."""
        if depth is None:
            return None
        located = iter(locate_boxes(depth, [b for b in boxes if b is not None]))
        xyz = [next(located) if b is not None else None for b in boxes]
        for tid, b, p in zip(track_ids or (), boxes, xyz):
            if tid is not None and b is not None:
                self.last_by_track[tid] = p
                self.last_by_track.move_to_end(tid)
        while len(self.last_by_track) > self.remember:
            self.last_by_track.popitem(last=False)
        return Located(self, xyz)

    def to_arm(self, xyz: Optional[Sequence[float]]) -> Optional[list[float]]:
        if xyz is None or self.camera_to_arm is None:
            return None
        return [round(float(c), 1) for c in apply_transform(self.camera_to_arm, xyz)]


@dataclass
class Located:
    """One frame's positions, in candidate order; writes them into the outgoing messages."""

    step: Locate
    xyz: list

    def annotate(self, detections_json: list[dict], keep: Sequence[int], targets: list[dict]) -> None:
        """`xyz_mm` on each published detection (`keep` = their candidate indices); `xyz_mm`/`arm_xyz` on targets."""
        for body, i in zip(detections_json, keep):
            body["xyz_mm"] = self.xyz[i]
        for msg in targets:
            tid = msg.get("track_id")
            xyz = self.step.last_by_track.get(tid)
            if msg.get("state") == "lost":
                self.step.last_by_track.pop(tid, None)
            msg["xyz_mm"] = xyz
            if self.step.camera_to_arm is not None:
                msg["arm_xyz"] = self.step.to_arm(xyz)
