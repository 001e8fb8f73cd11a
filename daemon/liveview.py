"""The operator's live view: legible overlays (state, arm, distance), the side panel's state, and the page itself."""

from __future__ import annotations

import time
from typing import Optional

import cv2
import numpy as np

from daemon.vision import COLOURS

# Box colours (BGR) by target state; other detections keep their class colour (daemon.vision.COLOURS).
# Chosen apart from the class colours (red, orange, green), so a target's state never reads as a ripeness.
STATE_COLOURS = {"available": (255, 191, 0), "claimed": (255, 0, 200), "picked": (160, 160, 160),
                 "failed": (0, 230, 255)}
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_colour(bgr) -> tuple:
    """Black on light backgrounds, white on dark ones (relative luminance), so every label reads."""
    b, g, r = bgr
    return (0, 0, 0) if 0.0722 * b + 0.7152 * g + 0.2126 * r > 140 else (255, 255, 255)


def draw_label(image: np.ndarray, text: str, x: int, y: int, bg) -> None:
    """`text` on a filled box of colour `bg` whose bottom-left is (x, y), kept inside the image."""
    scale, thick = 0.5, 1
    (w, h), base = cv2.getTextSize(text, FONT, scale, thick)
    x = max(0, min(x, image.shape[1] - w - 6))
    y = max(h + base + 4, min(y, image.shape[0]))
    cv2.rectangle(image, (x, y - h - base - 4), (x + w + 6, y), bg, cv2.FILLED)
    cv2.putText(image, text, (x + 3, y - base - 2), FONT, scale, _text_colour(bg), thick, cv2.LINE_AA)


def draw_overlay(image: np.ndarray, detections, track_ids=None, states: Optional[dict] = None,
                 distances_mm: Optional[list] = None, fps: Optional[float] = None) -> np.ndarray:
    """Boxes with a filled label each: track id, class, confidence, distance (depth cameras) and, for a target, its
    state and the arm holding it. `states` maps track id → (state, arm_id or None). Draws on `image`."""
    states = states or {}
    for i, d in enumerate(detections):
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        tid = track_ids[i] if track_ids and track_ids[i] is not None else None
        state, arm = states.get(tid, (None, None))
        colour = STATE_COLOURS.get(state) or COLOURS.get(d.class_name, (255, 255, 255))
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, 3 if state in ("available", "claimed") else 2)
        parts = [f"#{tid}" if tid is not None else "", d.class_name, f"{d.confidence:.2f}"]
        if distances_mm and distances_mm[i] is not None:
            parts.append(f"{distances_mm[i]:.0f} mm")
        if state in STATE_COLOURS:
            parts.append(f"{state} by {arm}" if arm else state)
        draw_label(image, " ".join(p for p in parts if p), x1, y1 - 2, colour)
    if fps is not None:
        draw_label(image, f"{fps:.1f} fps", 4, 24, (40, 40, 40))
    return image


class TargetBoard:
    """The last target message per track, kept only while someone has looked at the panel lately (it costs
    nothing otherwise); the panel merges it with the tracker's claim state."""

    KEEP_S = 5.0  # a lost target stays listed this long

    def __init__(self):
        self.last: dict[int, tuple[float, dict]] = {}
        self.polled_at = float("-inf")

    def watched(self) -> bool:
        return time.monotonic() - self.polled_at < 10.0

    def record(self, messages: list[dict]) -> None:
        now = time.monotonic()
        for m in messages:
            self.last[m["track_id"]] = (now, m)

    def rows(self, tracks: dict[int, dict]) -> list[dict]:
        """Panel rows: the tracker's targets (`tracks`: id → {state, arm, age_s, cls, conf}) with the position their
        last message carried, and targets withdrawn in the last KEEP_S seconds."""
        self.polled_at = now = time.monotonic()
        for tid in [t for t, (at, _) in self.last.items() if now - at > 60]:
            del self.last[tid]
        rows = []
        for tid, row in tracks.items():
            _, msg = self.last.get(tid, (0, {}))
            rows.append({"id": tid, **row, **{k: msg[k] for k in ("arm_xy", "arm_xyz") if k in msg}})
        for tid, (at, msg) in self.last.items():
            if tid not in tracks and msg["state"] == "lost" and now - at <= self.KEEP_S:
                rows.append({"id": tid, "state": "lost", "cls": msg["class"], "conf": round(msg["confidence"], 2),
                             "age_s": round(msg["age_ms"] / 1000, 1),
                             **{k: msg[k] for k in ("arm_xy", "arm_xyz") if k in msg}})
        return sorted(rows, key=lambda r: r["id"])


