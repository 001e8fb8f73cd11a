"""Depth numerics: robust box depth (registered and mapped from a depth camera), (de)projection against
librealsense's own, rigid camera→arm fit, Locate step."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.depth import (
    DegenerateCalibration,
    DepthMap,
    Intrinsics,
    Locate,
    Registration,
    apply_transform,
    box_depth_mm,
    boxes_depth_mm,
    check_transform,
    colour_to_depth_pixels,
    deproject,
    fit_rigid,
    locate_boxes,
    project_normalised,
    undistort_pixel,
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


def test_projection_matches_librealsense():
    import pyrealsense2 as rs
    for model in ("none", "inverse_brown_conrady", "brown_conrady"):
        coeffs = [0.08, -0.15, 0.001, -0.002, 0.05]
        intr = Intrinsics(640, 480, 610.0, 612.0, 318.5, 241.0, model, tuple(coeffs))
        ri = rs.intrinsics()
        ri.width, ri.height, ri.fx, ri.fy, ri.ppx, ri.ppy = 640, 480, 610.0, 612.0, 318.5, 241.0
        ri.model, ri.coeffs = getattr(rs.distortion, model), coeffs
        for point in ((10.0, 20.0, 500.0), (-200.0, 150.0, 700.0), (300.0, -250.0, 600.0)):
            ours = project_normalised(intr, point[0] / point[2], point[1] / point[2])
            assert ours == pytest.approx(rs.rs2_project_point_to_pixel(ri, list(point)), abs=1e-3), (model, point)
        if model == "none":
            continue
        # and back: librealsense's own inversion is approximate away from the centre, ours is the same steps
        u, v = project_normalised(intr, 0.1, -0.2)
        assert undistort_pixel(intr, u, v) == pytest.approx((0.1, -0.2), abs=2e-3)


# a depth camera beside the colour camera (D435-like: 15 mm baseline), smaller image and focal length
DEPTH_INTR = Intrinsics(480, 360, 457.5, 459.0, 238.9, 180.8, "brown_conrady")
BESIDE = Registration(DEPTH_INTR, np.eye(3), np.array([-15.0, 0.0, 0.0]))


def seen_by_depth_camera(u: float, v: float, z: float) -> tuple[int, int]:
    """The depth pixel that sees colour pixel (u, v) at colour-frame depth z."""
    du, dv = colour_to_depth_pixels(INTR, BESIDE, np.array([u]), np.array([v]), np.array([z]))
    return int(round(float(du[0]))), int(round(float(dv[0])))


def test_colour_to_depth_pixels_inverts_the_depth_to_colour_mapping():
    rot = np.array([[np.cos(0.01), 0, np.sin(0.01)], [0, 1, 0], [-np.sin(0.01), 0, np.cos(0.01)]])
    reg = Registration(DEPTH_INTR, rot, np.array([-15.0, 0.4, 0.2]))
    x, y = undistort_pixel(DEPTH_INTR, 100.0, 250.0)
    colour_point = rot @ np.array([x * 800, y * 800, 800.0]) + reg.translation_mm
    u, v = project_normalised(INTR, colour_point[0] / colour_point[2], colour_point[1] / colour_point[2])
    du, dv = colour_to_depth_pixels(INTR, reg, np.array([u]), np.array([v]), np.array([colour_point[2]]))
    assert (float(du[0]), float(dv[0])) == pytest.approx((100.0, 250.0), abs=1e-6)
    # the baseline is parallax: a nearer point is seen farther to the side by the depth camera
    assert seen_by_depth_camera(340, 240, 300)[0] - seen_by_depth_camera(340, 240, 3000)[0] == pytest.approx(
        457.5 * 15 * (1 / 300 - 1 / 3000), abs=1)


def fruit_seen_by_depth_camera(z_fruit: float, holes: float = 0.0) -> DepthMap:
    """The depth camera's image of a leaf wall 1500 mm away with a fruit at z_fruit where the colour camera sees
    the box (300, 200, 380, 280); `holes` of the fruit's pixels zeroed."""
    rng = np.random.default_rng(3)
    d = np.full((360, 480), 1500, np.uint16)
    (u0, v0), (u1, v1) = seen_by_depth_camera(300, 200, z_fruit), seen_by_depth_camera(380, 280, z_fruit)
    d[v0:v1, u0:u1] = z_fruit + rng.integers(-4, 5, (v1 - v0, u1 - u0))
    d[v0:v1, u0:u1][rng.random((v1 - v0, u1 - u0)) < holes] = 0
    return DepthMap(d, 1.0, INTR, registration=BESIDE)


def test_unregistered_depth_is_mapped_per_box():
    depth = fruit_seen_by_depth_camera(600.0)
    boxes = [(300, 200, 380, 280), (40, 300, 100, 360), (700, 500, 720, 520)]
    z_fruit, z_wall, off_image = boxes_depth_mm(depth, boxes)
    assert z_fruit == pytest.approx(600, abs=2)
    assert z_wall == pytest.approx(1500, abs=1)  # colour z = depth z here: the cameras differ only along x
    assert off_image is None
    # where the fruit is in the depth image is not where it is in the colour image: reading it there sees the wall
    assert box_depth_mm(DepthMap(depth.depth, 1.0, INTR), (300, 200, 380, 280)) != pytest.approx(600, abs=50)
    # the position is in the colour camera's frame: the box centre deprojected with the colour intrinsics
    assert locate_boxes(depth, [(300, 200, 380, 280)])[0] == pytest.approx(
        [(340 - INTR.ppx) / INTR.fx * z_fruit, (240 - INTR.ppy) / INTR.fy * z_fruit, z_fruit], abs=0.1)


def test_unregistered_holes_give_none_not_zero():
    assert box_depth_mm(fruit_seen_by_depth_camera(600.0, holes=0.5), (300, 200, 380, 280)) == pytest.approx(600,
                                                                                                          abs=3)
    assert box_depth_mm(fruit_seen_by_depth_camera(600.0, holes=0.9), (300, 200, 380, 280)) is None
    empty = DepthMap(np.zeros((360, 480), np.uint16), 1.0, INTR, registration=BESIDE)
    assert box_depth_mm(empty, (300, 200, 380, 280)) is None


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
