"""`ripeye fleet`: the devices under one MQTT prefix, seen and updated from a laptop through the broker they already
run (issue 29 item 6). Nothing home-made past the broker: `ls` reads the devices' retained status, config and model
topics and their stats; `rollout` sends the devices' own `cmd/model/install` and follows their retained `model`
topic; `serve` is a plain static HTTP file server (any other one does as well).

Rollout: the canary set first, then the rest in waves (--batch). Each wave is installed, must report "switched" and
then stay healthy (no "rolled-back"/"refused", still online) for --healthy-for, or report "confirmed" (its
probation ended). Devices touched earlier stay watched. The first device that refuses, rolls back, goes offline or
does not switch in time stops the rollout: nothing more is installed, and the exit status is 1 naming it."""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

BUNDLE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
FAIL_EVENTS = ("refused", "rolled-back")


def parse_duration(text: str) -> float:
    """'10m', '30s', '1h', '1m30s', '45' (seconds) → seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|m|s|ms)", text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text.replace(" ", ""):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 10m, 30s, 1h, 1m30s)")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


# ---------------------------------------------------------------------------------------------- the broker side

class Fleet:
    """One MQTT connection watching every device under a prefix: retained status, config and model, and stats."""

    SUFFIXES = ("status", "config", "model", "stats", "cmd/model/install/result")

    def __init__(self, mqtt_cfg, client_id: str = ""):
        import paho.mqtt.client as mqtt

        self.cfg = mqtt_cfg
        self.prefix = mqtt_cfg.topic_prefix
        self.devices: dict[str, dict] = {}
        self.replies: dict[str, dict] = {}  # install request id -> its answer
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.connect_error = ""
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"ripeye-fleet-{uuid.uuid4().hex[:8]}")
        if mqtt_cfg.username:
            self.client.username_pw_set(mqtt_cfg.username, mqtt_cfg.password())
        if mqtt_cfg.tls or mqtt_cfg.tls_ca_certs:
            self.client.tls_set(ca_certs=mqtt_cfg.tls_ca_certs, certfile=mqtt_cfg.tls_client_cert,
                                keyfile=mqtt_cfg.tls_client_key, cert_reqs=ssl.CERT_REQUIRED,
                                tls_version=ssl.PROTOCOL_TLS_CLIENT)
            self.client.tls_insecure_set(mqtt_cfg.tls_insecure)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            self.connect_error = str(reason_code)
            return
        client.subscribe([(f"{self.prefix}/+/{s}", 1) for s in self.SUFFIXES])
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        rest = msg.topic[len(self.prefix) + 1:]
        device, _, suffix = rest.partition("/")
        if not device or suffix not in self.SUFFIXES:
            return
        if suffix == "status":
            value = msg.payload.decode(errors="replace")
        else:
            try:
                value = json.loads(msg.payload)
            except ValueError:
                return
            if not isinstance(value, dict):
                return
        with self.cond:
            if suffix == "cmd/model/install/result":
                if value.get("id") is not None:
                    self.replies[str(value["id"])] = value
            else:
                dev = self.devices.setdefault(device, {"id": device})
                dev[suffix] = value
                dev[f"{suffix}_at"] = time.time()
                if suffix == "model":
                    dev.setdefault("model_log", []).append((time.time(), value))
            self.cond.notify_all()

    def connect(self, timeout: float = 10.0) -> None:
        try:
            self.client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive)
        except (OSError, ValueError) as exc:
            raise ConnectionError(f"cannot reach the broker at {self.cfg.host}:{self.cfg.port}: {exc}") from None
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.close()
            raise ConnectionError(f"the broker at {self.cfg.host}:{self.cfg.port} did not let us in"
                                  f"{': ' + self.connect_error if self.connect_error else ''}")

    def close(self) -> None:
        self.client.loop_stop()
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 (closing: nothing left to do about it)
            pass

    def snapshot(self, wait_s: float) -> dict[str, dict]:
        """Retained topics arrive at once; wait at most wait_s for every online device's stats."""
        t0 = time.time()
        with self.cond:
            while True:
                left = wait_s - (time.time() - t0)
                online = [d for d in self.devices.values() if d.get("status") == "online"]
                settled = time.time() - t0 >= min(1.0, wait_s)
                if left <= 0 or (settled and online and all("stats" in d for d in online)):
                    break
                self.cond.wait(min(left, 0.2))
            return {k: dict(v) for k, v in sorted(self.devices.items())}

    def device(self, device_id: str) -> dict:
        with self.cond:
            return dict(self.devices.get(device_id, {"id": device_id}))

    def send(self, device_id: str, command: str, body: dict) -> None:
        self.client.publish(f"{self.prefix}/{device_id}/cmd/{command}", json.dumps(body), qos=1)

    def reply(self, request_id: str, timeout: float) -> Optional[dict]:
        deadline = time.time() + timeout
        with self.cond:
            while request_id not in self.replies and time.time() < deadline:
                self.cond.wait(min(0.2, max(0.0, deadline - time.time())))
            return self.replies.get(request_id)


