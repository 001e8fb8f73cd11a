"""Two cameras per arm: the templated unit ripeye@.service (ripeye@scene, ripeye@wrist), one config, device id and
state dir per instance, sharing models and cache; installed by install.sh next to ripeye.service."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daemon import config, paths
from tests.conftest import REPO
from tests.test_install import fake_board  # noqa: F401  (fixture)

UNIT = REPO / "systemd" / "ripeye.service"
TEMPLATE = REPO / "systemd" / "ripeye@.service"

# The only settings in which an instance differs from ripeye.service; hardening and the rest must not drift.
PER_INSTANCE = {
    "Description": "ripeye tomato-ripeness detection daemon, camera %i (camera -> model -> MQTT)",
    "ExecStart": "/opt/ripeye/venv/bin/ripeye run --config /etc/ripeye/%i.yaml",
    "Environment": "CI=true HOME=/var/lib/ripeye/%i RIPEYE_INSTANCE=%i",
    "StateDirectory": "ripeye/%i",
    "WorkingDirectory": "/var/lib/ripeye/%i",
}


def _analyze():
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    return exe


def _installed(unit: Path, dest: Path) -> Path:
    """The unit as installed, its ExecStart on this checkout's ripeye (`verify` checks that it exists)."""
    ripeye = Path(sys.executable).parent / "ripeye"
    dest.write_text(unit.read_text().replace("/opt/ripeye/venv/bin/ripeye", str(ripeye)))
    return dest


def _settings(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in path.read_text().splitlines()
            if line and not line.startswith(("#", "[")) and "=" in line]


def _instance_file(tmp_path, instance: str) -> Path:
    return _installed(TEMPLATE, tmp_path / f"ripeye@{instance}.service")


def test_the_template_is_the_plain_unit_but_for_the_per_camera_settings():
    plain, template = _settings(UNIT), _settings(TEMPLATE)
    assert [kv for kv in template if kv[0] not in PER_INSTANCE] == [kv for kv in plain if kv[0] not in PER_INSTANCE]
    assert {k: v for k, v in template if k in PER_INSTANCE} == PER_INSTANCE
    assert ("CacheDirectory", "ripeye") in template and ("ConfigurationDirectory", "ripeye") in template  # shared


def test_instance_verifies(tmp_path):
    r = subprocess.run([_analyze(), "verify", str(_instance_file(tmp_path, "wrist"))], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ripeye@" not in r.stderr, r.stderr  # no warnings about our unit


def test_instance_security_exposure_is_the_plain_units(tmp_path):
    def exposure(path):
        r = subprocess.run([_analyze(), "security", "--offline=true", str(path)], capture_output=True, text=True)
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout + r.stderr)
        assert m, r.stdout[-500:] + r.stderr[-500:]
        return float(m.group(1))

    plain = _installed(UNIT, tmp_path / "ripeye.service")
    assert exposure(_instance_file(tmp_path, "scene")) == exposure(plain) <= 3.0


def test_install_sh_installs_the_template_and_one_config_per_instance(fake_board):  # noqa: F811
    root = fake_board.root
    r, _, _ = fake_board("intel-pc", "x86_64", "--service", "--root", str(root), "--prefix", "/srv/ripeye",
                         "--instance", "scene", "--instance", "wrist")
    assert r.returncode == 0, r.stdout + r.stderr
    template = (root / "etc/systemd/system/ripeye@.service").read_text()
    assert "ExecStart=/srv/ripeye/venv/bin/ripeye run --config /etc/ripeye/%i.yaml" in template
    assert (root / "etc/systemd/system/ripeye.service").is_file()  # both forms
    for name in ("scene", "wrist"):
        file = root / f"etc/ripeye/{name}.yaml"
        assert f"installed {file}" in r.stdout
        data = yaml.safe_load(file.read_text())
        assert data["state_dir"] == f"/var/lib/ripeye/{name}" and data["runtime"]["cache_dir"] == "/var/cache/ripeye"
        assert data["model"]["path"] == "/srv/ripeye/app/models/tomato-yolo11n"  # shared
        assert "device_id" not in data  # <hostname>-<instance> by default
        assert config.load(file).state_dir == f"/var/lib/ripeye/{name}"
    assert yaml.safe_load((root / "etc/ripeye/ripeye.yaml").read_text())["state_dir"] == "/var/lib/ripeye"
    # a user's edit survives a second install; uninstall removes the template too, --purge the instance configs
    wrist = root / "etc/ripeye/wrist.yaml"
    wrist.write_text(wrist.read_text() + "\n# my edit\n")
    r, _, _ = fake_board("intel-pc", "x86_64", "--service", "--root", str(root), "--instance", "wrist")
    assert r.returncode == 0 and f"kept existing {wrist}" in r.stdout and "# my edit" in wrist.read_text()
    r, _, _ = fake_board(None, "x86_64", "--uninstall", "--purge", "--root", str(root))
    assert r.returncode == 0 and not (root / "etc/systemd/system/ripeye@.service").exists() and not wrist.exists()


def test_install_sh_refuses_an_instance_name_that_is_not_a_plain_word(fake_board):  # noqa: F811
    r, _, _ = fake_board("intel-pc", "x86_64", "--service", "--root", str(fake_board.root), "--instance", "a/b")
    assert r.returncode == 2 and "--instance wants a name" in r.stderr


def test_jetson_drop_in_reaches_the_instances_too(fake_board):  # noqa: F811
    r, _, _ = fake_board("jetson-orin", "aarch64", "--service", "--root", str(fake_board.root), "--instance", "wrist")
    assert r.returncode == 0, r.stdout + r.stderr
    units = fake_board.root / "etc/systemd/system"
    assert (units / "ripeye@.service.d/jetson.conf").read_text() == (units / "ripeye.service.d/jetson.conf").read_text()


def test_each_instance_publishes_under_its_own_device_id(monkeypatch):
    """The unit's Environment=RIPEYE_INSTANCE=%i gives <hostname>-<instance> (daemon.paths.default_device_id)."""
    monkeypatch.setattr(paths.socket, "gethostname", lambda: "arm1")
    ids = set()
    for instance in ("scene", "wrist"):
        monkeypatch.setenv("RIPEYE_INSTANCE", instance)
        ids.add(paths.default_device_id())
    assert ids == {"arm1-scene", "arm1-wrist"}
