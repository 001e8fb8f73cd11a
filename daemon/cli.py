"""The `ripeye` command line: run, detect, doctor, config check, train, eval, compare, optimize, bench, ..."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from daemon import __version__
from daemon.config import DEFAULT_MODEL_DIR, ConfigError


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_run(args) -> int:
    from daemon import config
    from daemon.pipeline import Daemon

    state_problems: list[str] = []  # the daemon's own state files set aside, reported once it is up
    try:
        cfg = config.load_with_overrides(args.config, state_problems) if args.config else config.load(None)
    except ConfigError as exc:
        print(f"ripeye: invalid config\n{exc}", file=sys.stderr)
        return 2
    overrides = {}
    if args.source:
        overrides["source"] = {**cfg.source.model_dump(), "uri": args.source}
    if args.model:
        overrides["model"] = {**cfg.model.model_dump(), "path": args.model}
    if args.backend:
        overrides["runtime"] = {**cfg.runtime.model_dump(), "backend": args.backend}
    if overrides:
        try:
            cfg = config.validate({**cfg.model_dump(), **overrides}, "command line")
        except ConfigError as exc:
            print(f"ripeye: {exc}", file=sys.stderr)
            return 2
    from daemon.liveconfig import preflight

    try:
        preflight(cfg, args.config or "defaults", model=False)  # a model that does not load is retried, not fatal
    except ConfigError as exc:
        print(f"ripeye: invalid config\n{exc}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level or cfg.log.level)
    daemon = Daemon(cfg, args.config)
    daemon.state_problems.extend(state_problems)
    return daemon.run_forever()


def _image_paths(paths: list[str]) -> list[Path]:
    from daemon.capture import IMAGE_SUFFIXES

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def cmd_detect(args) -> int:
    import cv2

    from daemon.detector import NoUsableBackend, load_detector
    from daemon.runtimes.base import RuntimeOptions

    _setup_logging(args.log_level or "WARNING")
    try:
        detector = load_detector(args.model, args.backend, args.precision, RuntimeOptions(threads=args.threads),
                                 imgsz=args.imgsz, allow_rejected=args.allow_rejected)
    except (NoUsableBackend, FileNotFoundError, ValueError) as exc:
        print(f"ripeye detect: {exc}", file=sys.stderr)
        return 2
    status = 0
    for path in _image_paths(args.paths):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            print(f"ripeye detect: cannot read image {path}", file=sys.stderr)
            status = 1
            continue
        dets = detector.detect(image, args.conf, args.iou)
        h, w = image.shape[:2]
        if args.json:
            print(json.dumps({"image": str(path), "width": w, "height": h, "backend": detector.backend,
                              "precision": detector.runtime.precision,
                              "detections": [d.to_json(w, h) for d in dets]}), flush=True)
        else:
            counts: dict[str, int] = {}
            for d in dets:
                counts[d.class_name] = counts.get(d.class_name, 0) + 1
            summary = ", ".join(f"{n} {c}" for c, n in sorted(counts.items())) or "nothing"
            print(f"{path}: {summary}")
    return status


def _port_open(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def cmd_demo(args) -> int:
    """The embedded default: sample clip, shipped model, a local broker (started here when none is running)."""
    import shutil
    import subprocess

    from daemon import config
    from daemon.pipeline import Daemon

    broker = None
    if not _port_open("127.0.0.1", args.port):
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            print(f"ripeye demo: no broker on localhost:{args.port} and mosquitto is not installed "
                  "(./install.sh --dev installs it)", file=sys.stderr)
            return 2
        # its own session: Ctrl-C signals the terminal's whole process group, and a broker stopped along with the
        # daemon would be gone before the daemon says goodbye ("lost the broker"). We stop it after the daemon.
        broker = subprocess.Popen([exe, "-p", str(args.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        for _ in range(50):
            if _port_open("127.0.0.1", args.port):
                break
            __import__("time").sleep(0.1)
        print(f"ripeye demo: started mosquitto on localhost:{args.port}", file=sys.stderr)
    cfg = config.validate({"device_id": "demo", "source": {"uri": args.source}, "mqtt": {"port": args.port},
                           "stats": {"interval_s": 5}}, "demo")
    _setup_logging("INFO")
    print(f"ripeye demo: watch with `.venv/bin/ripeye watch --port {args.port}` "
          f"(or mosquitto_sub -p {args.port} -t 'ripeye/#' -v); Ctrl-C stops", file=sys.stderr)
    try:
        status = Daemon(cfg).run_forever()
    finally:
        if broker:
            broker.terminate()
            try:
                broker.wait(timeout=5)
            except subprocess.TimeoutExpired:
                broker.kill()
    print(f"ripeye demo: stopped{' (and the broker it started)' if broker else ''}", file=sys.stderr, flush=True)
    return status


def cmd_watch(args) -> int:
    """Print every message under a topic filter, one line each (a small mosquitto_sub)."""
    import time

    import paho.mqtt.client as mqtt

    def on_message(client, userdata, msg):
        payload = msg.payload.decode(errors="replace")
        if len(payload) > args.width:
            payload = payload[: args.width] + "…"
        print(f"{msg.topic} {payload}", flush=True)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(args.topic)
    client.on_message = on_message
    client.connect_async(args.host, args.port)
    client.loop_start()
    try:
        deadline = time.time() + args.seconds if args.seconds else None
        while deadline is None or time.time() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    client.loop_stop()
    return 0


def cmd_calibrate(args) -> int:
    """Fit the pixel → arm homography from ≥ 4 point pairs and print the config snippet and its error."""
    import numpy as np
    import yaml

    if args.three_d:
        return _calibrate_3d(args)

    from daemon.harvest import fit_homography

    pairs = _calibration_pairs(args, "points", ("pixel", "arm"), None, "U,V=X,Y")
    if pairs is None:
        return 2
    try:
        cal = fit_homography(np.array([p["pixel"] for p in pairs], float), np.array([p["arm"] for p in pairs], float))
    except (ValueError, KeyError, TypeError) as exc:
        print(f"ripeye calibrate: {exc}", file=sys.stderr)
        return 2
    snippet = {"calibration": {"homography": [[round(float(v), 9) for v in row] for row in cal.matrix]}}
    print(yaml.safe_dump(snippet, default_flow_style=None).strip())
    print(f"# {len(pairs)} point pairs, RMS reprojection error {cal.rms_error:.2f} mm", flush=True)
    if args.max_error is not None and cal.rms_error > args.max_error:
        print(f"ripeye calibrate: error {cal.rms_error:.2f} mm exceeds --max-error {args.max_error}", file=sys.stderr)
        return 1
    return 0


def _calibration_pairs(args, file_key: str, keys: tuple[str, str], length, expected: str) -> list | None:
    """Point pairs from --file (a list, or a mapping holding file_key) and each --pair A=B; None after an error."""
    import yaml

    pairs: list = []
    if args.file:
        data = yaml.safe_load(Path(args.file).read_text())
        pairs = data.get(file_key, data) if isinstance(data, dict) else data
    for text in args.pair or []:
        try:
            left, right = (list(map(float, side.split(","))) for side in text.split("="))
            if length and (len(left) != length or len(right) != length):
                raise ValueError
        except ValueError:
            print(f"ripeye calibrate: cannot read pair {text!r} (expected {expected})", file=sys.stderr)
            return None
        pairs.append(dict(zip(keys, (left, right))))
    return pairs


def _calibrate_3d(args) -> int:
    """Fit the rigid camera → arm transform from ≥ 3 pairs of 3D points (mm) and print the config snippet."""
    import yaml

    from daemon.depth import fit_rigid

    pairs = _calibration_pairs(args, "points_3d", ("camera", "arm"), 3, "x,y,z=X,Y,Z in mm")
    if pairs is None:
        return 2
    try:
        fit = fit_rigid([p["camera"] for p in pairs], [p["arm"] for p in pairs])
    except (ValueError, KeyError, TypeError) as exc:
        print(f"ripeye calibrate --3d: {exc}", file=sys.stderr)
        return 2
    snippet = {"calibration": {"camera_to_arm": [[round(float(v), 6) + 0.0 for v in row] for row in fit.matrix]}}
    print(yaml.safe_dump(snippet, default_flow_style=None).strip())
    print(f"# {len(pairs)} point pairs, RMS error {fit.rms_mm:.2f} mm (largest {fit.max_mm:.2f} mm)", flush=True)
    if args.max_error is not None and fit.rms_mm > args.max_error:
        print(f"ripeye calibrate --3d: error {fit.rms_mm:.2f} mm exceeds --max-error {args.max_error}",
              file=sys.stderr)
        return 1
    return 0


def cmd_doctor(args) -> int:
    from daemon import doctor

    return doctor.main(args)


def cmd_config_check(args) -> int:
    from daemon import config
    from daemon.liveconfig import preflight

    try:
        cfg = config.load(args.file)
        preflight(cfg, args.file, model=False)  # the files it names (TLS, password, token) must read
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    from daemon.model import load_bundle, select_size
    from daemon.redact import redact

    try:
        problems = load_bundle(select_size(cfg.model.path, cfg.model.imgsz)).problems  # the variant the daemon loads
    except FileNotFoundError as exc:
        # the config may be checked off the target (a staging root, another machine): only a model found here
        # is looked into
        print(f"{args.file}: model.path: note: {exc} (not checked here)", file=sys.stderr)
        problems = []
    except ValueError as exc:  # a model folder that is here but malformed: the daemon could not use it
        print(f"{args.file}: {'model.imgsz' if cfg.model.imgsz else 'model.path'}: {exc}", file=sys.stderr)
        return 2
    for problem in problems:  # the daemon still runs (on what is intact) but someone should look
        print(f"{args.file}: model.path: WARNING {problem}", file=sys.stderr)
    print(f"{args.file}: {'OK' if not problems else 'usable, with warnings'} (device_id={cfg.device_id}, "
          f"source={redact(cfg.source.uri)}, model={cfg.model.path}, backend={cfg.runtime.backend}, "
          f"mqtt={cfg.mqtt.host}:{cfg.mqtt.port})")
    return 1 if problems else 0


def cmd_eval(args) -> int:
    from daemon import evaluate

    if not args.artifact and not args.detections:
        print("ripeye eval: give a model ARTIFACT or --detections FILE", file=sys.stderr)
        return 2
    _setup_logging("WARNING")
    return evaluate.main(args)


def cmd_optimize(args) -> int:
    from daemon import optimize

    _setup_logging("WARNING")
    return optimize.main(args)


def cmd_bench(args) -> int:
    from daemon import bench

    return bench.main(args)


def cmd_tune(args) -> int:
    from daemon import tune

    _setup_logging("WARNING")
    return tune.main(args)


def cmd_train(args) -> int:
    from daemon import train

    return train.main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ripeye", description="Tomato-ripeness detection daemon publishing over MQTT")
    p.add_argument("--version", action="version", version=f"ripeye {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", default=None, help="YAML config file (default: built-in defaults)")
    run.add_argument("--source", help="override source.uri")
    run.add_argument("--model", help="override model.path")
    run.add_argument("--backend", help="override runtime.backend")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=cmd_run)

    det = sub.add_parser("detect", help="detect tomatoes in images or folders")
    det.add_argument("paths", nargs="+")
    det.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    det.add_argument("--backend", default="auto")
    det.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "int8"])
    det.add_argument("--conf", type=float, default=0.25)
    det.add_argument("--iou", type=float, default=0.45)
    det.add_argument("--threads", type=int, default=0)
    det.add_argument("--imgsz", type=int, default=0,
                     help="input-size variant of the model folder (default: the size it recommends, else its own)")
    det.add_argument("--json", action="store_true", help="one JSON line per image")
    det.add_argument("--allow-rejected", action="store_true",
                     help="load an artifact given by path even though the accuracy gate rejected it (warns)")
    det.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    det.set_defaults(func=cmd_detect)

    demo = sub.add_parser("demo", help="run on the sample clip with the shipped model and a local broker")
    demo.add_argument("--port", type=int, default=1883)
    demo.add_argument("--source", choices=["sample", "sample-3d"], default="sample",
                      help="sample-3d: a RealSense recording with depth; detections and targets carry xyz_mm")
    demo.set_defaults(func=cmd_demo)

    watch = sub.add_parser("watch", help="print MQTT messages (default: everything under ripeye/)")
    watch.add_argument("--host", default="localhost")
    watch.add_argument("--port", type=int, default=1883)
    watch.add_argument("--topic", default="ripeye/#")
    watch.add_argument("--width", type=int, default=200, help="truncate payloads to this many characters")
    watch.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = until Ctrl-C)")
    watch.set_defaults(func=cmd_watch)

    cal = sub.add_parser("calibrate", help="fit the pixel → arm homography from point pairs")
    cal.add_argument("--pair", action="append", metavar="U,V=X,Y",
                     help="pixel U,V maps to arm X,Y (mm); ≥ 4. With --3d: camera x,y,z=arm X,Y,Z (mm); ≥ 3")
    cal.add_argument("--3d", dest="three_d", action="store_true",
                     help="fit the rigid camera → arm transform for a depth camera (calibration.camera_to_arm)")
    cal.add_argument("--file", help="YAML list of {pixel: [u, v], arm: [x, y]} (with --3d: {camera: [x, y, z], "
                                    "arm: [x, y, z]})")
    cal.add_argument("--max-error", type=float, help="fail when the RMS error (mm) is above this")
    cal.set_defaults(func=cmd_calibrate)

    doc = sub.add_parser("doctor", help="show hardware, backends, artifacts and the choice made")
    doc.add_argument("--config", "-c", default=None)
    doc.add_argument("--json", action="store_true")
    doc.add_argument("--strict", action="store_true", help="exit non-zero when there is any warning")
    doc.set_defaults(func=cmd_doctor)

    cfg = sub.add_parser("config", help="config tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)

    from daemon import bench, evaluate, optimize, train, tune

    tu = sub.add_parser("tune", help="time every backend × artifact here and cache the winner for backend: measured")
    tune.add_arguments(tu)
    tu.set_defaults(func=cmd_tune)

    be = sub.add_parser("bench", help="every runtime × precision: size, mAP, latency, FPS, peak RSS")
    bench.add_arguments(be)
    be.set_defaults(func=cmd_bench)

    op = sub.add_parser("optimize", help="derive OpenVINO/ORT/NCNN/TensorRT artifacts, INT8 with an accuracy gate")
    optimize.add_arguments(op)
    op.set_defaults(func=cmd_optimize)

    ev = sub.add_parser("eval", help="mAP with pycocotools through the daemon's own pre/post-processing")
    evaluate.add_arguments(ev)
    ev.set_defaults(func=cmd_eval)

    from daemon import compare

    cp = sub.add_parser("compare", help="promotion report: current vs candidate model on each data set, latency, "
                                        "INT8 gate; exits 1 when the candidate is worse")
    compare.add_arguments(cp)
    cp.set_defaults(func=compare.main)

    tr = sub.add_parser("train", help="train and export the model (needs the `train` extra)")
    train.add_arguments(tr)
    tr.set_defaults(func=cmd_train)

    from daemon import bundle

    bundle.add_arguments(sub.add_parser("model", help="model bundles: pack, verify (hashes, signature), keygen"))

    from daemon import fleet

    fleet.add_arguments(sub.add_parser("fleet", help="the devices under a prefix: ls, rollout (canary first), serve"))

    from daemon import dataset

    dataset.add_arguments(sub.add_parser("dataset", help="field captures → a labelling tool and back; a test split"))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "config") and args.config is None:  # run, doctor, tune: the installed service's config
        from daemon.paths import resolve_config

        args.config = resolve_config(None)  # $RIPEYE_CONFIG, else /etc/ripeye/ripeye.yaml when installed; says which
    return args.func(args)
