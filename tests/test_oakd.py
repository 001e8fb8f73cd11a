"""The Luxonis OAK-D source (daemon/oakd.py) without a device: depthai's real Pipeline, CalibrationHandler, ImgFrame
and MessageGroup objects, and a FAKE device in place of depthai.Device.

The fake (FakeOak) boots nothing and runs nothing on a Myriad X: it takes the pipeline the source builds, checks it
asks for the size the fake delivers, and pushes MessageGroups of real depthai ImgFrames at the configured rate into a
queue that keeps `maxSize` messages and overwrites the oldest (depthai's non-blocking queue). Its colour is the
bundled sample-3d photo (cropped from 640x640 to the 640x360 the OAK gives at ISP scale 1/3) as YUV420p, depthai's
ISP format; its depth is that recording's synthetic depth, already registered to the colour pixels (what
StereoDepth.setDepthAlign(CAM_A) is meant to deliver); its calibration is a real CalibrationHandler holding a
1920x1080 colour calibration that depthai scales to the output size.

What only a real OAK-D run can confirm (none of it is exercised here):
- frame sync: that the device's Sync node pairs colour and depth within half a frame period at the configured fps
  (DepthMap.meta sync_ms) and that groups arrive at the full rate;
- depth alignment accuracy: that the depth the device aligns to CAM_A lands on the colour pixels (a flat target at
  a known distance across the whole image, edges included; with and without source.oakd.undistort), and depth in
  millimetres (StereoDepth's default unit);
- intrinsics at the output size: that getCameraIntrinsics(CAM_A, width, height) matches the ISP output of the 1080P
  mode (devices calibrated at 4056x3040 go through depthai's aspect-ratio crop), and that the factory lens position
  (pinned manual focus) keeps the calibration valid;
- USB2/USB3 bandwidth: frame rate and drops at each size on USB 3 and on USB 2 (usb2: true), and PoE models;
- reconnect after a real unplug (depthai's X_LINK_ERROR) and after a firmware crash.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from datetime import timedelta

import cv2
import jsonschema
import numpy as np
import pytest

from daemon import oakd
from daemon.capture import CaptureThread, SourceError, make_source
from daemon.config import OAKD_SIZES, SAMPLE_3D, Config, ConfigError, SourceConfig, validate
from daemon.handoff import LatestSlot
from daemon.schema import DETECTIONS_MESSAGE, TARGET_MESSAGE

try:
    import depthai as dai
except ImportError as exc:  # part of the dev install (the oakd extra): its absence is a broken setup, not a skip
    pytest.fail(f"depthai is missing ({exc}): run ./install.sh --dev (the oakd extra, depthai=="
                f"{oakd.DEPTHAI_VERSION})", pytrace=False)

CROP = 140  # sample-3d's rows 140..499 become the 640x360 frame
SIZE = (640, 360)
CALIBRATED = (1920, 1080)  # the fake device's colour calibration size; sample-3d's fx 600 at 640 wide is 1800 here


def calibration(coeffs=()) -> dai.CalibrationHandler:
    """A real depthai CalibrationHandler with sample-3d's colour camera, calibrated at 1920x1080."""
    calib = dai.CalibrationHandler()
    f, s = 600.0 * 3, 3  # 640x360 is 1920x1080 scaled by 1/3
    calib.setCameraIntrinsics(dai.CameraBoardSocket.CAM_A, [[f, 0, 320.0 * s], [0, f, (320.0 - CROP) * s], [0, 0, 1]],
                              *CALIBRATED)
    calib.setDistortionCoefficients(dai.CameraBoardSocket.CAM_A, [*coeffs, *[0.0] * (14 - len(coeffs))])
    calib.setLensPosition(dai.CameraBoardSocket.CAM_A, 130)
    return calib


