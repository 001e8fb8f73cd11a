"""3D positions from depth: robust depth in a box (registered or mapped from the depth camera), pixel (de)projection,
camera→arm rigid transform fit, Locate step."""

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


@dataclass(frozen=True)
class Registration:
    """Where the depth camera sits relative to the colour camera: its own intrinsics and the depth→colour rigid
    motion (colour point = rotation · depth point + translation_mm), as librealsense's extrinsics give it."""

    intrinsics: Intrinsics  # the depth stream's
    rotation: np.ndarray  # 3×3
    translation_mm: np.ndarray  # (3,)


@dataclass
class DepthMap:
    """A depth image of a colour frame: raw units (0 = no depth) × units_mm gives millimetres.

    With `registration` None the depth image is registered to the colour image (same pixels); otherwise it is the
    depth camera's own image, and only the samples a box needs are mapped into the colour frame (boxes_depth_mm)."""

    depth: np.ndarray  # H×W, uint16 as the camera sends it
    units_mm: float
    intrinsics: Intrinsics  # the colour stream's: boxes and positions are in the colour camera's frame
    meta: dict = field(default_factory=dict)  # e.g. the camera's own frame number, for pairing checks
    registration: Optional[Registration] = None


GRID = 20  # samples per side of a box's central region: 400 depths per box
# samples per side of the depth-image region that can see a box's central region (a depth camera not registered to
# colour): the region also spans the parallax over the valid depth range, so it is wider than the box's own
MAPPED_GRID = 24


def boxes_depth_mm(depth: DepthMap, boxes: Sequence[Sequence[float]], central: float = 0.5, min_valid: float = 0.25,
                   min_mm: float = 100.0, max_mm: float = 10000.0) -> list[Optional[float]]:
    """Per box, the median depth (mm, colour camera frame) of the valid pixels in its central region; None when too
    few are valid.

    The central `central` fraction of width and height keeps leaves and background at the box edges out; zeros
    (holes) and values outside [min_mm, max_mm] are not depths. A region with under `min_valid` of its pixels valid
    gives None rather than a guess: a hole-riddled fruit must not be sent to the arm at 0 mm. A registered depth
    image is read on an even GRID×GRID lattice of each region (the same median as all of its pixels, for a fixed
    cost); an unregistered one through mapped_depths_mm. All boxes at once.
    """
    raw = depth.depth
    if raw.dtype.kind != "u":
        raise ValueError(f"depth must be unsigned integer raw units (z16), got {raw.dtype}")
    if len(boxes) == 0:
        return []
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    intr = depth.intrinsics
    w, h = (raw.shape[1], raw.shape[0]) if depth.registration is None else (intr.width, intr.height)
    lo_xy, hi_xy = central_regions(b, central, w, h)
    empty = (hi_xy < lo_xy).any(axis=1)
    top = np.iinfo(raw.dtype).max
    lo = min(math.ceil(min_mm / depth.units_mm), top)
    hi = min(int(max_mm / depth.units_mm), top)
    if depth.registration is not None:
        medians, ok = mapped_depths_mm(depth, lo_xy, hi_xy, lo, hi, min_valid)
        return [float(m) if good and not bad else None for m, good, bad in zip(medians, ok, empty)]
    xs = lattice(lo_xy[:, 0], hi_xy[:, 0], GRID).clip(0, w - 1)
    ys = lattice(lo_xy[:, 1], hi_xy[:, 1], GRID).clip(0, h - 1)
    samples = raw[ys[:, :, None], xs[:, None, :]].reshape(len(b), -1)  # boxes × GRID²
    medians, counts = row_medians(samples, (samples >= lo) & (samples <= hi))
    medians = medians * depth.units_mm
    ok = ~empty & (counts > 0) & (counts >= min_valid * samples.shape[1])
    return [float(m) if good else None for m, good in zip(medians, ok)]


