"""Harvest targets for the arm: ByteTrack tracks, debounced ripe targets, claims by named arms, pixel→arm mapping."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from daemon.config import CalibrationConfig, TargetsConfig, TrackingConfig
from daemon.control import CommandError, parse_request, request_id
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


def bytetrack_settings(cfg: TrackingConfig, fps: float) -> tuple:
    """What the ByteTrack object is built from: only a change here needs a new tracker."""
    return (cfg.activation_threshold, cfg.match_threshold, cfg.lost_after_s, max(1.0, fps))


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
    claimed_by: Optional[str] = None  # the arm_id holding the claim
    last_announced: float = float("-inf")
    raw: Optional[int] = None  # the tracker's id now linked to this track; None while it waits to be re-linked
    failed_at: float = float("-inf")  # when an arm last reported it failed (shown on the operator's panel)
    failed_by: Optional[str] = None

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
    """Tracks detections frame by frame and decides which tomatoes to offer the arms; thread-safe.

    Track ids are ours, not the tracker's: a tracker id is linked to a track, and a track whose tracker id is gone
    (a claimed fruit covered by the gripper, every track after the tracker is rebuilt by a config edit) waits to be
    re-linked to the next new tracker id whose box overlaps it, so its id, claim and picked state carry over. Ids are
    never reused within a run.
    """

    ENDED_KEPT = 1000  # ended tracks remembered, so a late `picked` for one is still accepted

    def __init__(self, tracking: TrackingConfig, targets: TargetsConfig, calibration: CalibrationConfig,
                 fps: float = 10.0):
        self.tracking_cfg = tracking
        self.cfg = targets
        self.calibration = Calibration.from_config(calibration)
        self.tracker, self.sv = make_bytetrack(tracking, fps)
        self.fps = fps
        self.observe_confidence = 0.25  # weaker detections keep a track alive but say nothing about ripeness
        self.tracks: dict[int, Track] = {}
        self.links: dict[int, int] = {}  # tracker id (offset applied) → our track id
        self.ended: OrderedDict[int, Track] = OrderedDict()
        self.thumbnail: Optional[np.ndarray] = None
        self.scene_cuts = 0
        self.id_offset = 0  # tracker ids stay unique across tracker restarts (the arm must never see one reused)
        self.max_id = 0
        self.picked_places: list[tuple[tuple, float]] = []  # (box, when) of picked tomatoes
        self.picked_by: OrderedDict[int, str] = OrderedDict()  # picked is final, even after the track has ended
        self.lock = threading.Lock()
        self.announced = 0
        self.withdrawn = 0
        self.released = 0  # claims released because their arm went offline
        self.events: deque[dict] = deque(maxlen=64)  # for field capture: failed picks, ripe targets lost unclaimed

    def reconfigure(self, tracking: TrackingConfig, targets: TargetsConfig, calibration: CalibrationConfig,
                    fps: float) -> None:
        """A live config edit: tracks, claims and picks carry over; the tracker is rebuilt only if its settings
        changed, and then every track waits to be re-linked by overlap under its old id."""
        calibrated = Calibration.from_config(calibration)  # may raise ValueError: before anything changes
        rebuild = bytetrack_settings(tracking, fps) != bytetrack_settings(self.tracking_cfg, self.fps)
        tracker = make_bytetrack(tracking, fps)[0] if rebuild else None
        with self.lock:
            self.tracking_cfg, self.cfg, self.calibration, self.fps = tracking, targets, calibrated, fps
            if tracker is not None:
                self.tracker, self.id_offset = tracker, self.max_id
                self.links.clear()
                for t in self.tracks.values():
                    t.raw = None
            for t in self.tracks.values():
                if t.classes.maxlen != tracking.history:
                    t.classes = deque(t.classes, maxlen=tracking.history)

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
        for t in list(self.tracks.values()):
            if t.state in ("available", "claimed"):
                out.append(self._message(t, now, "lost"))
                self.withdrawn += 1
            self._end(t)
        self.links.clear()
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
            seen: set[int] = set()
            for k in range(len(tracked)):
                index = int(tracked.data["index"][k]) if "index" in tracked.data else k
                raw = int(tracked.tracker_id[k]) + self.id_offset
                self.max_id = max(self.max_id, raw)
                tid = self.links.get(raw)
                if tid is None or tid not in self.tracks:
                    tid = self._link(raw, detections[index].box, seen)
                ids[index] = tid
                seen.add(tid)
                self._observe(tid, detections[index], captured_at)
            messages = withdrawn + self._decide(captured_at, seen)
        for m in messages:
            m["frame_id"] = frame_id
        return ids, messages

    def _link(self, raw: int, box, seen: set) -> int:
        """A tracker id seen for the first time: the waiting track it overlaps most, or a new track of that id."""
        best, best_iou = None, self.cfg.picked_iou
        for t in self.tracks.values():
            if t.raw is None and t.track_id not in seen:
                iou = box_iou(box, t.box)
                if iou >= best_iou:
                    best, best_iou = t, iou
        tid = best.track_id if best is not None else raw
        if tid in self.tracks:
            self.tracks[tid].raw = raw
        self.links[raw] = tid
        return tid

    def _end(self, t: Track) -> None:
        del self.tracks[t.track_id]
        self.links.pop(t.raw, None)
        self.ended[t.track_id] = t
        while len(self.ended) > self.ENDED_KEPT:
            self.ended.popitem(last=False)

    def _observe(self, tid: int, det: Detection, now: float) -> None:
        t = self.tracks.get(tid)
        if t is None:
            t = Track(tid, now, now, det.box, det.class_name, det.confidence, raw=tid)
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
                if t.state == "claimed" and now - t.claimed_at <= cfg.claim_timeout_s:
                    # the gripper covers the fruit while it cuts: the claim holds, and the track waits to be
                    # re-linked when the fruit is seen again (or picked is reported)
                    self.links.pop(t.raw, None)
                    t.raw = None
                    continue
                if t.state in ("available", "claimed"):
                    out.append(self._message(t, now, "lost"))
                    self.withdrawn += 1
                    if t.state == "available":  # a ripe target nobody took: the model may have lost it
                        self.events.append({"trigger": "lost_ripe", "track_id": tid,
                                            "reason": f"ripe target {tid} lost before any arm claimed it"})
                self._end(t)
                continue
            if t.state == "claimed" and now - t.claimed_at > cfg.claim_timeout_s:
                self._release(t)  # the arm went quiet: offer it again
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

    @staticmethod
    def _release(t: Track) -> None:
        t.state, t.claimed_by, t.last_announced = "available", None, float("-inf")

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
    def arm_event(self, action: str, track_id, arm_id: str, now: Optional[float] = None,
                  reason: Optional[str] = None) -> dict:
        """claim / picked / failed from the arm `arm_id` (`reason`: the arm's words on a failure); returns the
        acknowledgement body."""
        now = time.time() if now is None else now
        if not isinstance(track_id, int) or isinstance(track_id, bool):
            return {"ok": False, "arm_id": arm_id, "error": "track_id must be an integer"}
        with self.lock:
            reply = {"claim": self._claim, "picked": self._picked, "failed": self._failed}[action](track_id, arm_id,
                                                                                                  now)
            if action == "failed" and reply["ok"]:
                self.events.append({"trigger": "failed", "track_id": track_id, "arm_id": arm_id,
                                    "reason": reason or "the arm reported the pick failed"})
        return {"arm_id": arm_id, "track_id": track_id, **reply}

    def take_events(self) -> list[dict]:
        """Failed picks and ripe targets lost unclaimed since the last call (for field capture)."""
        with self.lock:
            events = list(self.events)
            self.events.clear()
        return events

    def _claim(self, track_id: int, arm_id: str, now: float) -> dict:
        t = self.tracks.get(track_id)
        if t is None or t.state not in ("available", "claimed"):
            state = t.state if t else ("picked" if track_id in self.picked_by else "unknown")
            return {"ok": False, "granted": False, "error": f"track {track_id} is not an available target ({state})"}
        if t.state == "claimed":
            if t.claimed_by == arm_id:  # a redelivered claim (QoS 1) or a retry: the same grant again
                return {"ok": True, "granted": True, "state": "claimed", "duplicate": True,
                        "until": round(t.claimed_at + self.cfg.claim_timeout_s, 3)}
            return {"ok": False, "granted": False, "holder": t.claimed_by,
                    "error": f"track {track_id} is already claimed by arm {t.claimed_by}"}
        t.state, t.claimed_at, t.claimed_by = "claimed", now, arm_id
        return {"ok": True, "granted": True, "state": "claimed", "until": round(now + self.cfg.claim_timeout_s, 3)}

    def _picked(self, track_id: int, arm_id: str, now: float) -> dict:
        if track_id in self.picked_by:
            by = self.picked_by[track_id]
            if by == arm_id:  # a duplicate (QoS 1 redelivery, a retry): same answer again
                return {"ok": True, "state": "picked", "duplicate": True}
            return {"ok": False, "state": "picked", "error": f"track {track_id} was already reported picked by "
                                                             f"arm {by}"}
        t = self.tracks.get(track_id) or self.ended.get(track_id)
        if t is None:
            return {"ok": False, "error": f"track {track_id} is unknown"}
        if t.state == "claimed" and t.claimed_by != arm_id and track_id in self.tracks:
            return {"ok": False, "holder": t.claimed_by,
                    "error": f"track {track_id} is claimed by arm {t.claimed_by}, not {arm_id}: only the arm "
                             "holding the claim may report it"}
        # picked without a claim is accepted: the fruit is gone either way, and refusing the report would get it
        # offered again; the reply says whether it had been claimed. A track that ended (its claim lapsed while
        # the fruit was hidden) is still accepted: picked is always remembered.
        claimed = t.state == "claimed" and t.claimed_by == arm_id
        t.state = "picked"
        self.picked_by[track_id] = arm_id
        while len(self.picked_by) > 10_000:
            self.picked_by.popitem(last=False)
        self.picked_places.append((t.box, now))
        return {"ok": True, "state": "picked", "claimed": claimed}

    def _failed(self, track_id: int, arm_id: str, now: float) -> dict:
        if track_id in self.picked_by:
            return {"ok": False, "state": "picked",
                    "error": f"track {track_id} was already reported picked; picked is final, so this failed is "
                             "refused and the target is not offered again"}
        t = self.tracks.get(track_id)
        if t is None:
            why = "has ended (withdrawn: out of view, or the view changed)" if track_id in self.ended else "is unknown"
            return {"ok": False, "error": f"track {track_id} {why}; there is nothing to offer again"}
        if t.state != "claimed" or t.claimed_by != arm_id:
            holder = f"claimed by arm {t.claimed_by}" if t.state == "claimed" else f"not claimed ({t.state})"
            return {"ok": False, "error": f"arm {arm_id} does not hold a claim on track {track_id} ({holder}): "
                                          "only the arm holding the claim may report it failed"}
        self._release(t)
        t.failed_at, t.failed_by = now, arm_id
        if t.raw is not None:
            t.state = "tracking"  # seen: it qualifies again on the next frame
        return {"ok": True, "state": "available-again"}

    def release_arm(self, arm_id: str) -> list[int]:
        """The arm went offline (its last will): every claim it held is offered again at once."""
        with self.lock:
            released = [t.track_id for t in self.tracks.values() if t.state == "claimed" and t.claimed_by == arm_id]
            for tid in released:
                self._release(self.tracks[tid])
            self.released += len(released)
        return released

    FAILED_SHOWN_S = 5.0

    def board(self, now: Optional[float] = None) -> dict[int, dict]:
        """The targets as the operator's panel and overlay show them: available, claimed (by which arm), picked, and
        failed in the last few seconds."""
        now = time.time() if now is None else now
        rows = {}
        with self.lock:
            for t in self.tracks.values():
                state, arm = t.state, t.claimed_by
                if state == "picked":
                    arm = self.picked_by.get(t.track_id)
                elif state in ("tracking", "available") and now - t.failed_at <= self.FAILED_SHOWN_S:
                    state, arm = "failed", t.failed_by
                if state in ("available", "claimed", "picked", "failed"):
                    rows[t.track_id] = {"state": state, "arm": arm, "age_s": round(now - t.first_seen, 1),
                                        "cls": t.class_name, "conf": round(t.confidence, 2)}
        return rows

    def counts(self) -> dict:
        with self.lock:
            states: dict[str, int] = {}
            claims: dict[str, int] = {}
            for t in self.tracks.values():
                states[t.state] = states.get(t.state, 0) + 1
                if t.state == "claimed":
                    claims[t.claimed_by] = claims.get(t.claimed_by, 0) + 1
            return {"tracks": len(self.tracks), "announced": self.announced, "withdrawn": self.withdrawn,
                    "scene_cuts": self.scene_cuts, "released": self.released, "claims_by_arm": claims, **states}


ARM_ACTIONS = ("claim", "picked", "failed")
ARM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ARM_OFFLINE = (b"offline", b'"offline"', b'{"online":false}', b'{"online": false}')


def arm_id_of(body: dict, topic_arm: Optional[str]) -> str:
    """The sending arm's id: required in the body; on a per-arm topic it must be the topic's (the broker's ACL
    can then vouch for it)."""
    arm_id = body.get("arm_id")
    if not isinstance(arm_id, str) or not ARM_ID.fullmatch(arm_id) or arm_id in ARM_ACTIONS:
        raise CommandError(f'"arm_id" is required: 1-64 letters, digits, "_", "." or "-", not one of '
                           f"{', '.join(ARM_ACTIONS)} (got {json.dumps(arm_id)[:40]})")
    if topic_arm is not None and topic_arm != arm_id:
        raise CommandError(f'"arm_id" {arm_id!r} does not match the topic\'s arm {topic_arm!r}')
    return arm_id


def arm_message(harvest: Optional[Harvest], suffix: str, payload: bytes) -> list[tuple[str, dict]]:
    """One message under arm/ (`suffix` is the rest of the topic) → the replies to publish, as (suffix, body).

    arm/<action> and arm/<arm_id>/<action> with {"arm_id": ..., "track_id": N, "id"?: ...} are answered on
    arm/<action>/result (every arm sees who was granted what) and on arm/<arm_id>/result (that arm's own);
    arm/<arm_id>/status "offline" (the arm's last will) releases that arm's claims.
    """
    parts = suffix.split("/")
    topic_arm, action = (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1]) if len(parts) == 2 else (
        None, "")
    if action == "status":
        if topic_arm and harvest is not None and payload.strip().lower() in ARM_OFFLINE:
            released = harvest.release_arm(topic_arm)
            if released:
                log.warning("arm %s went offline: its claims on %s are released", topic_arm, released)
        return []
    if action not in ARM_ACTIONS:  # our own .../result answers, or topics of nobody's
        return []
    arm_id = None
    try:
        body = parse_request(payload)
        arm_id = arm_id_of(body, topic_arm)
    except CommandError as exc:
        reply = {"ok": False, "error": f'{exc} (expected a JSON object like {{"arm_id": "left", "track_id": 17}})'}
        if action == "claim":
            reply["granted"] = False
        rid = request_id(payload)
        body = {"id": rid} if rid is not None else {}
    else:
        reason = body.get("reason") if isinstance(body.get("reason"), str) else None
        reply = (harvest.arm_event(action, body.get("track_id"), arm_id, reason=reason and reason[:300]) if harvest
                 else {"ok": False, "arm_id": arm_id, "error": "targets are off (tracking unavailable)"})
    reply["action"] = action
    if "id" in body:
        reply["id"] = body["id"]
    replies = [(f"arm/{action}/result", reply)]
    if arm_id:
        replies.append((f"arm/{arm_id}/result", reply))
    return replies