@pytest.fixture(scope="module")
def sample_frames():
    """sample-3d's frames (colour, registered depth in mm) cropped to 640x360, and its truth in the crop."""
    truth = json.loads(SAMPLE_3D.with_suffix(".json").read_text())
    assert all(f["tomatoes"] == truth["frames"][0]["tomatoes"] for f in truth["frames"])  # one scene, fresh noise
    source = make_source(SourceConfig(uri="sample-3d"))
    source.open()
    frames = []
    try:
        for _ in truth["frames"]:
            image = source.read()
            depth = source.take_depth()
            assert depth.registration is None and depth.units_mm == pytest.approx(1.0, rel=1e-4)
            frames.append((np.ascontiguousarray(image[CROP:CROP + SIZE[1]]),
                           np.ascontiguousarray(depth.depth[CROP:CROP + SIZE[1]])))
    finally:
        source.close()
    inside = [{**t, "box": [t["box"][0], t["box"][1] - CROP, t["box"][2], t["box"][3] - CROP]}
              for t in truth["frames"][0]["tomatoes"] if t["box"][1] >= CROP and t["box"][3] <= CROP + SIZE[1]]
    cropped = {"camera": {**truth["camera"], "height": SIZE[1], "ppy": truth["camera"]["ppy"] - CROP},
               "frames": [{"frame": 1, "tomatoes": inside}]}
    return frames, cropped


class FakeQueue:
    """depthai's DataOutputQueue as the source uses it: tryGet(), newest kept, a dropped link raises."""

    def __init__(self, max_size: int, blocking: bool):
        self.max_size, self.blocking = max_size, blocking
        self.items: deque = deque()
        self.lock = threading.Lock()
        self.overwritten = 0
        self.error = ""

    def push(self, msg) -> None:
        with self.lock:
            if len(self.items) >= self.max_size:  # non-blocking: the oldest goes
                self.items.popleft()
                self.overwritten += 1
            self.items.append(msg)

    def tryGet(self):  # noqa: N802 (depthai's name)
        with self.lock:
            if self.error:
                raise RuntimeError(self.error)
            return self.items.popleft() if self.items else None


class FakeOak:
    """A FAKE depthai.Device: see the module docstring for what it does and what it cannot show."""

    def __init__(self, frames, calib, fps: float, speed=None, drop_after: int = 0, stamp: bool = True):
        self.frames, self.calib, self.fps = frames, calib, fps
        self.speed = speed if speed is not None else dai.UsbSpeed.SUPER
        self.drop_after, self.stamp = drop_after, stamp
        self.pipeline = None
        self.queue: FakeQueue | None = None
        self.queue_args = None
        self.sent = 0
        self.closed = threading.Event()
        self.thread: threading.Thread | None = None

    # the depthai.Device calls the source makes
    def readCalibration(self):  # noqa: N802
        return self.calib

    def startPipeline(self, pipeline):  # noqa: N802
        nodes = {n["name"]: n["properties"] for _, n in pipeline.serializeToJson()["pipeline"]["nodes"]}
        scale = nodes["ColorCamera"]["ispScale"]
        isp = (1920 * scale["horizNumerator"] // scale["horizDenominator"],
               1080 * scale["vertNumerator"] // scale["vertDenominator"])
        h, w = self.frames[0][1].shape
        assert isp == (nodes["StereoDepth"]["outWidth"], nodes["StereoDepth"]["outHeight"]) == (w, h), isp
        self.pipeline = pipeline
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def getOutputQueue(self, name, maxSize, blocking=True):  # noqa: N802, N803
        assert name == oakd.STREAM
        self.queue_args = (name, maxSize, blocking)
        self.queue = FakeQueue(maxSize, blocking)
        return self.queue

    def getUsbSpeed(self):  # noqa: N802
        return self.speed

    def close(self):
        self.closed.set()

    def _run(self) -> None:
        period = 1.0 / self.fps
        while not self.closed.wait(period):
            if self.queue is None:
                continue
            n = self.sent + 1
            if self.drop_after and n > self.drop_after:
                self.queue.error = ("Communication exception - possible device error/misconfiguration. Original "
                                    "message 'Couldn't read data from stream: 'rgbd' (X_LINK_ERROR)'")
                return
            self.queue.push(self.group(n))
            self.sent = n

    def group(self, n: int):
        """Frame n as the device's Sync node sends it: a MessageGroup of colour (YUV420p) and depth (RAW16, mm)."""
        image, depth = self.frames[(n - 1) % len(self.frames)]
        if self.stamp:  # frame number in the top-left 8x8 of both, to check the pair stays together
            image, depth = image.copy(), depth.copy()
            image[:8, :8] = n % 256
            depth[:8, :8] = 2000 + n
        h, w = depth.shape
        colour = dai.ImgFrame()
        colour.setType(dai.ImgFrame.Type.YUV420p)
        colour.setWidth(w)
        colour.setHeight(h)
        colour.setData(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420).reshape(-1))
        d = dai.ImgFrame()
        d.setType(dai.ImgFrame.Type.RAW16)
        d.setWidth(w)
        d.setHeight(h)
        d.setFrame(depth)
        for frame, seq, offset in ((colour, n, 0.0), (d, n + 1000, 0.004)):  # depth 4 ms after colour
            frame.setSequenceNum(seq)
            frame.setTimestampDevice(timedelta(seconds=n / self.fps + offset))
        group = dai.MessageGroup()
        group["rgb"] = colour
        group["depth"] = d
        return group


