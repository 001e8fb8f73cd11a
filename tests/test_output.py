"""The output chain (daemon/output.py): step order, what is published, and positions kept with their detections."""

from types import SimpleNamespace

import numpy as np

from daemon import output
from daemon.config import Config
from daemon.depth import Locate
from daemon.pipeline import Daemon
from daemon.vision import Detection


class _Frame:
    def __init__(self, depth=None):
        self.image = np.zeros((480, 640, 3), np.uint8)
        self.frame_id, self.captured_at, self.t_capture = 7, 1.0, 0.0
        self.capture_ms, self.prepare_ms, self.depth = 0.5, 1.0, depth


class _Result:
    def __init__(self, frame):
        self.frame, self.infer_ms = frame, 10.0
        self.detector = SimpleNamespace(bundle=SimpleNamespace(name="m", version="v"), backend="openvino",
                                        runtime=SimpleNamespace(precision="int8"))


def _out(candidates, depth=None):
    out = output.FrameOutput(_Result(_Frame(depth)))
    out.candidates = candidates
    return out


def test_the_chain_reads_as_the_path_a_frame_takes():
    names = [type(step).__name__ for step in Daemon(Config())._output_chain()]
    assert names == ["Decode", "Track", "Select", "Locate", "Compose", "MqttSink", "MetricsSink", "LiveViewSink",
                     "ModelLifecycle", "FieldCapture"]


def test_select_publishes_confident_detections_of_the_wanted_classes():
    cfg = Config.model_validate({"detect": {"confidence": 0.5, "classes": ["ripe", "half_ripe"]}})
    out = _out([Detection("ripe", 0, 0.9, (0, 0, 10, 10)), Detection("ripe", 0, 0.3, (5, 5, 9, 9)),
                Detection("unripe", 2, 0.95, (1, 1, 4, 4)), Detection("half_ripe", 1, 0.5, (2, 2, 8, 8))])
    out.all_ids = [4, 5, 6, 7]
    output.Select()(out, cfg)
    assert out.keep == [0, 3]
    assert [d.class_name for d in out.detections] == ["ripe", "half_ripe"] and out.track_ids == [4, 7]


def test_locate_writes_positions_beside_their_detections_only_with_depth():
    cfg = Config()
    dets = [Detection("ripe", 0, 0.9, (100, 100, 140, 140)), Detection("ripe", 0, 0.1, (300, 300, 340, 340))]
    for depth, expect in ((None, None), ("has-depth", "xyz")):
        out = _out(list(dets))
        out.keep = [0]
        if depth:
            from daemon.depth import DepthMap, Intrinsics

            intr = Intrinsics(width=640, height=480, fx=600.0, fy=600.0, ppx=320.0, ppy=240.0)
            out.result.frame.depth = DepthMap(np.full((480, 640), 800, np.uint16), 1.0, intr)
        output.Locate(lambda: Locate(None))(out, cfg)
        output.Compose()(out, cfg)
        body = out.payload["detections"]
        assert len(body) == 1 and out.payload["schema"] == output.SCHEMA_VERSION
        if expect is None:
            assert "xyz_mm" not in body[0]  # a source without depth publishes exactly what it did before
        else:
            x, y, z = body[0]["xyz_mm"]
            assert abs(z - 800) < 1 and abs(x - (120 - 320) / 600 * 800) < 2 and abs(y - (120 - 240) / 600 * 800) < 2


def test_commands_web_and_harvest_do_not_import_the_pipeline():
    """They talk to the narrow interfaces in daemon/control.py: no import circle through pipeline.py."""
    import ast

    from tests.conftest import REPO

    for name in ("commands", "web", "harvest", "output", "control"):
        tree = ast.parse((REPO / "daemon" / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "daemon.pipeline" not in imported, name
