"""Luxonis OAK-D source through depthai's v2 API: colour and stereo depth aligned to colour on the device."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Optional

import cv2
import numpy as np

from daemon.capture import Source, SourceError
from daemon.config import OAKD_SIZES, OakdConfig
from daemon.depth import DepthMap, Intrinsics

log = logging.getLogger(__name__)

DEPTHAI_VERSION = "2.29.0.0"  # the depthai this module is built and tested against (pyproject's oakd extra)
STREAM = "rgbd"  # the one XLinkOut: colour and depth paired by the device's Sync node
DEFAULT_SIZE = (640, 360)
READ_TIMEOUT_S = 5.0
POLL_S = 0.002  # depthai v2's Python queue has no get with a timeout: tryGet is polled this often
USB2_MB_S = 35.0  # an estimate of what a USB 2 link (480 Mbit/s raw) carries in bulk transfers
PRESETS = {"default": "DEFAULT", "robotics": "ROBOTICS", "high_detail": "HIGH_DETAIL"}


def stream_mb_s(width: int, height: int, fps: float) -> float:
    """MB/s the stream needs: colour as YUV 4:2:0 (1.5 bytes a pixel) and 16-bit depth at the same size."""
    return width * height * 3.5 * fps / 1e6


def build_pipeline(dai, width: int, height: int, fps: float, preset: str = "robotics", lens_position: int = 0):
    """The device's pipeline: ColorCamera (CAM_A, 1080P mode, ISP-scaled to width×height) and StereoDepth (CAM_B and
    CAM_C at 400P, depth in mm aligned to CAM_A at the colour size), paired on the device by a Sync node (within half
    a frame period) into one XLinkOut. `lens_position` (the factory calibration's, 0 = fixed focus) pins the focus:
    the calibration holds at that lens position only."""
    num, den = OAKD_SIZES[(width, height)]
    pipeline = dai.Pipeline()
    colour = pipeline.create(dai.node.ColorCamera)
    colour.setBoardSocket(dai.CameraBoardSocket.CAM_A)
    colour.setResolution(dai.ColorCameraProperties.SensorResolution.THE_1080_P)
    colour.setIspScale(num, den)
    colour.setFps(fps)
    if lens_position:
        colour.initialControl.setManualFocus(lens_position)
    stereo = pipeline.create(dai.node.StereoDepth)
    stereo.setDefaultProfilePreset(getattr(dai.node.StereoDepth.PresetMode, PRESETS[preset]))
    stereo.setLeftRightCheck(True)  # aligning depth to another camera needs it
    stereo.setDepthAlign(dai.CameraBoardSocket.CAM_A)
    stereo.setOutputSize(width, height)
    for socket, port in ((dai.CameraBoardSocket.CAM_B, stereo.left), (dai.CameraBoardSocket.CAM_C, stereo.right)):
        mono = pipeline.create(dai.node.MonoCamera)
        mono.setBoardSocket(socket)
        mono.setResolution(dai.MonoCameraProperties.SensorResolution.THE_400_P)
        mono.setFps(fps)
        mono.out.link(port)
    sync = pipeline.create(dai.node.Sync)
    sync.setSyncThreshold(timedelta(seconds=0.5 / fps))
    colour.isp.link(sync.inputs["rgb"])
    stereo.depth.link(sync.inputs["depth"])
    out = pipeline.create(dai.node.XLinkOut)
    out.setStreamName(STREAM)
    sync.out.link(out.input)
    return pipeline


def open_device(dai, target: str, usb2: bool):
    """Connect to the OAK `target` names (MXID, IP address or USB port name; '' = the first one found)."""
    config = dai.Device.Config()
    config.board.usb.maxSpeed = dai.UsbSpeed.HIGH if usb2 else dai.UsbSpeed.SUPER
    return dai.Device(config, dai.DeviceInfo(target)) if target else dai.Device(config)


def colour_calibration(dai, calib, width: int, height: int) -> tuple[Intrinsics, np.ndarray, np.ndarray]:
    """The colour camera's pinhole intrinsics at the output size (the model the device aligns depth to), its camera
    matrix and its lens distortion coefficients (OpenCV's order, up to 14)."""
    socket = dai.CameraBoardSocket.CAM_A
    model = calib.getDistortionModel(socket)
    if model != dai.CameraModel.Perspective:
        raise SourceError(f"the colour camera's lens model is {model.name}: 3D positions need a perspective one")
    matrix = np.array(calib.getCameraIntrinsics(socket, width, height), dtype=np.float64)
    coeffs = np.array(calib.getDistortionCoefficients(socket), dtype=np.float64)
    intr = Intrinsics(width, height, float(matrix[0, 0]), float(matrix[1, 1]), float(matrix[0, 2]),
                      float(matrix[1, 2]))
    return intr, matrix, coeffs


def distortion_px(matrix: np.ndarray, coeffs: np.ndarray, width: int, height: int) -> float:
    """How far (pixels) the lens distortion moves a point of the image border: how far apart colour and the depth
    aligned to an undistorted colour camera can be at the edge, without source.oakd.undistort."""
    if not coeffs.any():
        return 0.0
    u = np.linspace(0, width - 1, 33)
    v = np.linspace(0, height - 1, 19)
    border = np.concatenate([np.stack([u, np.zeros_like(u)], 1), np.stack([u, np.full_like(u, height - 1)], 1),
                             np.stack([np.zeros_like(v), v], 1), np.stack([np.full_like(v, width - 1), v], 1)])
    undistorted = cv2.undistortPoints(border.reshape(-1, 1, 2), matrix, coeffs, P=matrix).reshape(-1, 2)
    return float(np.linalg.norm(undistorted - border, axis=1).max())


class OakdSource(Source):
    """Luxonis OAK-D (OAK-D, Lite, Pro, PoE: a colour camera on CAM_A and a stereo pair on CAM_B/CAM_C).

    The device computes depth and aligns it to the colour camera (registered: same pixels, depth in mm); the host
    gets colour and depth paired in one message and reads the colour intrinsics at the output size from the factory
    calibration, so daemon.depth needs no registration. The host queue holds one message and overwrites it
    (non-blocking): only the newest pair is read, as with the other cameras. A dropped device raises SourceError and
    the capture thread reconnects with its backoff.
    """

    def __init__(self, target: str = "", width: int = 0, height: int = 0, fps: float = 0.0,
                 settings: Optional[OakdConfig] = None):
        self.target = target
        self.size = (width, height) if width and height else DEFAULT_SIZE
        self.native_fps = fps or 30.0
        self.settings = settings or OakdConfig()
        self.description = f"OAK-D {target or '(first)'} {self.size[0]}x{self.size[1]}"
        self.device = None
        self.queue = None
        self.intrinsics: Optional[Intrinsics] = None
        self.maps = None  # undistortion maps (source.oakd.undistort)
        self.depth: Optional[DepthMap] = None
        self.problems: list[str] = []

    def open(self) -> None:
        try:
            import depthai as dai
        except ImportError as exc:
            raise SourceError(f"depthai is not installed ({exc}); ./install.sh --dev or "
                              "pip install 'ripeye[oakd]'") from None
        if self.size not in OAKD_SIZES:
            raise SourceError(f"{self.description}: size not one of {sorted(OAKD_SIZES)}")
        try:
            device = open_device(dai, self.target, self.settings.usb2)
        except RuntimeError as exc:  # no device, wrong MXID/IP, USB permissions (udev rule)
            raise SourceError(f"cannot start {self.description}: {exc}") from None
        try:
            self._start(dai, device)
        except BaseException:
            self.queue = None
            device.close()
            raise
        self.device = device

    def _start(self, dai, device) -> None:
        """Read the calibration, start the pipeline on `device` and take its output queue."""
        width, height = self.size
        try:
            calib = device.readCalibration()
            try:
                self.intrinsics, matrix, coeffs = colour_calibration(dai, calib, width, height)
            except RuntimeError as exc:  # nothing calibrated for CAM_A
                raise SourceError(f"{self.description}: no colour camera calibration on the device ({exc})") from None
            lens = int(calib.getLensPosition(dai.CameraBoardSocket.CAM_A) or 0)
            device.startPipeline(build_pipeline(dai, width, height, self.native_fps, self.settings.preset, lens))
            self.queue = device.getOutputQueue(STREAM, maxSize=1, blocking=False)
            speed = device.getUsbSpeed()
        except RuntimeError as exc:
            raise SourceError(f"cannot start {self.description}: {exc}") from None
        edge = distortion_px(matrix, coeffs, width, height)
        self.maps = None
        if self.settings.undistort and edge > 0:
            self.maps = cv2.initUndistortRectifyMap(matrix, coeffs, None, matrix, (width, height), cv2.CV_16SC2)
        need = stream_mb_s(width, height, self.native_fps)
        log.info("%s: link %s, %.0f MB/s of colour + depth; colour fx %.1f fy %.1f ppx %.1f ppy %.1f; lens "
                 "distortion moves the image edge up to %.1f px (%s)", self.description, speed.name, need,
                 self.intrinsics.fx, self.intrinsics.fy, self.intrinsics.ppx, self.intrinsics.ppy, edge,
                 "undistorted on the host" if self.maps else "not corrected")
        if speed == dai.UsbSpeed.HIGH and need > USB2_MB_S:
            self.problems.append(f"{self.description} runs on USB 2, which carries ~{USB2_MB_S:.0f} MB/s; "
                                 f"{width}x{height} at {self.native_fps:g} fps needs {need:.0f} MB/s: expect dropped "
                                 "frames (a USB 3 cable and port, or a smaller source.width/height or fps)")

    def read(self) -> np.ndarray:
        if self.queue is None:
            raise SourceError(f"{self.description} is not open")
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            try:
                group = self.queue.tryGet()
            except RuntimeError as exc:  # unplugged, power lost, firmware crash: depthai's link errors
                raise SourceError(f"{self.description} stopped: {exc}") from None
            if group is not None:
                break
            if time.monotonic() > deadline:
                raise SourceError(f"no frames from {self.description} for {READ_TIMEOUT_S:g} s")
            time.sleep(POLL_S)
        try:
            colour, depth = group["rgb"], group["depth"]
        except (IndexError, KeyError):  # depthai's MessageGroup raises IndexError for a missing name
            raise SourceError(f"{self.description} sent colour or depth alone") from None
        image = colour.getCvFrame()
        raw = depth.getFrame()
        if raw.dtype != np.uint16 or raw.shape != image.shape[:2]:
            raise SourceError(f"{self.description}: depth {raw.dtype} {raw.shape[::-1]} does not match colour "
                              f"{image.shape[1::-1]}: not aligned to it")
        if self.maps is not None:
            image = cv2.remap(image, *self.maps, cv2.INTER_LINEAR)
        self.depth = DepthMap(np.array(raw), 1.0, self.intrinsics,
                              {"frame_number": int(colour.getSequenceNum()),
                               "depth_frame_number": int(depth.getSequenceNum()),
                               "sync_ms": round(group.getIntervalNs() / 1e6, 3)})
        return image

    def take_depth(self) -> Optional[DepthMap]:
        depth, self.depth = self.depth, None
        return depth

    def take_problems(self) -> list[str]:
        problems, self.problems = self.problems, []
        return problems

    def close(self) -> None:
        self.queue = None
        if self.device is not None:
            try:
                self.device.close()
            except RuntimeError:
                pass
            self.device = None
