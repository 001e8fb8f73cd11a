"""`ripeye doctor`: what hardware this is, which backends load, which artifacts exist, and what would be used."""

from __future__ import annotations

import json

from daemon import config as config_mod
from daemon.detector import backend_chain
from daemon.hardware import classify, cpu_temperature, probe
from daemon.model import load_bundle, select_size


def opencv_has_gstreamer() -> bool:
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return line.split(":", 1)[1].strip().upper().startswith("YES")
    return False


def board_warnings(cfg, profile, facts) -> tuple[dict, list[str]]:
    """Camera stack facts and what would not work on this board as configured."""
    from daemon.capture import pi_camera_status

    uri = cfg.source.uri.strip()
    camera = {"picamera2": pi_camera_status()}
    warnings = []
    wants_pi_camera = uri == "auto" or uri.startswith("picamera2")
    if profile.kind == "raspberry-pi" and camera["picamera2"] != "ok" and wants_pi_camera:
        warnings.append(f"the Pi camera is not usable: {camera['picamera2']} (Raspberry Pi OS ships picamera2 and "
                        "libcamera as apt's python3-picamera2; the venv must see the system site-packages)")
    if "!" in uri:
        camera["opencv_gstreamer"] = opencv_has_gstreamer()
        if not camera["opencv_gstreamer"]:
            import cv2

            warnings.append(f"source.uri is a GStreamer pipeline but the OpenCV in use ({cv2.__file__}) is built "
                            "without GStreamer" + (" (use JetPack's OpenCV: see README, Jetson)"
                                                   if profile.kind == "jetson" else ""))
    if profile.kind == "jetson" and "TensorrtExecutionProvider" not in facts.ort_providers:
        have = ", ".join(facts.ort_providers) or f"onnxruntime {facts.runtimes.get('onnxruntime', 'not installed')}"
        warnings.append(f"inference runs on the CPU: onnxruntime has no TensorRT provider ({have}); install NVIDIA's "
                        "Jetson onnxruntime-gpu (./install.sh --service --extra-index-url URL, see README, Jetson)")
    return camera, warnings


def report(cfg, facts=None) -> dict:
    facts = facts or probe()
    profile = classify(facts)
    camera, warnings = board_warnings(cfg, profile, facts)
    out = {
        "hardware": {"kind": profile.kind, "description": profile.description, "machine": facts.machine,
                     "cpu_temperature_c": cpu_temperature()},
        "runtimes": facts.runtimes,
        "onnxruntime_providers": facts.ort_providers,
        "model": {"path": cfg.model.path},
        "camera": camera,
        "warnings": warnings,
    }
    try:
        bundle = load_bundle(select_size(cfg.model.path, cfg.model.imgsz))  # the variant the daemon loads
        out["model"].update({"name": bundle.name, "version": bundle.version, "input_size": list(bundle.input_size),
                             "classes": bundle.class_names,
                             "artifacts": [{"kind": a.kind, "precision": a.precision, "path": str(a.path),
                                            "present": a.path.is_file(), "accepted": a.accepted,
                                            **({"note": a.note} if a.note else {})} for a in bundle.artifacts]})
        from pathlib import Path

        chain, why = backend_chain(cfg.runtime.backend, profile, Path(cfg.runtime.cache_dir).expanduser(), bundle)
        choice = None
        for backend in chain:
            if facts.runtimes.get(backend) != "ok":
                continue
            cands = [a for a in bundle.candidates(backend, cfg.model.precision) if a.path.is_file()]
            if cands:
                choice = {"backend": backend, "precision": cands[0].precision, "artifact": str(cands[0].path)}
                break
        out["choice"] = {"requested": cfg.runtime.backend, "chain": chain, "why": why, "would_use": choice}
        try:
            from daemon import tune

            out["tune"] = tune.cached_winner(Path(cfg.runtime.cache_dir).expanduser(), bundle)
        except ImportError:
            pass
    except (FileNotFoundError, ValueError) as exc:
        out["model"]["error"] = str(exc)
        out["choice"] = {"requested": cfg.runtime.backend, "chain": profile.chain, "why": "; ".join(profile.reasons),
                         "would_use": None}
    return out


def main(args, facts=None) -> int:
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(str(exc))
        return 2
    rep = report(cfg, facts)
    strict_failure = bool(getattr(args, "strict", False) and rep["warnings"])
    if args.json:
        print(json.dumps(rep, indent=2))
        return 1 if strict_failure else 0
    hw = rep["hardware"]
    print(f"hardware: {hw['kind']} — {hw['description']} ({hw['machine']})"
          + (f", CPU {hw['cpu_temperature_c']:.0f} °C" if hw["cpu_temperature_c"] is not None else ""))
    print("runtimes:")
    for name, state in rep["runtimes"].items():
        print(f"  {name:12s} {state}")
    if rep["onnxruntime_providers"]:
        print(f"onnxruntime providers: {', '.join(rep['onnxruntime_providers'])}")
    m = rep["model"]
    print(f"model: {m['path']}")
    if "error" in m:
        print(f"  ERROR: {m['error']}")
    else:
        print(f"  {m['name']} version {m['version']}, classes {m['classes']}")
        for a in m["artifacts"]:
            state = "present" if a["present"] else "MISSING"
            if not a["accepted"]:
                state += ", REJECTED by the accuracy gate"
            print(f"  {a['kind']:12s} {a['precision']:5s} {a['path']} ({state})")
    c = rep["choice"]
    print(f"backend: requested {c['requested']}; order {' → '.join(c['chain'])}")
    print(f"  why: {c['why']}")
    u = c["would_use"]
    print(f"  would use: {u['backend']} {u['precision']} {u['artifact']}" if u else "  would use: nothing loadable")
    if rep.get("tune"):
        print(f"tune cache: {rep['tune']}")
    print(f"camera: picamera2 {rep['camera']['picamera2']}")
    for warning in rep["warnings"]:
        print(f"WARNING: {warning}")
    return 0 if u and not strict_failure else 1