@pytest.fixture
def fake_oak(monkeypatch, sample_frames):
    """Replaces oakd.open_device: each open gets a new FakeOak (from `make`), recorded in `opened`."""
    opened, calls = [], []

    class Factory:
        make = staticmethod(lambda: FakeOak(sample_frames[0], calibration(), fps=30))

    def open_device(dai_module, target, usb2):
        assert dai_module is dai
        calls.append((target, usb2))
        device = Factory.make()
        opened.append(device)
        return device

    monkeypatch.setattr(oakd, "open_device", open_device)
    Factory.opened, Factory.calls = opened, calls
    yield Factory
    for device in opened:
        device.close()


def nodes_of(pipeline) -> tuple[dict, list]:
    data = pipeline.serializeToJson()["pipeline"]
    nodes = {n["id"]: n for _, n in data["nodes"]}
    links = sorted((nodes[c["node1Id"]]["name"], c["node1Output"], nodes[c["node2Id"]]["name"],
                    c["node2InputGroup"], c["node2Input"]) for c in data["connections"])
    return nodes, links


@pytest.mark.parametrize("size", sorted(OAKD_SIZES))
def test_pipeline_has_the_intended_nodes_and_settings(size):
    """depthai builds a Pipeline without a device: the one the source would boot, read back from its JSON."""
    w, h = size
    nodes, links = nodes_of(oakd.build_pipeline(dai, w, h, 15.0, "robotics", lens_position=130))
    by_name: dict = {}
    for n in nodes.values():
        by_name.setdefault(n["name"], []).append(n["properties"])
    assert sorted(by_name) == ["ColorCamera", "MonoCamera", "StereoDepth", "Sync", "XLinkOut"]
    assert len(by_name["MonoCamera"]) == 2 and all(len(v) == 1 for k, v in by_name.items() if k != "MonoCamera")
    colour, stereo = by_name["ColorCamera"][0], by_name["StereoDepth"][0]
    num, den = OAKD_SIZES[size]
    assert colour["boardSocket"] == dai.CameraBoardSocket.CAM_A.value
    assert colour["resolution"] == dai.ColorCameraProperties.SensorResolution.THE_1080_P.value
    assert colour["ispScale"] == {"horizNumerator": num, "horizDenominator": den, "vertNumerator": num,
                                  "vertDenominator": den}
    assert (1920 * num // den, 1080 * num // den) == size and w % 16 == 0  # depth alignment wants width % 16
    assert colour["fps"] == 15.0 and colour["initialControl"]["lensPosition"] == 130  # focus pinned
    assert sorted(m["boardSocket"] for m in by_name["MonoCamera"]) == [dai.CameraBoardSocket.CAM_B.value,
                                                                     dai.CameraBoardSocket.CAM_C.value]
    assert all(m["resolution"] == dai.MonoCameraProperties.SensorResolution.THE_400_P.value and m["fps"] == 15.0
               for m in by_name["MonoCamera"])
    algo = stereo["initialConfig"]["algorithmControl"]
    assert stereo["depthAlignCamera"] == dai.CameraBoardSocket.CAM_A.value  # setDepthAlign(CAM_A)
    assert (stereo["outWidth"], stereo["outHeight"]) == size  # depth at the colour size: registered pixel for pixel
    assert algo["depthUnit"] == dai.RawStereoDepthConfig.AlgorithmControl.DepthUnit.MILLIMETER.value
    assert algo["enableLeftRightCheck"] and algo["enableSubpixel"]  # the robotics preset's subpixel
    assert not stereo["initialConfig"]["postProcessing"]["temporalFilter"]["enable"]  # no smear on a moving arm
    assert by_name["Sync"][0]["syncThresholdNs"] == pytest.approx(0.5 / 15.0 * 1e9, abs=1e3)  # half a frame
    assert by_name["XLinkOut"][0]["streamName"] == oakd.STREAM
    assert links == sorted([("ColorCamera", "isp", "Sync", "inputs", "rgb"),
                            ("StereoDepth", "depth", "Sync", "inputs", "depth"),
                            ("MonoCamera", "out", "StereoDepth", "", "left"),
                            ("MonoCamera", "out", "StereoDepth", "", "right"),
                            ("Sync", "out", "XLinkOut", "", "in")])
    data = oakd.build_pipeline(dai, w, h, 15.0).serializeToJson()["pipeline"]
    named = {n["id"]: n for _, n in data["nodes"]}
    feeds = {c["node2Input"]: named[c["node1Id"]]["properties"]["boardSocket"] for c in data["connections"]
             if named[c["node2Id"]]["name"] == "StereoDepth"}
    assert feeds == {"left": dai.CameraBoardSocket.CAM_B.value, "right": dai.CameraBoardSocket.CAM_C.value}


def test_presets_and_no_pinned_focus_for_a_fixed_focus_camera():
    for preset, extended in (("default", False), ("robotics", False), ("high_detail", True)):
        nodes, _ = nodes_of(oakd.build_pipeline(dai, 640, 360, 30.0, preset))
        props = {n["name"]: n["properties"] for n in nodes.values()}
        assert props["StereoDepth"]["initialConfig"]["algorithmControl"]["enableExtended"] is extended, preset
        assert props["ColorCamera"]["initialControl"]["lensPosition"] == 0  # lens position 0: not pinned


@pytest.mark.parametrize("size", sorted(OAKD_SIZES))
def test_colour_intrinsics_at_the_output_size(size):
    """depthai scales the factory calibration (here 1920x1080) to the output size; the source takes it as is."""
    intr, matrix, coeffs = oakd.colour_calibration(dai, calibration((0.01, -0.02)), *size)
    k = size[0] / CALIBRATED[0]
    assert (intr.width, intr.height) == size and intr.model == "none" and not any(intr.coeffs)
    assert (intr.fx, intr.fy, intr.ppx, intr.ppy) == pytest.approx((1800 * k, 1800 * k, 960 * k, 540 * k))
    assert matrix[0, 0] == pytest.approx(intr.fx) and coeffs[:2] == pytest.approx([0.01, -0.02])


def test_distortion_at_the_edge_is_measured():
    matrix = np.array([[600.0, 0, 320], [0, 600, 180], [0, 0, 1]])
    assert oakd.distortion_px(matrix, np.zeros(14), 640, 360) == 0.0
    k1 = -0.05
    edge = oakd.distortion_px(matrix, np.array([k1, 0, 0, 0, 0.0]), 640, 360)
    # a corner's normalised radius r: the distorted point sits at r(1 + k1 r²); undistorting moves it out by ~k1 r³
    r = np.hypot(320, 180) / 600
    assert edge == pytest.approx(-k1 * r ** 3 * 600, rel=0.1)


def test_depthai_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "depthai", None)
    with pytest.raises(SourceError, match=r"depthai is not installed .*ripeye\[oakd\]"):
        make_source(SourceConfig(uri="oakd")).open()


