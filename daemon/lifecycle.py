"""The model's life on the device: install a bundle (download, verify, unpack), try it in shadow on the camera's own
recent frames, switch between two frames, keep it on probation and roll back by itself (or on command); the
retained `model` topic says what is active, what came before and what happened."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import yaml

from daemon import config as config_mod
from daemon.control import CommandError, flag
from daemon.durable import write_durably

if TYPE_CHECKING:
    from daemon.pipeline import Daemon

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SHADOW_EVERY = 10  # past the first few, keep every 10th frame for the shadow run (the camera's own recent view)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, max_bytes: int, limit: str, timeout_s: float = 30.0) -> Path:
    """Fetch url to dest, resuming a `.part` left by an interrupted try (HTTP Range); refuses more than max_bytes
    (`limit` says which limit that is, for the error)."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout_s)  # noqa: S310 (http/https checked by the caller)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the .part is already whole
            part.rename(dest)
            return dest
        raise CommandError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CommandError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    with resp:
        if have and resp.status != 206:  # the server ignored Range: start over
            have = 0
        total = resp.headers.get("Content-Length")
        if total is not None and have + int(total) > max_bytes:
            raise CommandError(f"{url}: {have + int(total)} bytes is over {limit} ({max_bytes} bytes)")
        with open(part, "ab" if have else "wb") as f:
            got = have
            while True:
                chunk = resp.read(1 << 16)  # small reads: a killed download keeps what arrived
                if not chunk:
                    break
                got += len(chunk)
                if got > max_bytes:
                    raise CommandError(f"{url}: over {limit} ({max_bytes} bytes); download stopped")
                f.write(chunk)
    part.rename(dest)
    return dest


def agreement(a: list, b: list, min_iou: float = 0.5) -> float:
    """How far two models' detections on one frame agree: matched pairs (same class, IoU ≥ min_iou) over the larger
    count (1.0 when both found nothing)."""
    from daemon.harvest import box_iou

    if not a and not b:
        return 1.0
    used, matched = set(), 0
    for d in a:
        best = max(((box_iou(d.box, e.box), j) for j, e in enumerate(b) if j not in used and e.class_name
                    == d.class_name), default=(0.0, None))
        if best[1] is not None and best[0] >= min_iou:
            used.add(best[1])
            matched += 1
    return matched / max(len(a), len(b))


