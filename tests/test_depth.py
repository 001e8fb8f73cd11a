"""Depth numerics: robust box depth, deprojection (against librealsense's own), rigid camera→arm fit, Locate step."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.depth import (
    DegenerateCalibration,
    DepthMap,
    Intrinsics,
    Locate,
    apply_transform,
    box_depth_mm,
    check_transform,
    deproject,
    fit_rigid,
)

INTR = Intrinsics(640, 480, 610.0, 612.0, 318.5, 241.0)


def depth_map(values: np.ndarray, units_mm: float = 1.0) -> DepthMap:
    return DepthMap(values.astype(np.uint16), units_mm, INTR)


def test_box_depth_is_the_median_of_valid_central_pixels():
    rng = np.random.default_rng(1)
    d = np.full((480, 640), 1500, np.uint16)  # background
    d[100:200, 100:200] = 700 + rng.integers(-5, 6, (100, 100))  # the fruit
    d[100:200, 100:120] = 1500  # leaf at the box edge: outside the central region
    d[140:160, 140:160] = 0  # a hole in the middle
    assert box_depth_mm(depth_map(d), (100, 100, 200, 200)) == pytest.approx(700, abs=2)
    # raw units → mm through the stream's depth scale (D4xx: 1 unit = 1 mm; others 0.1 mm)
    assert box_depth_mm(depth_map(d * 2 // 2 * 10, 0.1), (100, 100, 200, 200)) == pytest.approx(700, abs=2)


def test_holes_give_none_not_zero():
    d = np.zeros((480, 640), np.uint16)
    d[::4, ::4] = 800  # 1 pixel in 16 valid: too few to trust
    assert box_depth_mm(depth_map(d), (100, 100, 200, 200)) is None
    assert Locate().run(depth_map(d), [(100, 100, 200, 200)]) is not None
    assert Locate().run(depth_map(d), [(100, 100, 200, 200)]).xyz == [None]
    assert box_depth_mm(depth_map(d), (700, 500, 720, 520)) is None  # box off the image


def test_deprojection_matches_librealsense():
    import pyrealsense2 as rs  # the dev install has it (realsense extra)
    for model, coeffs in (("none", [0] * 5), ("inverse_brown_conrady", [0.08, -0.15, 0.001, -0.002, 0.05]),
                          ("brown_conrady", [0.08, -0.15, 0.001, -0.002, 0.05])):
        intr = Intrinsics(640, 480, 610.0, 612.0, 318.5, 241.0, model, tuple(coeffs))
        ri = rs.intrinsics()
        ri.width, ri.height, ri.fx, ri.fy, ri.ppx, ri.ppy = 640, 480, 610.0, 612.0, 318.5, 241.0
        ri.model, ri.coeffs = getattr(rs.distortion, model), coeffs
        for u, v, z in ((318.5, 241.0, 500.0), (20.0, 30.0, 900.0), (600.0, 450.0, 1234.0)):
            ours = deproject(intr, u, v, z)
            theirs = rs.rs2_deproject_pixel_to_point(ri, [u, v], z)
            assert ours == pytest.approx(theirs, abs=0.05), (model, u, v)


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_rigid_fit_recovers_the_transform():
    rng = np.random.default_rng(7)
    truth = np.eye(4)
    truth[:3, :3], truth[:3, 3] = random_rotation(rng), [250.0, -120.0, 430.0]
    camera = rng.uniform(-300, 300, (6, 3)) + [0, 0, 800]
    fit = fit_rigid(camera, apply_transform(truth, camera))
    assert np.allclose(fit.matrix, truth, atol=1e-6)
    assert fit.rms_mm < 1e-6
    noisy = apply_transform(truth, camera) + rng.normal(0, 2.0, camera.shape)
    fit = fit_rigid(camera, noisy)
    assert 0.5 < fit.rms_mm < 4
    check_transform(fit.matrix)  # a rotation, no scale


@pytest.mark.parametrize("camera, why", [
    ([[0, 0, 500], [100, 0, 500]], "at least 3"),
    ([[0, 0, 500], [100, 0, 500], [200, 0, 500], [300, 0, 500]], "collinear"),
    ([[0, 0, 500]] * 3, "collinear or coincident"),
])
def test_rigid_fit_refuses_degenerate_pairs(camera, why):
    with pytest.raises(DegenerateCalibration, match=why):
        fit_rigid(np.array(camera, float), np.array(camera, float) + 10)


def test_config_transform_must_be_rigid():
    with pytest.raises(ValueError, match="4×4"):
        check_transform(np.eye(3))
    with pytest.raises(ValueError, match="rotation"):
        check_transform(np.diag([2.0, 2.0, 2.0, 1.0]))


def test_locate_adds_positions_and_arm_coordinates_to_messages():
    d = np.full((480, 640), 1200, np.uint16)
    d[200:280, 300:380] = 600
    arm = np.eye(4)
    arm[:3, 3] = [10, 20, 30]
    step = Locate(arm)
    located = step.run(depth_map(d), [(300, 200, 380, 280), (0, 0, 40, 40)], track_ids=[5, None])
    z = 600.0
    want = [round((340 - INTR.ppx) / INTR.fx * z, 1), round((240 - INTR.ppy) / INTR.fy * z, 1), z]
    dets, targets = [{}], [{"track_id": 5, "state": "available"}]
    located.annotate(dets, [0], targets)
    assert dets[0]["xyz_mm"] == pytest.approx(want, abs=0.1)
    assert targets[0]["arm_xyz"] == pytest.approx([want[0] + 10, want[1] + 20, want[2] + 30], abs=0.1)
    # a withdrawal of a track not seen in this frame carries its last known position, then forgets it
    lost = [{"track_id": 5, "state": "lost"}]
    step.run(depth_map(d), []).annotate([], [], lost)
    assert lost[0]["xyz_mm"] == pytest.approx(want, abs=0.1)
    assert 5 not in step.last_by_track
    assert Locate().run(None, [(300, 200, 380, 280)]) is None  # no depth: nothing added, as before


def test_weak_detections_keep_the_last_position_of_their_track():
    d = np.full((480, 640), 1200, np.uint16)
    step = Locate()
    step.run(depth_map(d), [(300, 200, 380, 280)], track_ids=[9])
    located = step.run(depth_map(d * 0), [None], track_ids=[9])  # seen only weakly now: not located
    assert located.xyz == [None] and step.last_by_track[9][2] == 1200.0
