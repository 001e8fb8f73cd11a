"""Frame sources (Pi camera, V4L2, RTSP/HTTP, GStreamer, video file, image folder, RealSense; OAK-D in daemon/oakd.py)
and the capture thread."""

from __future__ import annotations

import glob
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np

from daemon.config import SAMPLE_3D, SAMPLE_CLIP, SourceConfig, is_oakd
from daemon.depth import PINHOLE_MODELS, DepthMap, Intrinsics, Registration
from daemon.handoff import LatestSlot
from daemon.redact import redact

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
REALSENSE_SUFFIXES = {".bag", ".db3"}  # ROS 1 / ROS 2 bags, as the RealSense recorder writes them
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mjpg", ".mjpeg"}


class SourceError(Exception):
    """The source cannot be opened or read; the message names it."""


@dataclass
class Frame:
    frame_id: int
    image: np.ndarray
    captured_at: float  # Unix seconds, when the frame was read
    t_capture: float  # perf_counter at capture, for latency
    capture_ms: float = 0.0
    prepared: Any = None  # what the capture thread's prepare() made of it (model tensor + letterbox)
    prepare_ms: float = 0.0
    depth: Optional[DepthMap] = None  # of `image` (registered to it, or with the registration), depth cameras only



class Source:
    """Something frames are read from; read() returns a BGR image or raises SourceError."""

    description = "source"
    native_fps: float = 0.0
    finite = False  # files end; cameras don't

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray:
        raise NotImplementedError

    def _replayed_last(self, frames) -> bool:
        return self.last_number is not None and self.last_number > 1 and frames.get_frame_number() == self.last_number

    def take_problems(self) -> list[str]:
        """Problems met while reading that did not stop the source (skipped files), each reported once."""
        return []

    def take_depth(self) -> Optional[DepthMap]:
        """The depth that belongs to the image read() returned last; None for sources without depth."""
        return None

    def close(self) -> None:
        pass