def test_no_device_attached_is_a_clear_error():
    """The real depthai, no OAK here: its own "No available devices" through the source's message."""
    source = make_source(SourceConfig(uri="oakd"))
    with pytest.raises(SourceError, match=r"cannot start OAK-D \(first\) 640x360: .*No available devices"):
        source.open()
    source = make_source(SourceConfig(uri="oakd://14442C10D13EABCE00"))
    with pytest.raises(SourceError, match="cannot start OAK-D 14442C10D13EABCE00"):
        source.open()


def test_uri_forms_and_sizes():
    s = make_source(SourceConfig(uri="oakd://192.168.1.44", width=1280, height=720, fps=15,
                                 oakd={"usb2": True}))
    assert isinstance(s, oakd.OakdSource) and s.target == "192.168.1.44" and s.size == (1280, 720)
    assert s.native_fps == 15 and s.settings.usb2 and not s.finite
    assert make_source(SourceConfig(uri="oakd")).size == (640, 360)
    with pytest.raises(ConfigError, match="640x360, 960x540, 1280x720, 1920x1080"):
        validate({"source": {"uri": "oakd", "width": 640, "height": 480}})
    with pytest.raises(ConfigError, match="source.oakd.preset"):
        validate({"source": {"uri": "oakd", "oakd": {"preset": "high_density"}}})


