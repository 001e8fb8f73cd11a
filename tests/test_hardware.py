"""Hardware detection rules on the /proc/cpuinfo, device-tree model and nv_tegra_release files of real boards.

The fixture files reproduce what a Raspberry Pi 4 (64-bit Raspberry Pi OS), a Raspberry Pi 5, a Jetson Orin Nano
(JetPack 6, L4T R36.3) and an Intel laptop print; a run on each real board must confirm `ripeye doctor` picks the
same backend there.
"""

from pathlib import Path

import pytest

from daemon.hardware import HardwareFacts, classify, cpu_model_name, probe

BOARDS = Path(__file__).parent / "fixtures" / "hardware"


def board(name: str, runtimes=None, providers=()):
    root = BOARDS / name
    facts = probe(str(root), machine=(root / "machine").read_text().strip(), check_runtimes=False)
    facts.runtimes = runtimes or {}
    facts.ort_providers = list(providers)
    return facts


@pytest.mark.parametrize("name,kind,first", [
    ("pi4", "raspberry-pi", "ncnn"),
    ("pi5", "raspberry-pi", "ncnn"),
    ("jetson-orin", "jetson", "tensorrt"),
    ("intel-pc", "intel", "openvino"),
])
def test_board_rules(name, kind, first):
    profile = classify(board(name))
    assert profile.kind == kind
    assert profile.chain[0] == first
    assert profile.reasons


def test_pi_description_comes_from_device_tree():
    assert classify(board("pi5")).description == "Raspberry Pi 5 Model B Rev 1.0"


def test_jetson_detected_from_tegra_release_alone():
    facts = board("jetson-orin")
    facts.device_tree_model = ""
    assert classify(facts).kind == "jetson"


def test_intel_model_name_not_the_model_number():
    assert cpu_model_name((BOARDS / "intel-pc/proc/cpuinfo").read_text()) == "13th Gen Intel(R) Core(TM) i7-1360P"


def test_missing_runtime_is_skipped_with_reason():
    facts = board("pi4", runtimes={"ncnn": "backend ncnn unavailable (ImportError)", "onnxruntime": "ok",
                                   "openvino": "ok", "tensorrt": "no"})
    profile = classify(facts)
    assert profile.chain[0] == "onnxruntime"
    assert any("ncnn skipped" in r for r in profile.reasons)


def test_x86_with_tensorrt_provider_prefers_it():
    facts = board("intel-pc", providers=["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert classify(facts).chain[:2] == ["tensorrt", "openvino"]


def test_unknown_machine_falls_back_to_onnxruntime():
    assert classify(HardwareFacts(machine="riscv64")).chain[0] == "onnxruntime"


def test_this_machine_probes():
    facts = probe()
    assert facts.machine and set(facts.runtimes) == {"openvino", "onnxruntime", "tensorrt", "ncnn"}