class OpenCvSource(Source):
    """Anything cv2.VideoCapture opens: V4L2 devices, RTSP/HTTP streams, GStreamer pipelines, video files."""

    def __init__(self, target, api: int = cv2.CAP_ANY, width: int = 0, height: int = 0, fps: float = 0.0,
                 finite: bool = False, description: str = ""):
        self.target, self.api = target, api
        self.width, self.height, self.want_fps = width, height, fps
        self.finite = finite
        self.description = description or str(target)
        self.cap: Optional[cv2.VideoCapture] = None

    def open(self) -> None:
        if self.finite and not Path(str(self.target)).is_file():
            raise SourceError(f"video file not found: {self.target}")
        cap = cv2.VideoCapture(self.target, self.api)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.description}")
        if self.width and self.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.want_fps and not self.finite:
            cap.set(cv2.CAP_PROP_FPS, self.want_fps)
        if not self.finite:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # cameras: keep the driver from queueing stale frames
        self.native_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.cap = cap

    def read(self) -> np.ndarray:
        if self.cap is None:
            raise SourceError(f"{self.description} is not open")
        ok, frame = self.cap.read()
        if not ok or frame is None:
            raise SourceError(f"end of stream or read failure on {self.description}")
        return frame

    def rewind(self) -> bool:
        return bool(self.cap is not None and self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class ImageFolderSource(Source):
    """Images of a folder (or one image) in name order, decoded one by one."""

    finite = True

    def __init__(self, path: Path, fps: float):
        self.path = Path(path)
        self.native_fps = fps or 2.0
        self.description = f"image folder {self.path}"
        self.files: list[Path] = []
        self.index = 0
        self.unreadable: set[Path] = set()
        self.problems: list[str] = []

    def open(self) -> None:
        if self.path.is_file():
            self.files = [self.path]
        elif self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            raise SourceError(f"image path not found: {self.path}")
        if not self.files:
            raise SourceError(f"no images in {self.path}")
        self.index = 0

    def read(self) -> np.ndarray:
        """The next image that decodes; an unreadable one (0 bytes, truncated, not an image) is skipped, reported
        once through take_problems(), and left out of later loops."""
        while True:
            if len(self.unreadable) == len(self.files):
                raise SourceError(f"no readable image in {self.path} ({len(self.files)} files, none decodes)")
            if self.index >= len(self.files):
                raise SourceError(f"end of {self.description}")
            path = self.files[self.index]
            self.index += 1
            if path in self.unreadable:
                continue
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return image
            self.unreadable.add(path)
            size = path.stat().st_size if path.exists() else 0
            self.problems.append(f"skipped unreadable image {path} ({size} bytes: not a decodable image)")

    def take_problems(self) -> list[str]:
        problems, self.problems = self.problems, []
        return problems

    def rewind(self) -> bool:
        self.index = 0
        return True


class Picamera2Source(Source):
    """Raspberry Pi CSI camera through picamera2 (imported only when this source is used)."""

    def __init__(self, width: int, height: int, fps: float):
        self.size = (width or 1280, height or 720)
        self.native_fps = fps or 30.0
        self.description = f"picamera2 {self.size[0]}x{self.size[1]}"
        self.cam = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError(f"picamera2 is not installed: {exc}") from None
        try:
            cam = Picamera2()
            config = cam.create_video_configuration(main={"size": self.size, "format": "RGB888"},
                                                    controls={"FrameRate": self.native_fps}, buffer_count=2)
            cam.configure(config)
            cam.start()
        except Exception as exc:  # libcamera raises plain RuntimeError/IndexError when no camera is attached
            raise SourceError(f"cannot start the Pi camera: {exc}") from None
        self.cam = cam

    def read(self) -> np.ndarray:
        try:
            # picamera2's "RGB888" is BGR byte order in memory, which is what OpenCV expects.
            return self.cam.capture_array("main")
        except Exception as exc:
            raise SourceError(f"Pi camera read failed: {exc}") from None

    def close(self) -> None:
        if self.cam is not None:
            try:
                self.cam.stop()
                self.cam.close()
            finally:
                self.cam = None


class RealSenseSource(Source):
    """Intel RealSense camera (first one, or by serial) or a recording (.bag/.db3) through pyrealsense2.

    No frame is aligned (rs.align over a whole frameset costs milliseconds per frame): depth registered to colour
    (same intrinsics, identity extrinsics) indexes the colour image directly; otherwise each DepthMap carries the
    depth camera's intrinsics and the depth→colour extrinsics, and only the samples each box needs are mapped
    (daemon.depth). The intrinsics are the colour stream's and the depth scale the depth sensor's. Playback is never
    paced by librealsense: the capture thread paces files like any video (source.realtime) and rewinds them
    (source.loop).
    """

    def __init__(self, serial: str = "", path: Optional[Path] = None, width: int = 0, height: int = 0,
                 fps: float = 0.0):
        self.serial, self.path = serial, path
        self.size, self.want_fps = (width, height), fps
        self.finite = path is not None
        self.description = f"RealSense recording {path}" if path else f"RealSense camera {serial or '(first)'}"
        self.pipeline = None
        self.has_depth = False
        self.registration: Optional[Registration] = None  # None: depth registered to colour (or no depth)
        self.intrinsics: Optional[Intrinsics] = None
        self.units_mm = 1.0
        self.depth: Optional[DepthMap] = None
        self.playback = None
        self.stopped_status = None
        self.delivered = False  # a frame came since open()
        self.last_number = None  # frame number of the last frameset read (a rewind must not replay it first)

    def open(self) -> None:
        try:
            import pyrealsense2 as rs
        except ImportError as exc:
            raise SourceError(f"pyrealsense2 is not installed ({exc}); ./install.sh --dev or "
                              "pip install 'ripeye[realsense]' (it needs apt's libusb-1.0-0)") from None
        if self.path is not None and not self.path.is_file():
            raise SourceError(f"RealSense recording not found: {self.path}")
        cfg = rs.config()
        if self.path is not None:
            cfg.enable_device_from_file(str(self.path), repeat_playback=False)
        else:
            if self.serial:
                cfg.enable_device(self.serial)
            w, h, fps = self.size[0] or 640, self.size[1] or 480, int(self.want_fps or 30)
            cfg.enable_stream(rs.stream.color, w, h, rs.format.bgr8, fps)
            cfg.enable_stream(rs.stream.depth, rs.format.z16, fps)  # the depth sensor's own size, mapped per box
        pipeline = rs.pipeline()
        self.playback = None  # a rewind's: that device is gone
        try:
            profile = pipeline.start(cfg)
            if self.path is not None:
                self.playback = profile.get_device().as_playback()
                self.playback.set_real_time(False)
                self.stopped_status = rs.playback_status.stopped
            color = profile.get_stream(rs.stream.color).as_video_stream_profile()
            has_depth = any(s.stream_type() == rs.stream.depth for s in profile.get_streams())
            if has_depth:
                self.units_mm = float(profile.get_device().first_depth_sensor().get_depth_scale()) * 1000.0
                depth_profile = profile.get_stream(rs.stream.depth).as_video_stream_profile()
                depth_intr = _intrinsics(depth_profile.get_intrinsics())
                to_colour = depth_profile.get_extrinsics_to(color)
        except RuntimeError as exc:  # no camera, wrong serial, a file without colour
            self._stop(pipeline)
            raise SourceError(f"cannot start {self.description}: {exc}") from None
        self.intrinsics = _intrinsics(color.get_intrinsics())
        # a colour-only recording plays as a source without depth (frames carry none, nothing is located)
        self.has_depth, self.registration = has_depth, None
        if has_depth:
            for name, intr in (("colour", self.intrinsics), ("depth", depth_intr)):
                if intr.model not in PINHOLE_MODELS:  # refused here, not on every frame later
                    self._stop(pipeline)
                    raise SourceError(f"{self.description}: {name} distortion model {intr.model!r} is not "
                                      f"supported for 3D positions (one of {sorted(PINHOLE_MODELS)})")
            rotation = np.array(to_colour.rotation, dtype=np.float64).reshape(3, 3).T  # librealsense: column-major
            translation_mm = np.array(to_colour.translation, dtype=np.float64) * 1000.0
            if not registered(depth_intr, self.intrinsics, rotation, translation_mm):
                self.registration = Registration(depth_intr, rotation, translation_mm)
        self.native_fps = float(color.fps())
        self.pipeline = pipeline
        self.delivered = False

    def read(self) -> np.ndarray:
        if self.pipeline is None:
            raise SourceError(f"{self.description} is not open")
        frames = self._next_frames()
        color = frames.get_color_frame()
        if not self.has_depth:
            if not color:
                raise SourceError(f"{self.description} gave a frame without colour")
            return np.asanyarray(color.get_data()).copy()
        depth = frames.get_depth_frame()  # from the same frameset as the colour: the pair cannot be split
        if not color or not depth:
            raise SourceError(f"{self.description} gave a frame without colour or depth")
        image = np.asanyarray(color.get_data()).copy()
        self.depth = DepthMap(np.asanyarray(depth.get_data()).copy(), self.units_mm, self.intrinsics,
                              {"frame_number": int(color.get_frame_number())}, self.registration)
        return image

    def _next_frames(self):
        """The next frameset; a recording's end is its playback stopping (short polls: looping stays cheap)."""
        if not self.finite:
            ok, frames = self.pipeline.try_wait_for_frames(5000)
            if not ok:
                raise SourceError(f"no frames from {self.description} for 5 s")
            return frames
        deadline = time.monotonic() + 5.0
        while True:
            # read before polling, so a frame sent just before the stop is still taken; a playback just (re)started
            # may not have left the stopped state yet, so that counts only once a frame came
            stopped = self.delivered and self.playback.current_status() == self.stopped_status
            ok, frames = self.pipeline.try_wait_for_frames(50)
            if ok and not self.delivered and self._replayed_last(frames):
                continue  # seen once after a rewind: the recording's last frame again before its first
            if ok:
                self.delivered = True
                self.last_number = frames.get_frame_number()
                return frames
            if stopped:
                raise SourceError(f"end of recording {self.path}")
            if time.monotonic() > deadline:
                raise SourceError(f"no frames from {self.description} for 5 s")

    def take_depth(self) -> Optional[DepthMap]:
        depth, self.depth = self.depth, None
        return depth

    def rewind(self) -> bool:
        if self.path is None:
            return False
        self.close()
        try:
            self.open()
        except SourceError:
            return False
        return True

    def close(self) -> None:
        if self.pipeline is not None:
            self._stop(self.pipeline)
            self.pipeline = None

    def _stop(self, pipeline) -> None:
        """Stop a pipeline. A recording is paused and switched to real time first: librealsense's playback, stopped
        while it still plays in non-real-time mode, now and then corrupts the heap (measured here: glibc aborts or
        segfaults within 300 open/read/close cycles in 9 of 9 runs under load; none in 3 with this), a known race
        of its stop."""
        if self.playback is not None:
            try:
                self.playback.pause()
                self.playback.set_real_time(True)
            except RuntimeError:
                pass
        try:
            pipeline.stop()
        except RuntimeError:
            pass


def _intrinsics(i) -> Intrinsics:
    """pyrealsense2's rs.intrinsics as daemon.depth's."""
    return Intrinsics(i.width, i.height, i.fx, i.fy, i.ppx, i.ppy, str(i.model).split(".")[-1],
                      tuple(float(c) for c in i.coeffs))


def registered(depth: Intrinsics, colour: Intrinsics, rotation: np.ndarray, translation_mm: np.ndarray,
               tolerance: float = 1e-6) -> bool:
    """Whether a depth image indexes the colour image pixel for pixel: the same size, intrinsics and distortion,
    and identity extrinsics (rotation within `tolerance`, translation within `tolerance` mm)."""
    def model(intr: Intrinsics) -> str:  # all coefficients zero: no distortion, whatever the model's name
        return intr.model if any(intr.coeffs) else "none"

    same = (depth.width, depth.height, model(depth)) == (colour.width, colour.height, model(colour))
    close = np.allclose([depth.fx, depth.fy, depth.ppx, depth.ppy, *depth.coeffs],
                        [colour.fx, colour.fy, colour.ppx, colour.ppy, *colour.coeffs], rtol=0, atol=tolerance)
    return bool(same and close and np.allclose(rotation, np.eye(3), rtol=0, atol=tolerance)
                and np.allclose(translation_mm, 0, rtol=0, atol=tolerance))


def pi_camera_status() -> str:
    """'ok' when picamera2 imports and sees a camera, else why not (shown by `ripeye doctor` and on `errors`)."""
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        return f"picamera2 does not import ({exc})"
    try:
        return "ok" if Picamera2.global_camera_info() else "picamera2 imports but libcamera sees no camera"
    except Exception as exc:  # libcamera's own errors are plain RuntimeErrors
        return f"libcamera failed: {exc}"


def resolve_auto(cfg: SourceConfig) -> str:
    """auto → the Pi camera if present, else the first /dev/video* that opens.

    Never the bundled sample clip: a service that cannot see its camera must publish nothing and say so (the
    capture thread reports this error and keeps looking with backoff), not send the demo video's tomatoes to an arm.
    The clip is for `ripeye demo` and an explicit `source.uri: sample`.
    """
    pi_status = pi_camera_status()
    if pi_status == "ok":
        return "picamera2"
    devices = sorted(glob.glob("/dev/video*"), key=lambda d: int("".join(c for c in d if c.isdigit()) or 0))
    for dev in devices:
        cap = cv2.VideoCapture(dev, cv2.CAP_V4L2)
        ok = cap.isOpened() and cap.read()[0]
        cap.release()
        if ok:
            return dev
    raise SourceError("no camera found for source.uri auto: " + pi_status + "; "
                      + (f"none of {', '.join(devices)} delivers frames" if devices else "no /dev/video* device"))


def make_source(cfg: SourceConfig, uri: Optional[str] = None) -> Source:
    """Build the source a URI names (see config/ripeye.yaml for the forms)."""
    uri = (uri or cfg.uri).strip()
    if uri == "auto":
        uri = resolve_auto(cfg)
    if uri == "sample":
        uri = str(SAMPLE_CLIP)
    if uri == "sample-3d":
        uri = str(SAMPLE_3D)
    if uri == "realsense" or uri.startswith("realsense:"):
        return RealSenseSource(uri.partition(":")[2], None, cfg.width, cfg.height, cfg.fps)
    if is_oakd(uri):
        from daemon.oakd import OakdSource  # depthai itself is imported only when the source opens

        return OakdSource(uri.removeprefix("oakd").removeprefix("://"), cfg.width, cfg.height, cfg.fps, cfg.oakd)
    if uri.startswith("picamera2"):
        return Picamera2Source(cfg.width, cfg.height, cfg.fps)
    if "!" in uri:
        return OpenCvSource(uri, cv2.CAP_GSTREAMER, description=f"GStreamer pipeline '{redact(uri)[:60]}'")
    if uri.isdigit() or uri.startswith("/dev/video"):
        target = int(uri) if uri.isdigit() else uri
        return OpenCvSource(target, cv2.CAP_V4L2, cfg.width, cfg.height, cfg.fps, description=f"camera {uri}")
    if "://" in uri and not uri.startswith("file://"):
        return OpenCvSource(uri, cv2.CAP_FFMPEG, description=f"stream {redact(uri)}")
    path = Path(uri.removeprefix("file://")).expanduser()
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFolderSource(path, cfg.fps)
    if path.suffix.lower() in REALSENSE_SUFFIXES:
        return RealSenseSource(path=path)
    return OpenCvSource(str(path), cv2.CAP_FFMPEG, finite=True, description=f"video file {path}")


class CaptureThread(threading.Thread):
    """Reads frames into a LatestSlot, reconnecting with exponential backoff; never blocks the pipeline."""

    def __init__(self, cfg: SourceConfig, slot: LatestSlot, prepare: Optional[Callable] = None,
                 on_error: Optional[Callable[[str], None]] = None, on_recover: Optional[Callable[[], None]] = None):
        super().__init__(name="capture", daemon=True)
        self.cfg = cfg
        self.slot = slot
        self.prepare = prepare
        self.on_error = on_error or (lambda msg: None)
        self.on_recover = on_recover or (lambda: None)
        self.stop_event = threading.Event()
        self.frame_count = 0
        self.read_failures = 0
        self.reconnects = 0
        self.state = "starting"
        self.last_error = ""
        self.description = ""

    def stop(self) -> None:
        self.stop_event.set()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopped."""
        return self.stop_event.wait(seconds)

    def run(self) -> None:
        backoff = self.cfg.reconnect_initial_s
        source: Optional[Source] = None
        while not self.stop_event.is_set():
            if source is None:
                try:
                    source = make_source(self.cfg)
                    self.description = source.description
                    source.open()
                    if self.state in ("failed", "reconnecting"):
                        self.reconnects += 1
                        self.on_recover()
                    self.state = "running"
                    backoff = self.cfg.reconnect_initial_s
                    log.info("capture: opened %s (%.1f fps)", source.description, source.native_fps)
                except SourceError as exc:
                    source = None
                    self._fail(str(exc), backoff)
                    if self._sleep(backoff):
                        break
                    backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                    continue
            self._stream(source)
            if self.stop_event.is_set():
                break
            # _stream returned: the source failed or ended without looping.
            source.close()
            source = None
            if self._sleep(backoff):
                break
            backoff = min(backoff * 2, self.cfg.reconnect_max_s)
        if source is not None:
            source.close()
        self.state = "stopped"

    def _fail(self, message: str, retry_in: float) -> None:
        self.read_failures += 1
        self.state = "reconnecting"
        self.last_error = message
        log.warning("capture: %s; retrying in %.1f s", message, retry_in)
        self.on_error(message)

    def _stream(self, source: Source) -> None:
        fps = self.cfg.fps or (source.native_fps if source.finite and self.cfg.realtime else 0.0)
        period = 1.0 / fps if fps > 0 else 0.0
        next_due = time.perf_counter()
        while not self.stop_event.is_set():
            t0 = time.perf_counter()
            try:
                image = source.read()
            except SourceError as exc:
                if source.finite and self.cfg.loop and getattr(source, "rewind", None) and source.rewind():
                    try:
                        image = source.read()
                    except SourceError as exc2:
                        self._fail(str(exc2), self.cfg.reconnect_initial_s)
                        return
                else:
                    if source.finite and not self.cfg.loop:
                        self.state = "ended"
                        log.info("capture: %s ended", source.description)
                        self.stop_event.wait()
                        return
                    self._fail(str(exc), self.cfg.reconnect_initial_s)
                    return
            t1 = time.perf_counter()
            for problem in source.take_problems():
                log.warning("capture: %s", problem)
                self.on_error(problem)
            self.frame_count += 1
            frame = Frame(self.frame_count, image, time.time(), t0, capture_ms=(t1 - t0) * 1000,
                          depth=source.take_depth())
            if self.prepare is not None:
                frame.prepared = self.prepare(image)
                frame.prepare_ms = (time.perf_counter() - t1) * 1000
            # Files in non-realtime mode wait for the consumer (lossless benchmark); live sources never wait.
            self.slot.put(frame, wait=source.finite and not self.cfg.realtime, timeout=1.0)
            if period:
                next_due += period
                delay = next_due - time.perf_counter()
                if delay > 0:
                    if self._sleep(delay):
                        return
                else:
                    next_due = time.perf_counter()
