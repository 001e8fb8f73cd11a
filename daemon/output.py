"""The output stage as a chain of steps: what happens to one frame's inference result, in order, one object each."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Optional

from daemon.config import Config

SCHEMA_VERSION = 2  # detections, targets and stats messages (2: xyz_mm / arm_xyz from depth)


def detection_payload(frame, detections: list, detector, latency_ms: dict, published_at: float,
                      track_ids: Optional[list] = None) -> dict:
    """The `detections` message body; see README for an example."""
    h, w = frame.image.shape[:2]
    return {
        "schema": SCHEMA_VERSION,
        "frame_id": frame.frame_id,
        "captured_at": round(frame.captured_at, 4),
        "published_at": round(published_at, 4),
        "image": {"width": w, "height": h},
        "model": {"name": detector.bundle.name, "version": detector.bundle.version},
        "backend": detector.backend,
        "precision": detector.runtime.precision,
        "latency_ms": {k: round(v, 2) for k, v in latency_ms.items()},
        "detections": [d.to_json(w, h, track_ids[i] if track_ids else None) for i, d in enumerate(detections)],
    }


@dataclass
class FrameOutput:
    """One frame on its way out: each step reads what the steps before it wrote."""

    result: Any  # pipeline.Result: frame, raw output, letterbox, detector, inference time
    started: float = field(default_factory=time.perf_counter)
    candidates: list = field(default_factory=list)  # every box above the tracker's floor
    all_ids: Optional[list] = None  # track id per candidate (None without tracking)
    targets: list = field(default_factory=list)  # target messages for the arm
    keep: list = field(default_factory=list)  # indices of the candidates that are published
    located: Any = None  # depth.Located, or None for a source without depth
    latency: dict = field(default_factory=dict)
    payload: Optional[dict] = None
    published_at: float = 0.0
    postprocessed: float = 0.0  # perf_counter when the frame's content was settled (before any sink)

    # read by Compose and every sink: built once per frame, after Select has set `keep`
    @cached_property
    def detections(self) -> list:
        return [self.candidates[i] for i in self.keep]

    @cached_property
    def track_ids(self) -> Optional[list]:
        return [self.all_ids[i] for i in self.keep] if self.all_ids is not None else None


class Decode:
    """Raw head output → boxes in frame pixels after NMS, down to the tracker's low-confidence floor."""

    def __init__(self, harvest: Callable[[], Any]):
        self.harvest = harvest

    def __call__(self, out: FrameOutput, cfg: Config) -> None:
        r = out.result
        tracking = self.harvest() is not None
        floor = min(cfg.detect.confidence, cfg.tracking.low_confidence) if tracking else cfg.detect.confidence
        out.candidates = r.detector.postprocess(r.output, r.lb, floor, cfg.detect.iou, cfg.detect.max_detections,
                                                cfg.detect.agnostic_nms)


class Track:
    """Track ids and harvest targets (harvest.py, with the arm protocol beside it)."""

    def __init__(self, harvest: Callable[[], Any]):
        self.harvest = harvest

    def __call__(self, out: FrameOutput, cfg: Config) -> None:
        harvest = self.harvest()
        if harvest is None:
            return
        # the tracker also sees weak detections (ByteTrack's second stage); only confident ones are published
        harvest.observe_confidence = cfg.detect.confidence
        frame = out.result.frame
        out.all_ids, out.targets = harvest.update(out.candidates, frame.captured_at, frame.frame_id, frame.image)


class Select:
    """Which candidates are published: confident ones of the configured classes."""

    def __call__(self, out: FrameOutput, cfg: Config) -> None:
        out.keep = [i for i, d in enumerate(out.candidates) if d.confidence >= cfg.detect.confidence
                    and (not cfg.detect.classes or d.class_name in cfg.detect.classes)]


class Locate:
    """3D positions from the frame's depth (depth.Locate). After tracking: a track keeps its last position while it
    is seen only weakly, and targets carry their track's position."""

    def __init__(self, locate: Callable[[], Any]):
        self.locate = locate

    def __call__(self, out: FrameOutput, cfg: Config) -> None:
        boxes = [d.box if d.confidence >= cfg.detect.confidence else None for d in out.candidates]
        out.located = self.locate().run(out.result.frame.depth, boxes, out.all_ids)


class Compose:
    """The `detections` message and the per-stage latencies, with positions written in."""

    def __call__(self, out: FrameOutput, cfg: Config) -> None:
        r = out.result
        out.postprocessed = time.perf_counter()
        out.latency = {"capture": r.frame.capture_ms, "preprocess": r.frame.prepare_ms, "inference": r.infer_ms,
                       "postprocess": (out.postprocessed - out.started) * 1000}
        out.published_at = time.time()
        out.latency["total"] = (time.perf_counter() - r.frame.t_capture) * 1000
        out.payload = detection_payload(r.frame, out.detections, r.detector, out.latency, out.published_at,
                                        out.track_ids)
        if out.located is not None:
            out.located.annotate(out.payload["detections"], out.keep, out.targets)


class MqttSink:
    """`detections` and `targets` to the broker (never blocks: the link queues while the broker is away)."""

    def __init__(self, link: Callable[[], Any]):
        self.link = link

    def __call__(self, out: FrameOutput, cfg: Config) -> None:
        link = self.link()
        if link is None:
            return
        link.publish("detections", out.payload, qos=cfg.mqtt.qos)
        if not cfg.targets.enabled:
            return
        t_capture = out.result.frame.t_capture
        for msg in out.targets:
            msg["published_at"] = round(time.time(), 4)
            msg["latency_ms"] = round((time.perf_counter() - t_capture) * 1000, 2)
            # an `available` target is re-announced while valid and expires in valid_ms: as droppable as a
            # detection when the outbox overflows; a withdrawal (`lost`) is kept
            link.publish("targets", msg, qos=cfg.targets.qos, droppable=msg["state"] == "available")


class MetricsSink:
    """Per-stage timings for `stats` and the Prometheus metrics."""

    def __init__(self, stages, metrics):
        self.stages, self.metrics = stages, metrics

    def __call__(self, out: FrameOutput, cfg: Config) -> None:
        out.latency["publish"] = (time.perf_counter() - out.postprocessed) * 1000
        self.stages.add(out.latency)
        self.metrics.observe(out.latency, out.detections, out.targets)


class LiveViewSink:
    """A frame for the browser's live view, only when someone watches and at its own frame rate; the targets for
    its panel, only while someone looks at it."""

    def __init__(self, web: Callable[[], Any], stages, harvest: Callable[[], Any]):
        self.web, self.stages, self.harvest = web, stages, harvest

    def __call__(self, out: FrameOutput, cfg: Config) -> None:
        web = self.web()
        if not web:
            return
        if out.targets and web.board.watched():
            web.board.record(out.targets)
        if web.live.wants_frame():
            harvest = self.harvest()
            states = {tid: (row["state"], row["arm"]) for tid, row in harvest.board().items()} if harvest else {}
            xyz = [d.get("xyz_mm") for d in out.payload["detections"]] if out.payload else None
            distances = [p[2] if p else None for p in xyz] if xyz and any(xyz) else None
            web.live.offer(out.result.frame.image, out.detections, out.track_ids, self.stages.fps(), states,
                           distances)


def run_chain(steps: list, result, cfg: Config) -> FrameOutput:
    out = FrameOutput(result)
    for step in steps:
        step(out, cfg)
    return out