def central_regions(boxes: np.ndarray, central: float, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive pixel ranges (lo_xy, hi_xy; boxes × 2) of each box's central `central` fraction, inside the image;
    a box off the image has some hi < lo."""
    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) * (central / 2)
    lo_xy, hi_xy = np.floor(centre - half), np.ceil(centre + half) - 1
    return np.maximum(lo_xy, 0), np.minimum(hi_xy, [width - 1, height - 1])


def lattice(lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    """n evenly spread integer pixels from each lo to hi (inclusive; rows × n)."""
    t = (np.arange(n) + 0.5) / n
    return np.rint(lo[:, None] + t * (hi[:, None] - lo[:, None])).astype(np.intp)


def row_medians(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the median of the `valid` values (float; meaningless where none is valid) and their count.

    One sort for all rows: invalid values become the largest the dtype holds, so each row's valid ones come first,
    in order, and the median is read at the middle of that count (a valid value equal to the filler ties with it,
    which leaves the same value there)."""
    top = np.iinfo(values.dtype).max if values.dtype.kind in "ui" else np.inf
    ordered = np.sort(np.where(valid, values, values.dtype.type(top)), axis=1)
    counts = valid.sum(axis=1)
    rows = np.arange(len(values))
    lower = ordered[rows, np.maximum(counts - 1, 0) // 2]
    upper = ordered[rows, np.minimum(counts // 2, values.shape[1] - 1)]
    return (lower.astype(np.float64) + upper) / 2, counts


def mapped_depths_mm(depth: DepthMap, lo_xy: np.ndarray, hi_xy: np.ndarray, lo_raw: int, hi_raw: int,
                     min_valid: float) -> tuple[np.ndarray, np.ndarray]:
    """Per colour region (inclusive pixel ranges), the median colour-frame z (mm) of the depth camera's pixels that
    land in it, and whether enough of them are valid; only those pixels are mapped, never the whole frame.

    The depth-image region that can see a colour region is bounded by projecting the region's corners into the
    depth camera at the nearest and farthest valid depth (parallax moves them along the epipolar line); a
    MAPPED_GRID² lattice of it is deprojected with the depth intrinsics, moved into the colour frame, projected with
    the colour intrinsics, and kept where it lands in the region. The valid fraction is taken against the lattice
    pixels that see the region at the depth found (a hole-riddled fruit: few land, many should have)."""
    reg, colour, raw = depth.registration, depth.intrinsics, depth.depth
    h, w = raw.shape[:2]
    n = len(lo_xy)
    edges_u = np.stack([lo_xy[:, 0] - 0.5, hi_xy[:, 0] + 0.5, hi_xy[:, 0] + 0.5, lo_xy[:, 0] - 0.5], axis=1)
    edges_v = np.stack([lo_xy[:, 1] - 0.5, lo_xy[:, 1] - 0.5, hi_xy[:, 1] + 0.5, hi_xy[:, 1] + 0.5], axis=1)
    shift = float(np.linalg.norm(reg.translation_mm))  # colour z and depth z of a point differ by at most this
    near = max(lo_raw * depth.units_mm - shift, 1.0)
    far = hi_raw * depth.units_mm + shift
    z = np.repeat([[near, far]], n, axis=0).repeat(4, axis=1)
    du, dv = colour_to_depth_pixels(colour, reg, np.tile(edges_u, 2), np.tile(edges_v, 2), z)
    # one pixel of margin for the rounding of the lattice and a rotation between the cameras
    lo_d = np.stack([np.floor(du.min(axis=1)) - 1, np.floor(dv.min(axis=1)) - 1], axis=1).clip(0, [w - 1, h - 1])
    hi_d = np.stack([np.ceil(du.max(axis=1)) + 1, np.ceil(dv.max(axis=1)) + 1], axis=1).clip(0, [w - 1, h - 1])
    g = MAPPED_GRID
    xs, ys = lattice(lo_d[:, 0], hi_d[:, 0], g), lattice(lo_d[:, 1], hi_d[:, 1], g)
    samples = raw[ys[:, :, None], xs[:, None, :]]  # boxes × g × g
    # float32: a thousandth of a pixel and of a millimetre is plenty, and it halves the memory traffic
    xn, yn = undistort_pixel(reg.intrinsics, xs[:, None, :].astype(np.float32), ys[:, :, None].astype(np.float32))
    r, t = (reg.rotation * depth.units_mm).astype(np.float32), reg.translation_mm.astype(np.float32)
    z_raw = samples.astype(np.float32)
    # each depth pixel's ray, rotated into the colour frame (a row term plus a column term when the depth stream
    # is undistorted) and scaled to mm per raw unit, times its raw depth, then shifted
    xc = z_raw * ((r[0, 0] * xn + r[0, 2]) + r[0, 1] * yn) + t[0]
    yc = z_raw * ((r[1, 0] * xn + r[1, 2]) + r[1, 1] * yn) + t[1]
    zc = z_raw * ((r[2, 0] * xn + r[2, 2]) + r[2, 1] * yn) + t[2]
    front = zc > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        qx, qy = xc / zc, yc / zc
    if colour.model == "none" or not any(colour.coeffs):  # compare in normalised coordinates: no projection
        bound_u, bound_v = (edges_u - colour.ppx) / colour.fx, (edges_v - colour.ppy) / colour.fy
    else:
        (qx, qy), bound_u, bound_v = project_normalised(colour, qx, qy), edges_u, edges_v
    valid = ((samples >= lo_raw) & (samples <= hi_raw) & front
             & (qx >= bound_u[:, :1, None]) & (qx < bound_u[:, 1:2, None])
             & (qy >= bound_v[:, :1, None]) & (qy < bound_v[:, 2:3, None])).reshape(n, -1)
    medians, counts = row_medians(zc.reshape(n, -1), valid)
    # how many lattice pixels see the region at the depth found: the share that should have landed
    su, sv = colour_to_depth_pixels(colour, reg, edges_u, edges_v, np.where(counts > 0, medians, near)[:, None])
    inside_x = ((xs >= su.min(axis=1, keepdims=True)) & (xs <= su.max(axis=1, keepdims=True))).sum(axis=1)
    inside_y = ((ys >= sv.min(axis=1, keepdims=True)) & (ys <= sv.max(axis=1, keepdims=True))).sum(axis=1)
    expected = inside_x * inside_y
    return medians, (counts > 0) & (expected > 0) & (counts >= min_valid * expected)


def colour_to_depth_pixels(colour: Intrinsics, reg: Registration, u: np.ndarray, v: np.ndarray,
                           z_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour pixels (u, v) at colour-frame depth z (mm) → where the depth camera sees those points (its pixels)."""
    xn, yn = undistort_pixel(colour, u, v)
    r, t = reg.rotation, reg.translation_mm
    x, y, z = xn * z_mm - t[0], yn * z_mm - t[1], z_mm - t[2]  # the inverse rigid motion: Rᵀ(p − t)
    xd, yd, zd = (r[0, 0] * x + r[1, 0] * y + r[2, 0] * z, r[0, 1] * x + r[1, 1] * y + r[2, 1] * z,
                  r[0, 2] * x + r[1, 2] * y + r[2, 2] * z)
    return project_normalised(reg.intrinsics, xd / zd, yd / zd)


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


def project_normalised(intr: Intrinsics, x, y):
    """Normalised image coordinates (x/z, y/z) → pixel, as librealsense's rs2_project_point_to_pixel does.

    x, y may be floats or numpy arrays (element-wise)."""
    k1, k2, p1, p2, k3 = (tuple(intr.coeffs) + (0.0,) * 5)[:5]
    if intr.model != "none" and any((k1, k2, p1, p2, k3)):
        if intr.model not in PINHOLE_MODELS:
            raise ValueError(f"distortion model {intr.model!r} is not supported (one of {sorted(PINHOLE_MODELS)})")
        r2 = x * x + y * y
        f = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2
        # librealsense takes the tangential terms of the radially scaled point for inverse Brown-Conrady and of the
        # unscaled one for Brown-Conrady (r² unscaled in both)
        xq, yq = (x * f, y * f) if intr.model == "inverse_brown_conrady" else (x, y)
        x, y = (x * f + 2 * p1 * xq * yq + p2 * (r2 + 2 * xq * xq),
                y * f + 2 * p2 * xq * yq + p1 * (r2 + 2 * yq * yq))
    return x * intr.fx + intr.ppx, y * intr.fy + intr.ppy


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
