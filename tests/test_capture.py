"""Capture sources and the capture thread on real files: MP4 decoding, image folders, failures and backoff."""

import sys
import time
import types

import cv2
import numpy as np
import pytest

from daemon import capture
from daemon.capture import CaptureThread, ImageFolderSource, SourceError, make_source
from daemon.config import SAMPLE_CLIP, SourceConfig
from daemon.handoff import LatestSlot


def test_sample_clip_decodes():
    src = make_source(SourceConfig(uri="sample"))
    src.open()
    frame = src.read()
    assert frame.shape == (640, 640, 3) and src.native_fps == pytest.approx(10.0)
    src.close()


def test_uri_forms_pick_the_right_source(tmp_path):
    assert isinstance(make_source(SourceConfig(uri=str(tmp_path))), ImageFolderSource)
    assert make_source(SourceConfig(uri="/dev/video3")).api == cv2.CAP_V4L2
    assert make_source(SourceConfig(uri="2")).target == 2
    assert make_source(SourceConfig(uri="rtsp://u:p@cam/stream")).api == cv2.CAP_FFMPEG
    assert "password" not in make_source(SourceConfig(uri="rtsp://user:password@cam/s")).description
    gst = "nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink"
    assert make_source(SourceConfig(uri=gst)).api == cv2.CAP_GSTREAMER


def test_image_folder_reads_in_order_and_reports_bad_files(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), np.full((8, 8, 3), i * 50, np.uint8))
    (tmp_path / "3.jpg").write_bytes(b"not a jpeg")
    src = ImageFolderSource(tmp_path, fps=0)
    src.open()
    means = [int(src.read().mean()) for _ in range(3)]
    assert means[0] < means[1] < means[2] and src.take_problems() == []
    with pytest.raises(SourceError, match="end of image folder"):  # 3.jpg is skipped, not a reason to stop
        src.read()
    assert len(src.take_problems()) == 1 and src.take_problems() == []  # said once
    src.rewind()
    assert int(src.read().mean()) == means[0]


def test_a_folder_whose_first_image_is_empty_plays_the_rest_and_one_of_nothing_says_so(tmp_path):
    (tmp_path / "0.jpg").write_bytes(b"")
    cv2.imwrite(str(tmp_path / "1.jpg"), np.full((8, 8, 3), 99, np.uint8))
    src = ImageFolderSource(tmp_path, fps=0)
    src.open()
    assert int(src.read().mean()) == 99 and "0.jpg (0 bytes" in src.take_problems()[0]
    (tmp_path / "1.jpg").write_bytes(b"")
    src = ImageFolderSource(tmp_path, fps=0)
    src.open()
    with pytest.raises(SourceError, match="none decodes"):
        src.read()


def test_missing_file_error_names_it(tmp_path):
    with pytest.raises(SourceError, match="nothing.mp4"):
        make_source(SourceConfig(uri=str(tmp_path / "nothing.mp4"))).open()


def test_capture_keeps_newest_and_counts_drops():
    slot = LatestSlot()
    t = CaptureThread(SourceConfig(uri=str(SAMPLE_CLIP), fps=100), slot)  # a live-like source
    t.start()
    time.sleep(1.0)  # nobody consumes: frames replace each other
    frame = slot.get(timeout=1)
    t.stop()
    t.join(5)
    assert frame is not None and frame.frame_id > 1
    assert slot.dropped >= frame.frame_id - 2


def test_capture_loops_a_file_and_prepares_frames(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.zeros((4, 6, 3), np.uint8))
    slot = LatestSlot()
    t = CaptureThread(SourceConfig(uri=str(tmp_path), fps=50), slot, prepare=lambda im: im.shape)
    t.start()
    ids = []
    for _ in range(5):
        f = slot.get(timeout=2)
        ids.append(f.frame_id)
        assert f.prepared == (4, 6, 3)
    t.stop()
    t.join(5)
    assert ids == sorted(ids) and ids[-1] >= 5 and t.state in ("running", "stopped")


def test_failing_source_backs_off_exponentially(tmp_path):
    errors = []
    cfg = SourceConfig(uri=str(tmp_path / "missing.mp4"), reconnect_initial_s=0.05, reconnect_max_s=0.4)
    t = CaptureThread(cfg, LatestSlot(), on_error=lambda m: errors.append((time.monotonic(), m)))
    t.start()
    time.sleep(1.6)
    t.stop()
    t.join(5)
    gaps = [b[0] - a[0] for a, b in zip(errors, errors[1:])]
    assert "missing.mp4" in errors[0][1] and t.state == "stopped"
    assert 4 <= len(errors) <= 10  # 0.05, 0.1, 0.2, 0.4, 0.4 ... not a busy loop
    assert gaps[0] < gaps[-1] and max(gaps) < 0.8


class FakePicamera2:
    """A fake of picamera2.Picamera2 (this machine has no Pi camera). A run on a real Pi must confirm that
    `source.uri: auto` picks the CSI camera and that frames arrive in BGR order at the configured size."""

    def __init__(self):
        self.started = False

    @staticmethod
    def global_camera_info():
        return [{"Model": "imx708", "Num": 0}]

    def create_video_configuration(self, main, controls, buffer_count):
        self.size = main["size"]
        return {"main": main}

    def configure(self, cfg):
        self.cfg = cfg

    def start(self):
        self.started = True

    def capture_array(self, name):
        w, h = self.size
        return np.zeros((h, w, 3), np.uint8)

    def stop(self):
        self.started = False

    def close(self):
        pass


def test_picamera2_source_with_fake_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    assert capture.resolve_auto(SourceConfig()) == "picamera2"
    src = make_source(SourceConfig(uri="auto", width=320, height=240))
    src.open()
    assert src.read().shape == (240, 320, 3)
    src.close()


def test_auto_without_cameras_is_an_error_never_the_sample_clip(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails like on a PC
    monkeypatch.setattr(capture.glob, "glob", lambda pattern: [])
    with pytest.raises(capture.SourceError, match="no camera found.*picamera2 does not import.*no /dev/video"):
        capture.resolve_auto(SourceConfig())
    assert make_source(SourceConfig(uri="sample")).description.endswith(SAMPLE_CLIP.name)