def groups_of(dev: dict) -> list[str]:
    groups = (dev.get("config") or {}).get("groups") or []
    return [str(g) for g in groups] if isinstance(groups, list) else []


def describe(dev: dict, now: Optional[float] = None) -> dict:
    """One row of `fleet ls` for a device."""
    now = now or time.time()
    model = dev.get("model") or {}
    stats = dev.get("stats") or {}
    config = dev.get("config") or {}
    active = model.get("active") or {}
    probation = model.get("probation")
    history = model.get("history") or []
    last = history[-1] if history else {}
    version = active.get("version") or (stats.get("model") or {}).get("version")
    backend = active.get("backend") or stats.get("backend") or (config.get("runtime") or {}).get("backend")
    status = dev.get("status") or "unknown"
    if status != "online":
        health = status
    elif probation:
        health = f"probation ({max(0, round(probation.get('until', now) - now))} s left)"
    elif last.get("event") == "rolled-back":
        health = f"rolled back from {last.get('from_version')}"
    elif last.get("event") == "refused":
        health = "last install refused"
    elif "stats" not in dev:
        health = "online (no stats yet)"
    else:
        health = "ok"
    return {"id": dev["id"], "groups": groups_of(dev), "status": status, "model": version,
            "name": active.get("name") or (stats.get("model") or {}).get("name"),
            "probation": probation, "backend": backend, "fps": stats.get("fps"), "health": health,
            "last_event": last.get("event")}


def table(rows: list[dict]) -> str:
    head = ["DEVICE", "GROUPS", "STATUS", "MODEL", "BACKEND", "FPS", "HEALTH"]
    body = [[r["id"], ",".join(r["groups"]) or "-", r["status"], (r["model"] or "-")
             + (" (probation)" if r["probation"] else ""), r["backend"] or "-",
             f"{r['fps']:.1f}" if isinstance(r["fps"], (int, float)) else "-", r["health"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body])


def select(spec: str, devices: dict[str, dict], exclude: tuple = ()) -> list[str]:
    """IDS|GROUP|all: comma-separated device ids or group names (an id wins over a group of the same name)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError("no device ids or groups given")
    chosen: list[str] = []
    for name in names:
        if name == "all":
            found = list(devices)
        elif name in devices:
            found = [name]
        else:
            found = [d for d, dev in devices.items() if name in groups_of(dev)]
            if not found:
                raise ValueError(f"{name!r} is neither a device nor a group under this prefix "
                                 f"(devices: {', '.join(devices) or 'none'})")
        chosen += [d for d in found if d not in chosen and d not in exclude]
    return chosen


# ---------------------------------------------------------------------------------------------- HTTP

class _Quiet(http.server.SimpleHTTPRequestHandler):
    only: Optional[str] = None  # serve this one file name and nothing else

    def log_message(self, fmt, *args):
        if os.environ.get("RIPEYE_FLEET_HTTP_LOG"):
            super().log_message(fmt, *args)

    def send_head(self):
        if self.only is not None and self.path.split("?", 1)[0] != "/" + self.only:
            self.send_error(404, "not served")
            return None
        return super().send_head()


def http_server(directory: Path, host: str, port: int, only: Optional[str] = None):
    handler = type("Handler", (_Quiet,), {"only": only})
    server = http.server.ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, name="fleet-http", daemon=True).start()
    return server


def lan_address(towards: str = "192.0.2.1") -> str:
    """The address this machine is reached by on the way to `towards` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(towards), 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def bundles_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(BUNDLE_SUFFIXES))


# ---------------------------------------------------------------------------------------------- rollout

class Stop(Exception):
    def __init__(self, device: str, why: str):
        super().__init__(f"{device}: {why}")
        self.device, self.why = device, why


