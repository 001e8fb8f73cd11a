"""Field capture: keep the frames worth labelling (failed picks, uncertain fruit, class flips, ripe targets lost
unclaimed, the operator's choice, a random sample), each with its draft labels and why it was kept, on the device's
disk: a sink of the output chain with its own writer thread, bounded, durable, never in detection's way.

Store layout (rsync-friendly: whole sample folders appear atomically, nothing is ever rewritten in place):

    <capture.dir>/<trigger>/<UTC time>-f<frame id>-<n>/
        image.jpg     the full camera frame (not letterboxed)
        labels.json   {"trigger", "reason"?, "note"?, "track_id"?, "arm_id"?, "frame_id", "captured_at", "model":
                       {"name", "version"}, "image": {"width", "height"}, "detections": [{"class", "confidence",
                       "box": [x1, y1, x2, y2] (frame pixels), "track_id"?}]}
        depth.png     16-bit depth in mm (depth cameras only; labels.json says whether it is registered to the image)

`sample/` holds the random sample, kept apart as unbiased evaluation data.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import random
import shutil
import threading
import time
from collections import OrderedDict, defaultdict, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import cv2

from daemon.durable import fsync_dir

if TYPE_CHECKING:
    from daemon.config import CaptureConfig

log = logging.getLogger(__name__)

TRIGGERS = ("failed", "uncertain", "class_change", "lost_ripe", "operator", "sample")
PARTIAL = ".partial-"


class FieldStore:
    """The samples on disk: durable writes (a folder appears whole or not at all), the size bound, eviction."""

    def __init__(self, root: Path):
        self.root = root
        self.bytes = 0
        self.samples: deque[tuple[Path, int]] = deque()  # oldest first, with their sizes
        self.scan()

    def scan(self) -> None:
        self.bytes, found = 0, []
        for trigger in TRIGGERS:
            folder = self.root / trigger
            if not folder.is_dir():
                continue
            for sample in folder.iterdir():
                if sample.name.startswith(PARTIAL):  # a write a power cut interrupted: never a sample
                    shutil.rmtree(sample, ignore_errors=True)
                    continue
                size = sum(f.stat().st_size for f in sample.iterdir() if f.is_file())
                found.append((sample.name, sample, size))
        found.sort()  # names start with the UTC time: oldest first across triggers
        self.samples = deque((p, s) for _, p, s in found)
        self.bytes = sum(s for _, s in self.samples)

    def write(self, trigger: str, name: str, files: dict[str, bytes]) -> Path:
        """Write one sample folder durably: files into a hidden sibling, fsynced, then renamed into place."""
        folder = self.root / trigger
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{PARTIAL}{name}"
        tmp.mkdir()
        try:
            for fname, data in files.items():
                with open(tmp / fname, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            fsync_dir(tmp)
            final = folder / name
            os.rename(tmp, final)
            fsync_dir(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        size = sum(len(d) for d in files.values())
        self.samples.append((final, size))
        self.bytes += size
        return final

    def evict(self, max_bytes: int) -> int:
        """Remove the oldest samples until the store fits; returns how many went."""
        gone = 0
        while self.bytes > max_bytes and self.samples:
            path, size = self.samples.popleft()
            shutil.rmtree(path, ignore_errors=True)
            self.bytes -= size
            gone += 1
        return gone

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for path, _ in self.samples:
            out[path.parent.name] += 1
        return dict(out)


class FieldCapture:
    """Output-chain sink: decides which frames to keep and hands them to its writer thread (bounded queue: a slow
    disk drops samples, counted, and never slows detection)."""

    QUEUE = 16

    def __init__(self, cfg: Callable[[], CaptureConfig], root: Callable[[], Path], harvest: Callable[[], Any],
                 link: Callable[[], Any], report_error: Callable[..., None]):
        self.cfg, self.root, self.harvest, self.link, self.report_error = cfg, root, harvest, link, report_error
        self.queue: queue.Queue = queue.Queue(maxsize=self.QUEUE)
        self.store: Optional[FieldStore] = None
        self.thread: Optional[threading.Thread] = None
        self.dropped = 0
        self.kept: dict[str, int] = defaultdict(int)
        self.limited: dict[str, int] = defaultdict(int)
        self.recent: dict[str, deque] = defaultdict(deque)  # trigger -> times kept in the last hour
        self.offered: OrderedDict[int, tuple] = OrderedDict()  # track id -> (frame, detections, ids) when offered
        self.classes: dict[int, str] = {}
        self.operator_notes: deque = deque(maxlen=8)
        self.disk_full = False
        self.next_sample = 0.0
        self.seq = 0

    # ---- the chain step ---------------------------------------------------------------------------------------------
    def __call__(self, out, cfg) -> None:
        c = cfg.capture
        if not c.enabled or self.disk_full:
            return
        frame, dets, ids = out.result.frame, out.detections, out.track_ids
        version = (out.result.detector.bundle.name, out.result.detector.bundle.version)
        for m in out.targets:
            if m["state"] == "available" and m["track_id"] not in self.offered:
                self.offered[m["track_id"]] = (frame, dets, ids)
                while len(self.offered) > 64:
                    self.offered.popitem(last=False)
        harvest = self.harvest()
        for event in harvest.take_events() if harvest else []:
            tid = event.get("track_id")
            if event["trigger"] == "failed" and tid in self.offered:
                f0, d0, i0 = self.offered[tid]
                self._keep("failed", f0, d0, i0, version, {**event, "which": "offered"})
            self._keep(event["trigger"], frame, dets, ids, version, {**event, "which": "latest"}
                       if event["trigger"] == "failed" else event)
        while self.operator_notes:
            self._keep("operator", frame, dets, ids, version, {"note": self.operator_notes.popleft()})
        low, high = c.uncertain
        unsure = [i for i, d in enumerate(dets) if low <= d.confidence < high]
        if unsure:
            self._keep("uncertain", frame, dets, ids, version,
                       {"reason": f"{len(unsure)} detection(s) with confidence in [{low}, {high})",
                        "track_id": ids[unsure[0]] if ids else None})
        for i, d in enumerate(dets):
            tid = ids[i] if ids else None
            if tid is None:
                continue
            before = self.classes.get(tid)
            self.classes[tid] = d.class_name
            if before is not None and before != d.class_name:
                self._keep("class_change", frame, dets, ids, version,
                           {"track_id": tid, "reason": f"track {tid} changed from {before} to {d.class_name}"})
        if len(self.classes) > 4096:
            self.classes.clear()
        now = time.time()
        if c.sample_per_hour and now >= self.next_sample:
            if self.next_sample:
                self._keep("sample", frame, dets, ids, version, {"reason": "random sample"})
            self.next_sample = now + random.expovariate(c.sample_per_hour / 3600)

    def note(self, text: str) -> None:
        """cmd/capture: the next frame is kept, with the operator's note."""
        self.operator_notes.append(text)

    def _allowed(self, trigger: str, now: float) -> bool:
        limit = self.cfg().per_hour.get(trigger, 60)
        times = self.recent[trigger]
        while times and now - times[0] > 3600:
            times.popleft()
        if len(times) >= limit:
            self.limited[trigger] += 1
            return False
        times.append(now)
        return True

    def _keep(self, trigger: str, frame, dets, ids, version, extra: dict) -> None:
        if trigger != "operator" and not self._allowed(trigger, time.time()):
            return
        labels = {"trigger": trigger, **{k: v for k, v in extra.items() if k != "trigger" and v is not None},
                  "frame_id": frame.frame_id, "captured_at": round(frame.captured_at, 3),
                  "model": {"name": version[0], "version": version[1]},
                  "image": {"width": frame.image.shape[1], "height": frame.image.shape[0]},
                  "detections": [{"class": d.class_name, "confidence": round(d.confidence, 4),
                                  "box": [round(v, 1) for v in d.box],
                                  **({"track_id": ids[i]} if ids and ids[i] is not None else {})}
                                 for i, d in enumerate(dets)]}
        try:
            self.queue.put_nowait((trigger, frame, labels))
        except queue.Full:
            self.dropped += 1

    # ---- the writer thread ------------------------------------------------------------------------------------------
    def start(self, stop: threading.Event) -> None:
        self.thread = threading.Thread(target=self._run, args=(stop,), name="field-capture", daemon=True)
        self.thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                trigger, frame, labels = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if self.disk_full:  # what was queued before the disk filled up goes unwritten, and unreported
                self.dropped += 1
                continue
            try:
                self._write(trigger, frame, labels)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    self.disk_full = True  # one error, then quiet until the config changes (see reset)
                    self.report_error("capture", f"disk full under {self.root()}: capture stopped, detection goes on "
                                                 "(free space, then edit or re-set `capture`)", key="capture.dir")
                else:
                    self.report_error("capture", f"cannot write a sample under {self.root()}: {exc}", key="capture.dir")
            except Exception as exc:  # never let one bad sample end the thread
                log.exception("capture")
                self.report_error("capture", f"{type(exc).__name__}: {exc}")

    def _write(self, trigger: str, frame, labels: dict) -> None:
        root = self.root()
        if self.store is None or self.store.root != root:
            self.store = FieldStore(root)
        c = self.cfg()
        ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, c.jpeg_quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        files = {"image.jpg": jpeg.tobytes()}
        depth = getattr(frame, "depth", None)
        if depth is not None:  # millimetres, 16-bit (0 = no depth); labels.json says whether it is registered
            mm = (depth.depth.astype("float32") * depth.units_mm).clip(0, 65535).astype("uint16")
            ok, png = cv2.imencode(".png", mm)
            if ok:
                files["depth.png"] = png.tobytes()
                labels["depth"] = {"file": "depth.png", "units": "mm", "registered": depth.registration is None}
        files["labels.json"] = json.dumps(labels, indent=1).encode()  # last: it names the other files
        self.seq += 1
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(frame.captured_at))}-f{frame.frame_id}-{self.seq}"
        path = self.store.write(trigger, name, files)
        self.store.evict(c.max_mb << 20)
        self.kept[trigger] += 1
        link = self.link()
        if link:
            link.publish("capture", {"trigger": trigger, "path": str(path.relative_to(root)),
                                     "frame_id": frame.frame_id, "track_id": labels.get("track_id"),
                                     "bytes": sum(len(d) for d in files.values())}, qos=1)

    def reset(self) -> None:
        """A capture config edit: try the disk again."""
        self.disk_full = False

    def stats(self) -> dict:
        store = self.store
        return {"kept": dict(self.kept), "rate_limited": dict(self.limited), "dropped": self.dropped,
                "stored": store.counts() if store else {}, "mb": round(store.bytes / 2**20, 1) if store else 0.0,
                "disk_full": self.disk_full}