def read_n(source, n):
    out = []
    for _ in range(n):
        image = source.read()
        out.append((image, source.take_depth()))
    return out


def test_source_reads_registered_colour_and_depth_from_a_fake_device(fake_oak, sample_frames):
    source = make_source(SourceConfig(uri="oakd", oakd={"usb2": True}))
    source.open()
    try:
        device = fake_oak.opened[0]
        assert fake_oak.calls == [("", True)]
        assert device.queue_args == (oakd.STREAM, 1, False)  # only the newest message is kept
        intr = source.intrinsics
        assert (intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy) == (640, 360, 600, 600, 320, 180)
        # messages sent while nobody reads: all but the newest overwritten (waited for, not timed: a loaded machine
        # runs the fake's sender slower)
        deadline = time.monotonic() + 10
        while device.queue.overwritten < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert device.queue.overwritten >= 5 and len(device.queue.items) == 1, device.queue.overwritten
        for image, depth in read_n(source, 5):
            n = depth.meta["frame_number"]
            assert image.shape == (360, 640, 3) and image.dtype == np.uint8
            assert depth.depth.shape == (360, 640) and depth.depth.dtype == np.uint16 and depth.units_mm == 1.0
            assert depth.registration is None and depth.intrinsics == intr
            assert abs(int(image[:8, :8].mean().round()) - n % 256) <= 1 and (depth.depth[:8, :8] == 2000 + n).all()
            assert depth.meta["depth_frame_number"] == n + 1000 and depth.meta["sync_ms"] == pytest.approx(4.0)
        image, depth = read_n(source, 1)[0]
        original = sample_frames[0][(depth.meta["frame_number"] - 1) % 3][0]
        # colour went through YUV 4:2:0 and depthai's own conversion back to BGR: chroma is subsampled
        assert np.abs(image[8:].astype(int) - original[8:]).mean() < 4
        assert source.take_problems() == []  # USB 3 here: nothing to say
    finally:
        source.close()
    assert device.closed.is_set() and source.device is None


def test_usb2_link_too_narrow_for_the_stream_is_reported(fake_oak, sample_frames):
    big = [(cv2.resize(i, (1280, 720)), cv2.resize(d, (1280, 720), interpolation=cv2.INTER_NEAREST))
           for i, d in sample_frames[0]]
    fake_oak.make = staticmethod(lambda: FakeOak(big, calibration(), fps=30, speed=dai.UsbSpeed.HIGH))
    source = make_source(SourceConfig(uri="oakd", width=1280, height=720))
    source.open()
    try:
        problems = source.take_problems()
        assert len(problems) == 1 and "USB 2" in problems[0] and "97 MB/s" in problems[0], problems
        assert source.take_problems() == []  # once
        assert source.intrinsics.fx == pytest.approx(1200.0)
    finally:
        source.close()


def test_undistort_remaps_colour_to_the_pinhole_camera(fake_oak, sample_frames):
    """The device aligns depth to an undistorted colour camera; undistort: true makes colour match it."""
    coeffs = np.array([-0.12, 0.05, 0.001, -0.001, 0.0])
    matrix = np.array([[600.0, 0, 320], [0, 600, 180], [0, 0, 1]])
    pinhole = sample_frames[0][0][0]
    # what the lens makes of the pinhole image: each distorted pixel shows the pinhole pixel it undistorts to
    grid = np.stack(np.meshgrid(np.arange(640.0), np.arange(360.0)), -1).reshape(-1, 1, 2)
    src = cv2.undistortPoints(grid, matrix, coeffs, P=matrix).reshape(360, 640, 2).astype(np.float32)
    distorted = cv2.remap(pinhole, src[..., 0], src[..., 1], cv2.INTER_LINEAR)
    frames = [(distorted, d) for _, d in sample_frames[0]]
    fake_oak.make = staticmethod(lambda: FakeOak(frames, calibration(tuple(coeffs)), fps=30, stamp=False))
    results = {}
    for undistort in (False, True):
        source = make_source(SourceConfig(uri="oakd", oakd={"undistort": undistort}))
        source.open()
        try:
            results[undistort] = read_n(source, 1)[0][0]
        finally:
            source.close()
    inner = (slice(20, 340), slice(20, 620))  # the remap's border fill left out
    err = {k: float(np.abs(v[inner].astype(int) - pinhole[inner]).mean()) for k, v in results.items()}
    assert err[True] < 5 and err[False] > 2 * err[True], err