class Rollout:
    def __init__(self, fleet: Fleet, url: str, sha: str, version: str, healthy_for: float, switch_timeout: float,
                 reply_timeout: float = 30.0):
        self.fleet, self.url, self.sha, self.version = fleet, url, sha, version
        self.healthy_for, self.switch_timeout, self.reply_timeout = healthy_for, switch_timeout, reply_timeout
        self.watch: dict[str, dict] = {}  # device -> {"sent", "baseline_at", "switched", "healthy", ...}
        self.steps: list[dict] = []

    def step(self, device: str, what: str, **fields) -> None:
        self.steps.append({"at": round(time.time(), 3), "device": device, "step": what, **fields})
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        _say(f"{device}: {what}{' ' + extra if extra else ''}")

    def install(self, device: str) -> None:
        dev = self.fleet.device(device)
        history = (dev.get("model") or {}).get("history") or []
        rid = f"fleet-{uuid.uuid4().hex[:10]}"
        state = {"sent": time.time(), "baseline_at": max((h.get("at", 0) for h in history), default=0),
                 "seen": set(), "switched": None, "healthy": None}
        self.watch[device] = state
        self.fleet.send(device, "model/install", {"url": self.url, "sha256": self.sha, "activate": True, "id": rid})
        self.step(device, "install sent", version=self.version)
        answer = self.fleet.reply(rid, self.reply_timeout)
        if answer is None:
            raise Stop(device, f"no answer to cmd/model/install in {self.reply_timeout:g} s")
        if not answer.get("ok"):
            self.step(device, "install refused", error=answer.get("error"))
            raise Stop(device, f"refused the install: {answer.get('error')}")
        self.step(device, "accepted")

    def _events(self, device: str) -> list[dict]:
        state = self.watch[device]
        model = self.fleet.device(device).get("model") or {}
        return [h for h in model.get("history") or [] if h.get("at", 0) > state["baseline_at"]]

    def check(self, device: str) -> bool:
        """Follow one touched device; True once it is healthy. Raises Stop on refusal, rollback, offline, timeout."""
        state = self.watch[device]
        now = time.time()
        for h in self._events(device):
            key = (h.get("event"), h.get("at"))
            if key in state["seen"]:
                continue
            state["seen"].add(key)
            event = h.get("event")
            if event == "installing":
                self.step(device, "installing")
            elif event == "installed":
                self.step(device, "installed", version=h.get("version"))
            elif event == "shadowed":
                self.step(device, "shadow run", frames=h.get("frames"), agreement=h.get("agreement"),
                          latency_ms=h.get("latency_ms"))
            elif event == "switched" and h.get("version") == self.version:
                state["switched"] = now
                state["switched_device_at"] = h.get("at")
                self.step(device, "switched", version=self.version, after_s=round(now - state["sent"], 1))
            elif event == "refused":
                self.step(device, "REFUSED", error=h.get("error"))
                raise Stop(device, f"refused {self.version}: {h.get('error')}")
            elif event == "rolled-back":
                since = f" {now - state['switched']:.1f} s after the switch" if state["switched"] else ""
                self.step(device, "ROLLED BACK", to=h.get("version"), why=h.get("why"))
                raise Stop(device, f"rolled back from {self.version} to {h.get('version')}{since}: {h.get('why')}")
            elif event == "confirmed" and h.get("version") == self.version:
                state["confirmed"] = now
                self.step(device, "confirmed (probation over)")
        if self.fleet.device(device).get("status") == "offline":
            raise Stop(device, "went offline during the rollout")
        if state["switched"] is None:
            if now - state["sent"] > self.switch_timeout:
                raise Stop(device, f"did not switch to {self.version} within {self.switch_timeout:g} s")
            return False
        if state["healthy"] is None and (state.get("confirmed") or now - state["switched"] >= self.healthy_for):
            state["healthy"] = now
            self.step(device, "healthy", for_s=round(now - state["switched"], 1))
        return state["healthy"] is not None

    def wave(self, devices: list[str]) -> None:
        for device in devices:
            self.install(device)
        while True:
            healthy = {d: self.check(d) for d in list(self.watch)}  # every touched device, earlier waves too
            if all(healthy[d] for d in devices):
                return
            with self.fleet.cond:
                self.fleet.cond.wait(0.5)


def _mqtt_config(args):
    from daemon import config as config_mod

    base = config_mod.load(args.config).mqtt if args.config else config_mod.MqttConfig()
    update = {k: v for k, v in {
        "host": args.host, "port": args.port, "topic_prefix": args.prefix, "username": args.username,
        "password_file": args.password_file, "tls_ca_certs": args.ca_certs, "tls_client_cert": args.cert,
        "tls_client_key": args.key}.items() if v is not None}
    if args.tls:
        update["tls"] = True
    if args.tls_insecure:
        update["tls_insecure"] = True
    return base.model_copy(update=update)


