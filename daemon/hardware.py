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
    cpuinfo: str = ""  # /proc/cpuinfo: hidden inside the service's sandbox (ProcSubset=pid); extra detail only
    cpu_modalias: str = ""  # /sys/devices/system/cpu/modalias: visible there too (x86 vendor, family, model)
    runtimes: dict[str, str] = field(default_factory=dict)  # backend → "ok" or why not
    ort_providers: list[str] = field(default_factory=list)


@dataclass
class HardwareProfile:
    kind: str  # jetson | raspberry-pi | arm | intel | amd | x86 | other
    description: str
    chain: list[str]  # backends in order of preference
    reasons: list[str]
    # What identifies this hardware for caches (`ripeye tune`): built only from facts the service's sandbox also
    # sees, so a result measured from a shell matches inside the unit.
    identity: str = ""


# x86 vendor numbers in the kernel's CPU modalias ("cpu:type:x86,ven0002fam0019mod0001:...").
X86_VENDORS = {"0000": "GenuineIntel", "0002": "AuthenticAMD"}
ARM_MACHINES = ("aarch64", "arm64", "armv7l", "armv8l", "armv6l")


def is_jetson(machine: str, device_tree_model: str, tegra_release: str) -> bool:
    """The one rule (install.sh's detect_board says the same): a non-empty /etc/nv_tegra_release, or an ARM
    device-tree model naming Jetson or NVIDIA."""
    model = device_tree_model.lower()
    return bool(tegra_release.strip()) or (machine.lower() in ARM_MACHINES and ("jetson" in model or "nvidia" in model))


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


def x86_cpu_id(facts: HardwareFacts) -> tuple[str, str]:
    """(vendor, "famXXXXmodXXXX") from the sysfs modalias, else from /proc/cpuinfo, in the modalias's format."""
    import re

    m = re.search(r"type:x86,ven([0-9A-Fa-f]{4})fam([0-9A-Fa-f]{4})mod([0-9A-Fa-f]{4})", facts.cpu_modalias)
    if m:
        return X86_VENDORS.get(m.group(1), f"vendor {m.group(1)}"), f"fam{m.group(2).upper()}mod{m.group(3).upper()}"
    fields = {}
    for line in facts.cpuinfo.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip().lower(), value.strip())
    family, model = fields.get("cpu family", ""), fields.get("model", "")
    cpu = f"fam{int(family):04X}mod{int(model):04X}" if family.isdigit() and model.isdigit() else ""
    return cpu_vendor(facts.cpuinfo), cpu


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
    is_arm = machine in ARM_MACHINES
    identity = model
    if is_jetson(machine, model, facts.tegra_release):
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
        vendor, cpu_id = x86_cpu_id(facts)
        identity = f"{vendor}:{cpu_id}"
        name = cpu_model_name(facts.cpuinfo) or (f"{vendor} {cpu_id}" if vendor else "x86")
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
    return HardwareProfile(kind, desc, chain, reasons, f"{kind}:{facts.machine}:{identity}")


def probe(root: str = "/", machine: Optional[str] = None, check_runtimes: bool = True) -> HardwareFacts:
    """Read the real machine (root and machine let tests stand in another board's files)."""
    from daemon import runtimes

    rt = runtimes.available() if check_runtimes else {}
    providers: list[str] = []
    if rt.get("onnxruntime") == "ok":
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    r = Path(root)
    # /proc/device-tree is a link into /sys/firmware, which the unit's ProcSubset=pid leaves visible.
    model = _read(str(r / "sys/firmware/devicetree/base/model")) or _read(str(r / "proc/device-tree/model"))
    return HardwareFacts(
        machine=machine or platform.machine(),
        device_tree_model=model,
        tegra_release=_read(str(r / "etc/nv_tegra_release")),
        cpuinfo=_read(str(r / "proc/cpuinfo")),
        cpu_modalias=_read(str(r / "sys/devices/system/cpu/modalias")),
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