def test_a_dropped_device_is_reopened_with_backoff(fake_oak, sample_frames):
    fake_oak.make = staticmethod(lambda: FakeOak(sample_frames[0], calibration(), fps=30, drop_after=6))
    errors = []
    cfg = SourceConfig(uri="oakd", reconnect_initial_s=0.2, reconnect_max_s=0.4)
    slot = LatestSlot()
    capture = CaptureThread(cfg, slot, on_error=errors.append)
    capture.start()
    got = []
    try:
        deadline = time.time() + 20
        while len(fake_oak.opened) < 3 and time.time() < deadline:
            frame = slot.get(timeout=0.5)
            if frame is not None:
                got.append(frame)
    finally:
        capture.stop()
        capture.join(timeout=5)
    assert len(fake_oak.opened) >= 3 and capture.reconnects >= 2, (len(fake_oak.opened), capture.reconnects)
    assert all(d.closed.is_set() for d in fake_oak.opened)  # each dropped device was closed before the next
    assert any("stopped" in e and "X_LINK_ERROR" in e for e in errors), errors
    assert got and all(f.depth is not None and f.depth.meta["frame_number"] <= 6 for f in got)


def test_daemon_publishes_3d_positions_from_an_oak(fake_oak, sample_frames, broker, subscriber_factory, model_dir,
                                                   tmp_path):
    """End to end in-process: the daemon's own capture, detector, tracker, Locate and MQTT, on the fake device."""
    from bench.depth_eval import CAMERA_TO_ARM, score
    from daemon.pipeline import Daemon

    fake_oak.make = staticmethod(lambda: FakeOak(sample_frames[0], calibration(), fps=10, stamp=False))
    cfg = Config.model_validate({
        "device_id": "oak-test", "state_dir": str(tmp_path / "state"),
        "source": {"uri": "oakd", "fps": 10}, "runtime": {"threads": 1},
        "mqtt": {"port": broker.port, "qos": 1}, "stats": {"interval_s": 60},
        "targets": {"min_age_ms": 0, "min_frames": 2}, "calibration": {"camera_to_arm": CAMERA_TO_ARM.tolist()}})
    sub = subscriber_factory(broker.port, "ripeye/oak-test/#")
    daemon = Daemon(cfg)
    daemon.start()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (len(sub.on("detections")) < 12 or not sub.on("targets")):
            time.sleep(0.2)
        time.sleep(0.3)
    finally:
        daemon.stop()
    detections, targets = sub.json("detections"), sub.json("targets")
    assert len(detections) >= 12, (len(detections), daemon.capture.last_error)
    for msg in detections:
        jsonschema.validate(msg, DETECTIONS_MESSAGE)
        assert msg["image"] == {"width": 640, "height": 360}
    for msg in targets:
        jsonschema.validate(msg, TARGET_MESSAGE)
    figures = score(detections, targets, sample_frames[1], CAMERA_TO_ARM)
    print(json.dumps(figures))
    assert figures["unoccluded_matched"] >= 20, figures
    assert figures["locate_within_tolerance_fraction"] >= 0.9, figures
    assert figures["hole_tomato_positions"] and all(p is None for p in figures["hole_tomato_positions"]), figures
    assert figures["targets_with_xyz"] >= 1 and figures["arm_xyz_max_deviation_mm"] <= 1.0, figures
    assert len(fake_oak.opened) == 1 and fake_oak.opened[0].closed.is_set()  # one device, closed at stop
