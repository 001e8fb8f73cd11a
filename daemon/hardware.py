"""Hardware detection: which board this is, and which inference backend to try first (and then next)."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class HardwareFacts:
    """What the probes read; every field comes from a file or call that a fixture can stand in for."""

    machine: str = ""
    device_tree_model: str = ""
    tegra_release: str = ""
    cpuinfo: str = ""
    runtimes: dict[str, str] = field(default_factory=dict)  # backend → "ok" or why not
    ort_providers: list[str] = field(default_factory=list)


@dataclass
class HardwareProfile:
    kind: str  # jetson | raspberry-pi | arm | intel | amd | x86 | other
    description: str
    chain: list[str]  # backends in order of preference
    reasons: list[str]


def _read(path: str) -> str:
    try:
        return Path(path).read_bytes().replace(b"\x00", b"").decode(errors="replace").strip()
    except OSError:
        return ""


def cpu_vendor(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.lower().startswith("vendor_id"):
            return line.split(":", 1)[1].strip()
    return ""


def cpu_model_name(cpuinfo: str) -> str:
    """'model name' on x86; 'Hardware' or 'Model' on ARM kernels (the bare 'model' line is a number on x86)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "hardware"):
        if fields.get(key):
            return fields[key]
    model = fields.get("model", "")
    return "" if model.isdigit() else model


def classify(facts: HardwareFacts) -> HardwareProfile:
    """Decide the board kind and backend chain from the facts alone (pure: tested on real boards' files)."""
    machine = facts.machine.lower()
    model = facts.device_tree_model
    reasons: list[str] = []
    is_arm = machine in ("aarch64", "arm64", "armv7l", "armv8l", "armv6l")
    if facts.tegra_release or (is_arm and ("jetson" in model.lower() or "nvidia" in model.lower())):
        reasons.append(
            "Jetson: " + ("/etc/nv_tegra_release present" if facts.tegra_release else f"device-tree model {model!r}"))
        kind, desc, chain = "jetson", model or "NVIDIA Jetson", ["tensorrt", "onnxruntime", "ncnn"]
    elif "raspberry pi" in model.lower():
        reasons.append(f"Raspberry Pi: device-tree model {model!r}")
        kind, desc, chain = "raspberry-pi", model, ["ncnn", "onnxruntime", "openvino"]
    elif is_arm:
        reasons.append(f"ARM CPU ({facts.machine})" + (f", device-tree model {model!r}" if model else ""))
        kind, desc, chain = "arm", model or f"ARM {facts.machine}", ["ncnn", "onnxruntime", "openvino"]
    elif machine in ("x86_64", "amd64", "i686", "i386"):
        vendor = cpu_vendor(facts.cpuinfo)
        name = cpu_model_name(facts.cpuinfo) or vendor or "x86"
        if vendor == "GenuineIntel":
            kind = "intel"
        elif vendor == "AuthenticAMD":
            kind = "amd"
        else:
            kind = "x86"
        reasons.append(f"x86 CPU, vendor {vendor or 'unknown'} ({name}): OpenVINO runs on x86 CPUs with SSE4.2+")
        desc, chain = name, ["openvino", "onnxruntime", "ncnn"]
        if "TensorrtExecutionProvider" in facts.ort_providers:
            reasons.append("onnxruntime has the TensorRT provider: an NVIDIA GPU build is installed")
            chain = ["tensorrt", *chain]
    else:
        reasons.append(f"unrecognised machine {facts.machine!r}: onnxruntime CPU is the portable fallback")
        kind, desc, chain = "other", facts.machine or "unknown", ["onnxruntime", "openvino", "ncnn"]
    if facts.runtimes:
        usable = [b for b in chain if facts.runtimes.get(b) == "ok"]
        for b in chain:
            if facts.runtimes.get(b, "ok") != "ok":
                reasons.append(f"{b} skipped: {facts.runtimes[b]}")
        chain = usable
    return HardwareProfile(kind, desc, chain, reasons)


def probe(root: str = "/", machine: Optional[str] = None, check_runtimes: bool = True) -> HardwareFacts:
    """Read the real machine (root and machine let tests stand in another board's files)."""
    from daemon import runtimes

    rt = runtimes.available() if check_runtimes else {}
    providers: list[str] = []
    if rt.get("onnxruntime") == "ok":
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    r = Path(root)
    return HardwareFacts(
        machine=machine or platform.machine(),
        device_tree_model=_read(str(r / "proc/device-tree/model")),
        tegra_release=_read(str(r / "etc/nv_tegra_release")),
        cpuinfo=_read(str(r / "proc/cpuinfo")),
        runtimes=rt,
        ort_providers=providers,
    )


def cpu_temperature() -> Optional[float]:
    """CPU temperature in °C from the thermal zones, when readable."""
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        text = _read(str(zone / "temp"))
        if text.lstrip("-").isdigit():
            return int(text) / 1000.0
    return None