def _connect(args, command: str) -> Optional[Fleet]:
    from daemon.config import ConfigError

    try:
        fleet = Fleet(_mqtt_config(args))
        fleet.connect()
    except (ConnectionError, ConfigError, OSError, ssl.SSLError) as exc:
        print(f"ripeye fleet {command}: {exc}", file=sys.stderr)
        return None
    return fleet


def cmd_ls(args) -> int:
    fleet = _connect(args, "ls")
    if fleet is None:
        return 2
    try:
        devices = fleet.snapshot(args.wait)
    finally:
        fleet.close()
    rows = [describe(d) for d in devices.values()]
    if args.json:
        print(json.dumps(rows, indent=1))
    elif rows:
        print(table(rows))
    else:
        print(f"no devices under {fleet.prefix}/ on {fleet.cfg.host}:{fleet.cfg.port}", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    directory = Path(args.dir)
    if not directory.is_dir():
        print(f"ripeye fleet serve: {directory}: not a folder", file=sys.stderr)
        return 2
    try:
        server = http_server(directory, args.host, args.port)
    except OSError as exc:
        print(f"ripeye fleet serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    host = lan_address() if args.host in ("0.0.0.0", "") else args.host
    base = f"http://{host}:{server.server_address[1]}"
    print(f"serving {directory.resolve()} at {base}/ (Ctrl-C stops)", flush=True)
    for path in bundles_in(directory):
        print(f"  {base}/{path.name}  sha256 {sha256_file(path)}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    server.shutdown()
    return 0


def cmd_rollout(args) -> int:
    from daemon.bundle import BundleError, trusted_key_set, verify_bundle

    bundle = Path(args.bundle)
    if bool(args.url) == bool(args.serve_port is not None):
        print("ripeye fleet rollout: give --url (where the devices download the bundle) or --serve-port",
              file=sys.stderr)
        return 2
    try:
        info = verify_bundle(bundle, list(trusted_key_set(args.trusted_key).values()) or None)
    except (BundleError, ValueError, OSError) as exc:
        print(f"ripeye fleet rollout: {bundle}: REFUSED: {exc}", file=sys.stderr)
        return 2
    sha = sha256_file(bundle)
    _say(f"bundle {bundle.name}: version {info.version}, sha256 {sha}, "
         f"{'signed by ' + info.signer if info.signed else 'unsigned'}")
    fleet = _connect(args, "rollout")
    if fleet is None:
        return 2
    server = None
    report: dict = {"bundle": str(bundle), "version": info.version, "sha256": sha, "started": time.time()}
    try:
        if args.serve_port is not None:
            server = http_server(bundle.resolve().parent, "0.0.0.0", args.serve_port, only=bundle.name)
            host = args.advertise or lan_address(fleet.cfg.host)
            url = f"http://{host}:{server.server_address[1]}/{bundle.name}"
            _say(f"serving the bundle at {url}")
        else:
            url = args.url
        devices = fleet.snapshot(args.wait)
        try:
            canary = select(args.canary, devices)
            rest = select(args.then, devices, exclude=tuple(canary))
        except ValueError as exc:
            print(f"ripeye fleet rollout: {exc}", file=sys.stderr)
            return 2
        if not canary:
            print("ripeye fleet rollout: the canary set is empty", file=sys.stderr)
            return 2
        offline = [d for d in canary + rest if devices[d].get("status") != "online"]
        if offline and not args.skip_offline:
            print(f"ripeye fleet rollout: offline: {', '.join(offline)} (nothing installed; --skip-offline "
                  "leaves them out)", file=sys.stderr)
            return 2
        current = {d: describe(devices[d])["model"] for d in canary + rest}
        already = [d for d in canary + rest if current[d] == info.version]
        canary = [d for d in canary if d not in offline and d not in already]
        rest = [d for d in rest if d not in offline and d not in already]
        for d in offline:
            _say(f"{d}: offline, left out")
        for d in already:
            _say(f"{d}: already runs {info.version}, left out")
        size = args.batch if args.batch > 0 else max(1, len(rest))
        waves = ([canary] if canary else []) + [rest[i:i + size] for i in range(0, len(rest), size)]
        _say(f"plan: canary {', '.join(canary) or '-'}; then {', '.join(rest) or '-'} "
             f"({len(waves) - (1 if canary else 0)} wave(s)); healthy for {args.healthy_for:g} s each")
        report.update(url=url, canary=canary, then=rest, skipped={"offline": offline, "already": already},
                      before=current)
        ro = Rollout(fleet, url, sha, info.version, args.healthy_for, args.switch_timeout)
        status = 0
        try:
            for n, wave in enumerate(waves):
                _say(f"wave {n + 1}/{len(waves)}{' (canary)' if n == 0 and canary else ''}: {', '.join(wave)}")
                ro.wave(wave)
            _say(f"done: {info.version} on {', '.join(ro.watch) or 'no device'}")
        except Stop as stop:
            untouched = [d for d in canary + rest if d not in ro.watch]
            _say(f"STOPPED at {stop.device}: {stop.why}; not touched: {', '.join(untouched) or 'none'}")
            print(f"ripeye fleet rollout: stopped at {stop.device}: {stop.why}", file=sys.stderr)
            report.update(stopped_at=stop.device, why=stop.why, untouched=untouched)
            status = 1
        except KeyboardInterrupt:
            _say("interrupted: nothing more is installed")
            status = 130
        report.update(touched=list(ro.watch), steps=ro.steps, ended=time.time(), exit=status,
                      devices={d: {k: v for k, v in s.items() if k != "seen"} for d, s in ro.watch.items()})
        return status
    finally:
        if args.report:
            Path(args.report).write_text(json.dumps(report, indent=1, default=str))
        if server:
            server.shutdown()
        fleet.close()


# ---------------------------------------------------------------------------------------------- command line

def _broker_args(p) -> None:
    p.add_argument("--config", "-c", help="take the broker settings (mqtt:) from this daemon config")
    p.add_argument("--host", help="broker host (default localhost)")
    p.add_argument("--port", type=int, help="broker port (default 1883)")
    p.add_argument("--prefix", help="topic prefix (default ripeye)")
    p.add_argument("--username")
    p.add_argument("--password-file", help="file holding the broker password")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system CAs unless --ca-certs)")
    p.add_argument("--ca-certs", help="CA bundle for the broker's certificate (implies --tls)")
    p.add_argument("--cert", help="client certificate (PEM)")
    p.add_argument("--key", help="client key (PEM)")
    p.add_argument("--tls-insecure", action="store_true", help="do not check the broker's host name")
    p.add_argument("--wait", type=parse_duration, default=3.0,
                   help="listen this long for the devices' stats (default 3 s; retained topics come at once)")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="fleet_command", required=True)
    ls = sub.add_parser("ls", help="the devices under a prefix: id, groups, status, model, backend, FPS, health")
    _broker_args(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_ls)

    sv = sub.add_parser("serve", help="a plain static HTTP file server for bundles (greenhouse LAN)")
    sv.add_argument("dir")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--host", default="0.0.0.0")
    sv.set_defaults(func=cmd_serve)

    ro = sub.add_parser("rollout", help="install a bundle on a canary set, wait until healthy, then the rest")
    ro.add_argument("bundle")
    ro.add_argument("--url", help="where the devices download BUNDLE (any static HTTP server)")
    ro.add_argument("--serve-port", type=int, help="serve BUNDLE from here on this port instead (0: any)")
    ro.add_argument("--advertise", help="with --serve-port: host name the devices reach this machine by")
    ro.add_argument("--canary", required=True, metavar="IDS|GROUP", help="comma-separated device ids or groups")
    ro.add_argument("--then", default="all", metavar="all|IDS|GROUP", help="the rest (default all)")
    ro.add_argument("--healthy-for", type=parse_duration, default=600.0, metavar="DURATION",
                    help="after its switch a device must stay without rollback this long (10m, 30s; default 10m), "
                         "or confirm its probation")
    ro.add_argument("--batch", type=int, default=0, help="after the canary, this many devices per wave (0: all)")
    ro.add_argument("--switch-timeout", type=parse_duration, default=300.0, metavar="DURATION",
                    help="install to switch, per device (default 5m)")
    ro.add_argument("--trusted-key", action="append", metavar="PUB", help="check the bundle's signature first")
    ro.add_argument("--skip-offline", action="store_true", help="leave offline devices out instead of stopping")
    ro.add_argument("--report", metavar="FILE", help="write every step with its time as JSON")
    _broker_args(ro)
    ro.set_defaults(func=cmd_rollout)