def panel_state(daemon, board: TargetBoard) -> dict:
    """What the side panel shows, built only when the page asks (about once a second, while someone watches)."""
    det, capture, link, harvest = daemon.detector, daemon.capture, daemon.link, daemon.harvest
    return {
        "device_id": daemon.cfg.device_id, "at": round(time.time(), 2),
        "fps": round(daemon.stages.fps(), 1),
        "latency_ms": {k: v["median"] for k, v in daemon.stages.summary().items()},
        "backend": det.backend if det else None, "precision": det.runtime.precision if det else None,
        "model": {"name": det.bundle.name, "version": det.bundle.version} if det else None,
        "camera": {"state": capture.state if capture else "none",
                   "error": capture.last_error if capture and capture.state != "running" else ""},
        "mqtt": {k: v for k, v in link.describe().items() if k in ("connected", "state", "last_error")}
        if link else None,
        "probation": daemon.lifecycle.probation, "previous_model": (daemon.lifecycle.state.get("previous") or {})
        .get("version"),
        "paused": daemon.paused.is_set(), "paused_by": daemon.paused_by if daemon.paused.is_set() else None,
        "targets": board.rows(harvest.board() if harvest else {}),
        "errors": list(daemon.recent_errors),
    }


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>ripeye · {device}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{background:#111;color:#ddd;font:14px system-ui,sans-serif;margin:12px}}
h3{{margin:0 0 8px}} main{{display:flex;gap:12px;flex-wrap:wrap;align-items:flex-start}}
img{{max-width:100%;border:1px solid #333}} #panel{{min-width:320px;flex:1}}
table{{border-collapse:collapse;width:100%}} td,th{{padding:2px 6px;border-bottom:1px solid #333;text-align:left}}
.s-available{{color:#0bf}} .s-claimed{{color:#c0f}} .s-picked{{color:#999}} .s-failed{{color:#fe0}}
.s-lost{{color:#777;font-style:italic}} .bad{{color:#f66}} .ok{{color:#6c6}}
button{{background:#333;color:#eee;border:1px solid #555;padding:4px 10px;margin:2px;cursor:pointer}}
input{{background:#222;color:#eee;border:1px solid #555;padding:3px}} #errors li{{color:#f99}}
small{{color:#999}}
</style></head><body>
<h3>ripeye · {device}</h3>
<main><div><img id="live" src="/stream.mjpg" alt="live view"></div>
<div id="panel">
<div id="status">loading…</div>
<p><input id="reason" placeholder="reason (shown in /healthz)" size="24">
<button id="pause">Pause</button><button id="resume">Resume</button>
<button id="capture" title="keep this frame for labelling (capture.enabled)">Capture for labelling</button>
<button id="rollback" title="back to the previous model">Roll back model</button>
<a href="/snapshot.jpg" download="snapshot.jpg"><button type="button">Snapshot</button></a></p>
<div id="answer"><small>actions answer here</small></div>
<h4>Targets</h4><table><thead><tr><th>id</th><th>state</th><th>arm</th><th>class</th><th>age</th>
<th>arm position (mm)</th></tr></thead><tbody id="targets"></tbody></table>
<h4>Recent errors</h4><ul id="errors"></ul>
<p><a href="/metrics">metrics</a> · <a href="/healthz">healthz</a> · <a href="/api/state">state</a></p>
</div></main>
<script>
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;",
  '"': "&quot;", "'": "&#39;"}})[c]);
function show(s) {{
  const m = s.model ? `${{esc(s.model.name)}} ${{esc(s.model.version)}}` : "none";
  const link = s.mqtt ? (s.mqtt.connected ? '<span class="ok">connected</span>'
    : `<span class="bad">${{esc(s.mqtt.state)}}: ${{esc(s.mqtt.last_error)}}</span>`) : "off";
  const lat = Object.entries(s.latency_ms || {{}}).map(([k, v]) => `${{esc(k)}} ${{v}}`).join(" · ");
  $("status").innerHTML = `<b class="${{s.paused ? "bad" : "ok"}}">${{s.paused ? "PAUSED" : "running"}}</b>` +
    (s.paused_by ? ` by ${{esc(s.paused_by.command)}}${{s.paused_by.via ? " (" + esc(s.paused_by.via) + ")" : ""}}` +
     (s.paused_by.reason ? `: ${{esc(s.paused_by.reason)}}` : "") : "") +
    `<br>${{s.fps}} fps · ${{esc(s.backend)}} ${{esc(s.precision)}} · model ${{m}}` +
    (s.probation ? ` <b class="bad">on probation</b> until ${{new Date(s.probation.until * 1000).toLocaleTimeString()}}`
     : "") + (s.previous_model ? ` <small>(previous ${{esc(s.previous_model)}})</small>` : "") +
    `<br><small>median ms: ${{lat}}</small>` +
    `<br>camera: <span class="${{s.camera.state === "running" ? "ok" : "bad"}}">${{esc(s.camera.state)}}</span>` +
    ` · mqtt: ${{link}}`;
  $("targets").innerHTML = (s.targets || []).map((t) => `<tr class="s-${{esc(t.state)}}" data-id="${{t.id}}">` +
    `<td>${{t.id}}</td><td>${{esc(t.state)}}</td><td>${{esc(t.arm || "")}}</td><td>${{esc(t.cls)}} ` +
    `${{t.conf}}</td><td>${{t.age_s}} s</td><td>${{esc((t.arm_xyz || t.arm_xy || []).join(", "))}}</td></tr>`).join("");
  $("errors").innerHTML = (s.errors || []).map((e) => `<li>${{esc(e.source)}}: ${{esc(e.message)}}</li>`).join("");
}}
async function poll() {{
  try {{ const r = await fetch("/api/state", {{cache: "no-store"}}); if (r.ok) show(await r.json()); }}
  catch (e) {{ $("status").textContent = "daemon unreachable"; }}
  setTimeout(poll, {poll_ms});
}}
async function command(name, body) {{
  const r = await fetch(`/api/cmd/${{name}}`, {{method: "POST", body: JSON.stringify(body),
    headers: {{"Content-Type": "application/json", "X-Ripeye-Request": "1"}}}});
  const answer = await r.json();
  $("answer").innerHTML = `<small>${{esc(name)}}: ${{answer.ok ? "ok" : "refused: " + esc(answer.error)}}</small>`;
  $("answer").dataset.ok = answer.ok;
}}
$("pause").onclick = () => command("pause", {{reason: $("reason").value}});
$("capture").onclick = () => command("capture", {{note: $("reason").value}});
$("rollback").onclick = () => command("model/rollback", {{reason: $("reason").value || "from the live view"}});
$("resume").onclick = () => command("resume", {{}});
poll();
</script></body></html>
"""
