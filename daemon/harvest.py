"""Harvest targets for the arm: ByteTrack tracks, debounced ripe targets, claim/picked/failed, pixel→arm mapping."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from daemon.config import CalibrationConfig, TargetsConfig, TrackingConfig
from daemon.control import CommandError, parse_request
from daemon.vision import Detection

log = logging.getLogger(__name__)


class TrackingUnavailable(Exception):
    pass


def make_bytetrack(cfg: TrackingConfig, fps: float):
    """supervision's ByteTrack (imported only when tracking is on). install.sh installs supervision with --no-deps:
    its wheel asks for opencv-python, which would clash with the headless OpenCV the daemon uses."""
    try:
        import supervision as sv
    except ImportError as exc:
        raise TrackingUnavailable(f"tracking needs the supervision package ({exc})") from None
    fps = max(1.0, fps)
    tracker = sv.ByteTrack(track_activation_threshold=cfg.activation_threshold,
                           minimum_matching_threshold=cfg.match_threshold,
                           lost_track_buffer=max(1, int(round(cfg.lost_after_s * fps))), frame_rate=int(round(fps)),
                           minimum_consecutive_frames=1)
    return tracker, sv


@dataclass
class Track:
    track_id: int
    first_seen: float
    last_seen: float
    box: tuple
    class_name: str
    confidence: float
    hits: int = 0
    classes: deque = field(default_factory=lambda: deque(maxlen=30))
    ripeness: float = 0.0  # EMA of "observed as a target class"
    target_streak: int = 0  # consecutive frames observed as a target class
    target_since: Optional[float] = None
    state: str = "tracking"  # tracking | available | claimed | picked | suppressed
    claimed_at: float = 0.0
    last_announced: float = float("-inf")

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return ((x1 + x2) / 2, (y1 + y2) / 2)


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Calibration:
    """Maps frame pixels to arm-plane millimetres through a homography."""

    def __init__(self, matrix: np.ndarray, rms_px_error: Optional[float] = None):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.rms_error = rms_px_error

    @classmethod
    def from_config(cls, cfg: CalibrationConfig) -> Optional[Calibration]:
        if cfg.homography is not None:
            return cls(np.array(cfg.homography))
        if cfg.points:
            pixel = np.array([p["pixel"] for p in cfg.points], dtype=np.float64)
            arm = np.array([p["arm"] for p in cfg.points], dtype=np.float64)
            return fit_homography(pixel, arm)
        return None

    def to_arm(self, u: float, v: float) -> tuple[float, float]:
        p = self.matrix @ np.array([u, v, 1.0])
        return (float(p[0] / p[2]), float(p[1] / p[2]))


def fit_homography(pixel: np.ndarray, arm: np.ndarray) -> Calibration:
    """Least-squares homography from ≥ 4 pairs (OpenCV), with the RMS reprojection error in millimetres."""
    import cv2

    if len(pixel) < 4:
        raise ValueError("need at least 4 point pairs")
    matrix, _ = cv2.findHomography(pixel, arm, 0)
    if matrix is None:
        raise ValueError("the point pairs are degenerate (collinear?)")
    projected = cv2.perspectiveTransform(pixel.reshape(-1, 1, 2), matrix).reshape(-1, 2)
    rms = float(np.sqrt(((projected - arm) ** 2).sum(axis=1).mean()))
    return Calibration(matrix, rms)


class Harvest:
    """Tracks detections frame by frame and decides which tomatoes to offer the arm; thread-safe."""

    def __init__(self, tracking: TrackingConfig, targets: TargetsConfig, calibration: CalibrationConfig,
                 fps: float = 10.0):
        self.tracking_cfg = tracking
        self.cfg = targets
        self.calibration = Calibration.from_config(calibration)
        self.tracker, self.sv = make_bytetrack(tracking, fps)
        self.fps = fps
        self.observe_confidence = 0.25  # weaker detections keep a track alive but say nothing about ripeness
        self.tracks: dict[int, Track] = {}
        self.thumbnail: Optional[np.ndarray] = None
        self.scene_cuts = 0
        self.id_offset = 0  # track ids stay unique across tracker restarts (the arm must never see one reused)
        self.max_id = 0
        self.picked_places: list[tuple[tuple, float]] = []  # (box, when) of picked tomatoes
        self.picked_ids: deque[int] = deque(maxlen=10_000)  # picked is final, even after the track has ended
        self.lock = threading.Lock()
        self.announced = 0
        self.withdrawn = 0

    # ---- per frame ------------------------------------------------------------------------------------------------
    def scene_cut(self, image: np.ndarray) -> bool:
        """True when this frame shows a different view from the last one (a 32×32 grey thumbnail changed a lot)."""
        import cv2

        if not self.tracking_cfg.scene_cut_threshold:
            return False
        thumb = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
        previous, self.thumbnail = self.thumbnail, thumb.astype(np.int16)
        if previous is None:
            return False
        return float(np.abs(self.thumbnail - previous).mean()) > self.tracking_cfg.scene_cut_threshold

    def _restart(self, now: float) -> list[dict]:
        """The view jumped: every track ends (targets withdrawn) and positions of past picks mean nothing now."""
        out = []
        for t in self.tracks.values():
            if t.state in ("available", "claimed"):
                out.append(self._message(t, now, "lost"))
                self.withdrawn += 1
        self.tracks.clear()
        self.picked_places.clear()
        self.tracker, _ = make_bytetrack(self.tracking_cfg, self.fps)
        self.id_offset = self.max_id
        self.scene_cuts += 1
        return out

    def update(self, detections: list[Detection], captured_at: float, frame_id: Optional[int] = None,
               image: Optional[np.ndarray] = None) -> tuple[list[Optional[int]], list[dict]]:
        """Assign track ids to this frame's detections; return (ids in detection order, target messages)."""
        ids: list[Optional[int]] = [None] * len(detections)
        with self.lock:
            withdrawn = self._restart(captured_at) if image is not None and self.scene_cut(image) else []
            if detections:
                d = self.sv.Detections(
                    xyxy=np.array([x.box for x in detections], dtype=np.float32),
                    confidence=np.array([x.confidence for x in detections], dtype=np.float32),
                    class_id=np.array([x.class_id for x in detections], dtype=int),
                    data={"index": np.arange(len(detections))})
            else:
                d = self.sv.Detections.empty()
            tracked = self.tracker.update_with_detections(d)
            seen = set()
            for k in range(len(tracked)):
                index = int(tracked.data["index"][k]) if "index" in tracked.data else k
                tid = int(tracked.tracker_id[k]) + self.id_offset
                self.max_id = max(self.max_id, tid)
                ids[index] = tid
                seen.add(tid)
                self._observe(tid, detections[index], captured_at)
            messages = withdrawn + self._decide(captured_at, seen)
        for m in messages:
            m["frame_id"] = frame_id
        return ids, messages

    def _observe(self, tid: int, det: Detection, now: float) -> None:
        t = self.tracks.get(tid)
        if t is None:
            t = Track(tid, now, now, det.box, det.class_name, det.confidence)
            t.classes = deque(maxlen=self.tracking_cfg.history)
            if self._near_picked(det.box, now):
                t.state = "suppressed"  # the tomato just picked here, seen again after an occlusion
            self.tracks[tid] = t
        t.last_seen, t.box = now, det.box
        if det.confidence < self.observe_confidence:
            return
        t.class_name, t.confidence = det.class_name, det.confidence
        t.hits += 1
        t.classes.append(det.class_name)
        is_target = det.class_name in self.cfg.classes
        a = self.tracking_cfg.smoothing
        t.ripeness = (1 - a) * t.ripeness + a * (1.0 if is_target else 0.0) if t.hits > 1 else float(is_target)
        if is_target:
            t.target_streak += 1
            t.target_since = t.target_since or now
        else:
            t.target_streak, t.target_since = 0, None

    def _near_picked(self, box, now) -> bool:
        """A new track over the place of a recent pick is that tomato seen again (after an occlusion)."""
        self.picked_places = [p for p in self.picked_places if now - p[1] <= self.cfg.picked_window_s]
        return any(box_iou(box, picked) >= self.cfg.picked_iou for picked, _ in self.picked_places)

    def _decide(self, now: float, seen: set) -> list[dict]:
        cfg = self.cfg
        out = []
        lost_after = self.tracking_cfg.lost_after_s
        for tid in list(self.tracks):
            t = self.tracks[tid]
            if tid not in seen and now - t.last_seen > lost_after:
                if t.state in ("available", "claimed"):
                    out.append(self._message(t, now, "lost"))
                    self.withdrawn += 1
                del self.tracks[tid]
                continue
            if t.state == "claimed" and now - t.claimed_at > cfg.claim_timeout_s:
                t.state = "available"  # the arm went quiet: offer it again
                t.last_announced = float("-inf")
            if t.state == "tracking" and self._qualifies(t, now):
                t.state = "available"
            if t.state == "available" and tid in seen:
                if not self._qualifies(t, now):
                    t.state = "tracking"
                    out.append(self._message(t, now, "lost"))
                    self.withdrawn += 1
                elif now - t.last_announced >= cfg.reannounce_ms / 1000:
                    t.last_announced = now
                    out.append(self._message(t, now, "available"))
                    self.announced += 1
        return out

    def _qualifies(self, t: Track, now: float) -> bool:
        cfg = self.cfg
        return (t.target_streak >= cfg.min_frames and t.target_since is not None
                and (now - t.target_since) * 1000 >= cfg.min_age_ms and t.confidence >= cfg.min_confidence
                and t.ripeness >= cfg.min_score)

    def _message(self, t: Track, now: float, state: str) -> dict:
        x1, y1, x2, y2 = t.box
        msg = {"schema": 2, "state": state, "track_id": t.track_id, "class": t.class_name,
               "confidence": round(t.confidence, 4), "ripeness": round(t.ripeness, 3),
               "box": [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)],
               "center": [round(t.center[0], 1), round(t.center[1], 1)],
               "age_ms": round((now - t.first_seen) * 1000, 1), "hits": t.hits,
               "captured_at": round(t.last_seen, 4), "expires_at": round(t.last_seen + self.cfg.valid_ms / 1000, 4)}
        if self.calibration is not None:
            ax, ay = self.calibration.to_arm(*t.center)
            msg["arm_xy"] = [round(ax, 1), round(ay, 1)]
        return msg

    # ---- arm protocol ---------------------------------------------------------------------------------------------
    def arm_event(self, action: str, track_id, now: Optional[float] = None) -> dict:
        """claim / picked / failed from the arm; returns the acknowledgement body."""
        now = time.time() if now is None else now
        if not isinstance(track_id, int) or isinstance(track_id, bool):
            return {"ok": False, "error": "track_id must be an integer"}
        with self.lock:
            t = self.tracks.get(track_id)
            if action == "claim":
                if t is None or t.state not in ("available", "claimed"):
                    return {"ok": False, "track_id": track_id,
                            "error": f"track {track_id} is not an available target ({t.state if t else 'unknown'})"}
                if t.state == "claimed":
                    return {"ok": False, "track_id": track_id, "error": f"track {track_id} is already claimed"}
                t.state, t.claimed_at = "claimed", now
                return {"ok": True, "track_id": track_id, "state": "claimed",
                        "until": round(now + self.cfg.claim_timeout_s, 3)}
            if action == "picked":
                if track_id in self.picked_ids:  # a duplicate (QoS 1 redelivery, a retry): same answer again
                    return {"ok": True, "track_id": track_id, "state": "picked", "duplicate": True}
                if t is None:
                    return {"ok": False, "track_id": track_id, "error": f"track {track_id} is unknown"}
                # picked without a claim is accepted: the fruit is gone either way, and refusing the report would
                # get it offered again; the reply says whether it had been claimed
                claimed = t.state == "claimed"
                t.state = "picked"
                self.picked_ids.append(track_id)
                self.picked_places.append((t.box, now))
                return {"ok": True, "track_id": track_id, "state": "picked", "claimed": claimed}
            if action == "failed":
                if track_id in self.picked_ids:
                    return {"ok": False, "track_id": track_id, "state": "picked",
                            "error": f"track {track_id} was already reported picked; picked is final, so this "
                                     "failed is refused and the target is not offered again"}
                if t is None:
                    return {"ok": False, "track_id": track_id, "error": f"track {track_id} is unknown"}
                t.state, t.last_announced = "tracking", float("-inf")  # qualifies again on the next frame
                return {"ok": True, "track_id": track_id, "state": "available-again"}
        return {"ok": False, "error": f"unknown arm action {action!r}"}

    def counts(self) -> dict:
        with self.lock:
            states: dict[str, int] = {}
            for t in self.tracks.values():
                states[t.state] = states.get(t.state, 0) + 1
            return {"tracks": len(self.tracks), "announced": self.announced, "withdrawn": self.withdrawn,
                    "scene_cuts": self.scene_cuts, **states}


ARM_ACTIONS = ("claim", "picked", "failed")


def arm_request(harvest: Optional[Harvest], action: str, payload: bytes) -> dict:
    """One arm message (arm/<action>, body {"track_id": N, "id"?: …}) → the body of its arm/<action>/result."""
    try:
        body = parse_request(payload)
    except CommandError as exc:
        return {"ok": False, "error": f'{exc} (expected a JSON object like {{"track_id": 17}})'}
    reply = (harvest.arm_event(action, body.get("track_id")) if harvest
             else {"ok": False, "error": "targets are off (tracking unavailable)"})
    if "id" in body:
        reply["id"] = body["id"]
    return reply