class ModelLifecycle:
    """Install, shadow, switch, probation and rollback for one daemon; its own thread watches the probation."""

    def __init__(self, daemon: Daemon):
        self.d = daemon
        self.lock = threading.Lock()
        self.busy = threading.Lock()  # one install or rollback at a time
        self.recent: deque = deque(maxlen=8)  # (image, detections) of every SHADOW_EVERY-th frame
        self.ripe: deque = deque(maxlen=20_000)  # (time, model version, ripe detections) per frame
        self.inference_failures = 0
        self.frames = 0
        self.probation: Optional[dict] = None
        self.state = {"active": None, "previous": None, "history": []}
        self.thread: Optional[threading.Thread] = None

    # ---- places --------------------------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.d.cfg.state_dir).expanduser() / "models"

    def _load_state(self) -> None:
        file = self.root / "state.json"
        try:
            self.state = {**self.state, **json.loads(file.read_text())} if file.is_file() else self.state
        except (OSError, ValueError) as exc:
            self.d.report_error("state", f"{file}: unreadable, starting a new model history ({exc})")

    def _save_state(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_durably(self.root / "state.json", json.dumps(self.state, indent=1))

    # ---- per frame (a step of the output chain) ---------------------------------------------------------------------
    def __call__(self, out, cfg) -> None:
        """Ripe detections per model version (for probation) and a few recent frames (for a shadow run)."""
        self.frames += 1
        version = out.result.detector.bundle.version
        ripe = sum(1 for d in out.detections if d.class_name in cfg.targets.classes)
        self.ripe.append((time.time(), version, ripe))
        if len(self.recent) < self.recent.maxlen or self.frames % SHADOW_EVERY == 0:
            self.recent.append((out.result.frame.image, list(out.detections)))

    # ---- the retained `model` topic -------------------------------------------------------------------------------
    def describe(self) -> dict:
        det = self.d.detector
        active = {"name": det.bundle.name, "version": det.bundle.version, "path": str(det.bundle.root),
                  "backend": det.backend} if det else None
        return {"active": active, "previous": self.state.get("previous"),
                "probation": dict(self.probation) if self.probation else None,
                "history": self.state.get("history", [])[-10:]}

    def publish(self) -> None:
        if self.d.link:
            self.d.link.publish("model", self.describe(), qos=1, retain=True, droppable=False)

    def _event(self, kind: str, **fields) -> None:
        self.state.setdefault("history", []).append({"event": kind, "at": round(time.time(), 3), **fields})
        self.state["history"] = self.state["history"][-50:]
        self._save_state()
        self.publish()

    # ---- commands ------------------------------------------------------------------------------------------------
    def cmd_install(self, req: dict) -> dict:
        url, sha = req.get("url"), req.get("sha256")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise CommandError('"url" must be an http:// or https:// address of a model bundle')
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise CommandError('"sha256" must be the bundle\'s SHA-256 (64 lower-case hex digits)')
        activate = flag(req, "activate", True)
        if not self.busy.acquire(blocking=False):
            raise CommandError("another model install or rollback is running; try again when it is done")
        threading.Thread(target=self._install_job, args=(url, sha, activate), name="model-install",
                         daemon=True).start()
        return {"accepted": True, "url": url, "activate": activate, "topic": self.d.link.topic("model")
                if self.d.link else None}

    def cmd_rollback(self, req: dict) -> dict:
        previous = self.state.get("previous")
        if not previous:
            raise CommandError("nothing to roll back to: no previous model on this device")
        if not self.busy.acquire(blocking=False):
            raise CommandError("a model install is running; try again when it is done")
        try:
            self.rollback("by command" + (f": {req['reason']}" if isinstance(req.get("reason"), str) else ""))
        finally:
            self.busy.release()
        return {"active": self.describe()["active"]}

    # ---- install --------------------------------------------------------------------------------------------------
    def upload(self, stream, length: int, activate: bool, via: str) -> dict:
        """A bundle sent to the live view (POST /api/model/upload): stored, then installed like a download."""
        if not self.busy.acquire(blocking=False):
            raise CommandError("another model install or rollback is running; try again when it is done")
        try:
            cap = min(self.d.cfg.model.max_bundle_mb << 20, shutil.disk_usage(self.root.parent).free - (64 << 20)
                      if self.root.parent.exists() else self.d.cfg.model.max_bundle_mb << 20)
            if length > cap:
                raise CommandError(f"{length} bytes is over model.max_bundle_mb or the free disk space ({cap} bytes)")
            downloads = self.root / "downloads"
            downloads.mkdir(parents=True, exist_ok=True)
            part = downloads / f"upload-{time.monotonic_ns()}.part"
            h, left = hashlib.sha256(), length
            with open(part, "wb") as f:
                while left > 0:
                    chunk = stream.read(min(CHUNK, left))
                    if not chunk:
                        part.unlink(missing_ok=True)
                        raise CommandError(f"upload ended after {length - left} of {length} bytes")
                    h.update(chunk)
                    f.write(chunk)
                    left -= len(chunk)
            sha = h.hexdigest()
            part.rename(downloads / f"{sha}.bundle")
        except BaseException:
            self.busy.release()
            raise
        threading.Thread(target=self._install_job, args=(via, sha, activate), name="model-install",
                         daemon=True).start()
        return {"accepted": True, "sha256": sha, "bytes": length, "activate": activate}

    def _install_job(self, url: str, sha: str, activate: bool) -> None:
        final = None  # the outcome's event, announced once the install slot is free: a client acting on it at once
        try:  # (the next install, a rollback) must not be told that this one is still running
            self._event("installing", url=url, sha256=sha)
            folder, info = self.install(url, sha)
            if activate:
                self._event("installed", version=info.version, path=str(folder))
                report, cand = self.shadow(folder)
                self._event("shadowed", version=info.version, **report)
                final = self.switch(folder, info.version, f"install from {url}", cand, announce=False)
            else:
                final = {"event": "installed", "version": info.version, "path": str(folder)}
        except Exception as exc:  # every refusal: one clear error, the running model untouched
            msg = str(exc) if isinstance(exc, (CommandError, ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
            self.d.report_error("model", f"install of {url} refused: {msg}; still running "
                                         f"{self.describe()['active']['version'] if self.d.detector else 'nothing'}")
            final = {"event": "refused", "url": url, "error": msg}
        finally:
            self.busy.release()
        if final:
            self._event(final.pop("event"), **final)

    def install(self, url: str, sha: str) -> tuple[Path, object]:
        """Download (resumable), check the hash, verify signature and content, check it fits this device's model,
        unpack atomically into state_dir/models/<version>; keep the last model.keep versions."""
        from daemon.bundle import BundleError, unpack_bundle, verify_bundle

        cfg = self.d.cfg.model
        downloads = self.root / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        room = shutil.disk_usage(downloads).free - (64 << 20)  # never fill the disk the daemon's state lives on
        path = downloads / f"{sha}.bundle"
        if not path.exists():
            cap = cfg.max_bundle_mb << 20
            download(url, path, min(cap, max(0, room)), "model.max_bundle_mb" if cap <= room else "the free disk space")
        if _sha256(path) != sha:
            path.unlink(missing_ok=True)
            raise CommandError(f"{url}: SHA-256 does not match the one asked for (truncated or another file)")
        try:
            info = verify_bundle(path, cfg.trusted_keys or None)
            self._fits(info)
            folder = unpack_bundle(path, self.root / info.version, cfg.trusted_keys or None)
        except BundleError as exc:
            raise CommandError(str(exc)) from None
        finally:
            path.unlink(missing_ok=True)
        self._prune()
        return folder, info

    def _fits(self, info) -> None:
        det = self.d.detector
        if det is None:
            return
        if list(info.class_names) != list(det.class_names):
            raise CommandError(f"bundle {info.version} detects {info.class_names}, this device's model "
                               f"{det.class_names}: a model for other classes is not installed")
        sizes = set(info.input_sizes or [info.input_size[0]])
        if self.d.cfg.model.imgsz and self.d.cfg.model.imgsz not in sizes or det.input_size[0] not in sizes:
            raise CommandError(f"bundle {info.version} has input sizes {sorted(sizes)}, this device runs "
                               f"{det.input_size[0]}: not installed")

    def _prune(self) -> None:
        keep = self.d.cfg.model.keep
        protected = {str(Path(p).resolve()) for p in (
            (self.state.get("previous") or {}).get("path"), str(self.d.detector.bundle.root) if self.d.detector
            else None) if p}
        folders = sorted((p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
                          and p.name != "downloads"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in folders[keep:]:
            if str(old.resolve()) not in protected:
                shutil.rmtree(old, ignore_errors=True)

    # ---- shadow ---------------------------------------------------------------------------------------------------
    def shadow(self, folder: Path) -> tuple[dict, object]:
        """The candidate on the backend this board uses, on the camera's recent frames beside the current model:
        latency and agreement; refused when it does not load or breaks model.max_latency_ms. Returns the report and
        the loaded candidate (the switch then swaps it in, loading nothing)."""
        from daemon.detector import NoUsableBackend, load_detector
        from daemon.pipeline import runtime_options

        cfg = self.d.cfg
        try:
            cand = load_detector(folder, cfg.runtime.backend, cfg.model.precision, runtime_options(cfg),
                                 imgsz=cfg.model.imgsz)
        except (NoUsableBackend, FileNotFoundError, ValueError) as exc:
            raise CommandError(f"the candidate does not load here: {str(exc).splitlines()[0]}") from None
        ok = False
        try:
            frames = list(self.recent)
            captured = self._captured()
            latencies, agree = [], []
            for image, current in frames + captured:
                tensor, lb = cand.preprocess(image, cfg.detect.white_balance)
                t0 = time.perf_counter()
                output = cand.infer(tensor)
                latencies.append((time.perf_counter() - t0) * 1000)
                found = cand.postprocess(output, lb, cfg.detect.confidence, cfg.detect.iou, cfg.detect.max_detections,
                                         cfg.detect.agnostic_nms)
                agree.append(agreement(current, found))
            live, kept = agree[:len(frames)], agree[len(frames):]
            report = {"frames": len(frames), "backend": cand.backend, "precision": cand.runtime.precision,
                      "latency_ms": round(statistics.median(latencies), 2) if latencies else None,
                      "current_latency_ms": (self.d.stages.summary().get("inference") or {}).get("median"),
                      "agreement": round(statistics.mean(live), 3) if live else None,
                      "capture_samples": len(captured),
                      "agreement_capture": round(statistics.mean(kept), 3) if kept else None}
            budget = cfg.model.max_latency_ms
            if budget and report["latency_ms"] is not None and report["latency_ms"] > budget:
                raise CommandError(f"the candidate takes {report['latency_ms']} ms per frame here, over "
                                   f"model.max_latency_ms {budget:g}")
            ok = True
        finally:
            if not ok:
                cand.close()
        return report, cand

    def _captured(self, n: int = 8) -> list:
        """The newest field-capture samples (daemon/fieldstore.py), with the drafts the model of the time made:
        frames this camera found hard, for the shadow run too."""
        import cv2

        from daemon.vision import Detection

        root = self.d.capture_dir()
        if not root.is_dir():
            return []
        out = []
        for labels in sorted(root.glob("*/*/labels.json"), key=lambda p: p.parent.name, reverse=True)[:n]:
            try:
                data = json.loads(labels.read_text())
                image = cv2.imread(str(labels.parent / "image.jpg"))
                dets = [Detection(d["class"], -1, d["confidence"], tuple(d["box"])) for d in data["detections"]]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # evicted meanwhile, or not a sample
            if image is not None:
                out.append((image, dets))
        return out

    # ---- switch, probation, rollback ------------------------------------------------------------------------------
    def _use(self, path: str, preloaded=None) -> bool:
        """Run the model at `path` from the next frame on (the old one answers until then), and keep it across
        restarts and file edits (a persisted override of model.path)."""
        d = self.d
        file = config_mod.overrides_file(d.cfg)
        persisted = config_mod.read_yaml(file) if file.is_file() else {}
        persisted = config_mod.merge_patch(persisted, {"model": {"path": path}})
        new = d.cfg.model_copy(update={"model": d.cfg.model.model_copy(update={"path": path})})
        before = d.detector
        try:
            d.apply_config(new, "model lifecycle", preloaded)
        finally:
            if preloaded is not None and d.detector is not preloaded:
                preloaded.close()  # refused or not swapped in: let go of it
        if d.detector is before or d.cfg.model.path != path:
            return False
        write_durably(file, yaml.safe_dump(persisted))
        return True

    def switch(self, folder: Path, version: str, why: str, preloaded=None, announce: bool = True) -> Optional[dict]:
        """Swap the model in (the shadow-loaded candidate when given) and start its probation; the `switched` event
        is published here, or returned for the caller to publish with `announce=False`."""
        old = self.describe()["active"]
        if not self._use(str(folder), preloaded):
            raise CommandError(f"model {version} would not load on the running backend; still running "
                               f"{old['version'] if old else 'nothing'}")
        now = time.time()
        # the old model on the same camera over the last 5 minutes; per frame, so that a slower model, a busy CPU or
        # a camera dropping frames is not taken for a model that stopped finding fruit
        baseline, frames, first = self.ripe_per_frame(old["version"] if old else None, now - 300, now)
        enough = frames >= 10 and now - first >= 10
        with self.lock:
            self.state["previous"] = old
            self.probation = {"version": version, "since": round(now, 3),
                              "until": round(now + self.d.cfg.model.probation_s, 3),
                              "baseline_ripe_per_frame": round(baseline, 3) if enough else None,
                              "failures_at_switch": self.inference_failures}
        event = {"event": "switched", "version": version, "previous": old["version"] if old else None, "why": why}
        if not announce:
            return event
        self._event(event.pop("event"), **event)
        return None

    def rollback(self, why: str) -> None:
        previous = self.state.get("previous")
        if not previous:
            return
        current = self.describe()["active"]
        if not self._use(previous["path"]):
            self.d.report_error("model", f"rollback to {previous['version']} failed: it does not load")
            return
        with self.lock:
            self.probation = None
            self.state["previous"] = current
        self.d.report_error("model", f"rolled back from {current['version'] if current else '?'} to "
                                     f"{previous['version']}: {why}")
        self._event("rolled-back", version=previous["version"], from_version=current["version"] if current else None,
                    why=why)

    def check_probation(self) -> None:
        p = self.probation
        if not p:
            return
        now = time.time()
        failures = self.inference_failures - p["failures_at_switch"]
        if failures >= 3:
            self.rollback(f"{failures} inference failures on probation")
            return
        rate, frames, _ = self.ripe_per_frame(p["version"], p["since"], now)
        p["ripe_per_frame"] = round(rate, 3)
        baseline = p.get("baseline_ripe_per_frame")
        if baseline and now - p["since"] >= min(60.0, self.d.cfg.model.probation_s / 2) and frames >= 10 and \
                rate < self.d.cfg.model.min_ripe_fraction * baseline:
            self.rollback(f"ripe detections collapsed on probation: {rate:.2f} per frame over {frames} frames vs "
                          f"{baseline:.2f} before (below model.min_ripe_fraction "
                          f"{self.d.cfg.model.min_ripe_fraction:g})")
            return
        if now >= p["until"]:
            with self.lock:
                self.probation = None
            self._event("confirmed", version=p["version"], ripe_per_frame=round(rate, 3))

    def ripe_per_frame(self, version: Optional[str], since: float, until: float) -> tuple[float, int, float]:
        """Mean ripe (target-class) detections per frame that `version` made between two times, how many frames,
        and when the first of them was made (`until` when none)."""
        seen = [(t, r) for t, v, r in list(self.ripe) if v == version and since <= t <= until]
        if not seen:
            return 0.0, 0, until
        return sum(r for _, r in seen) / len(seen), len(seen), seen[0][0]

    # ---- thread ---------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._load_state()
        self.thread = threading.Thread(target=self._run, name="model-lifecycle", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.d.stop_event.wait(1.0):
            try:
                if self.probation and self.busy.acquire(blocking=False):
                    try:
                        self.check_probation()
                    finally:
                        self.busy.release()
            except Exception as exc:  # the watch must outlive a bug
                log.exception("model lifecycle")
                self.d.report_error("model", f"lifecycle: {type(exc).__name__}: {exc}")
