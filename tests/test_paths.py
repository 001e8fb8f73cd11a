"""daemon.paths: which config, model folder and device id a command uses when none is named, in a checkout and in an
installed copy (site-packages without models/, the app in PREFIX/app beside the venv PREFIX/venv)."""

import sys

import pytest

from daemon import paths


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """This process as an install.sh --service copy: the package in PREFIX/venv/lib/…/site-packages, no checkout
    around it, sys.prefix = PREFIX/venv, and /etc/ripeye/ripeye.yaml stood in under tmp_path."""
    prefix = tmp_path / "opt" / "ripeye"
    site = prefix / "venv" / "lib" / "python3" / "site-packages"
    (site / "daemon").mkdir(parents=True)
    monkeypatch.setattr(paths, "CHECKOUT_DIR", site)
    monkeypatch.setattr(sys, "prefix", str(prefix / "venv"))
    etc = tmp_path / "etc" / "ripeye" / "ripeye.yaml"
    monkeypatch.setattr(paths, "ETC_CONFIG", etc)
    monkeypatch.delenv(paths.CONFIG_ENV, raising=False)
    monkeypatch.delenv(paths.INSTANCE_ENV, raising=False)
    return prefix, etc


def test_this_checkout_is_a_checkout_and_an_install_is_not(installed):
    assert not paths.is_checkout()
    from daemon import config

    assert (config.REPO_DIR / "pyproject.toml").is_file()  # the tests run from a checkout


def test_installed_copy_reads_the_services_config_when_it_exists(installed, capsys):
    _, etc = installed
    assert paths.default_config_path() == (None, f"built-in defaults (no --config, no $RIPEYE_CONFIG, no {etc})")
    etc.parent.mkdir(parents=True)
    etc.write_text("device_id: box\n")
    assert paths.default_config_path() == (etc, "the installed service's config")
    assert paths.resolve_config(None) == str(etc)
    assert capsys.readouterr().err == f"config: {etc} (the installed service's config)\n"
    assert paths.resolve_config("my.yaml") == "my.yaml" and capsys.readouterr().err == ""  # --config wins, silently


def test_ripeye_config_env_wins_even_over_etc_and_in_a_checkout(installed, tmp_path, monkeypatch, capsys):
    _, etc = installed
    etc.parent.mkdir(parents=True)
    etc.write_text("{}\n")
    mine = tmp_path / "wrist.yaml"
    monkeypatch.setenv(paths.CONFIG_ENV, str(mine))
    assert paths.default_config_path() == (mine, "$RIPEYE_CONFIG")  # named even before it exists: loading says so
    assert paths.resolve_config(None) == str(mine)
    assert capsys.readouterr().err == f"config: {mine} ($RIPEYE_CONFIG)\n"
    monkeypatch.setattr(paths, "CHECKOUT_DIR", paths.PACKAGE_DIR.parent)
    assert paths.default_config_path() == (mine, "$RIPEYE_CONFIG")


def test_a_checkout_never_reads_etc_on_its_own(installed, monkeypatch, capsys):
    _, etc = installed
    etc.parent.mkdir(parents=True)
    etc.write_text("{}\n")
    monkeypatch.setattr(paths, "CHECKOUT_DIR", paths.PACKAGE_DIR.parent)
    path, why = paths.default_config_path()
    assert path is None and "source checkout" in why and str(etc) in why
    assert paths.resolve_config(None) is None
    assert capsys.readouterr().err.startswith("config: built-in defaults (a source checkout")


def test_default_model_dir_is_the_installed_app_not_site_packages(installed):
    prefix, _ = installed
    shipped = prefix / "app" / "models" / "tomato-yolo11n"
    assert paths.default_model_dir() == paths.CHECKOUT_DIR / "models" / "tomato-yolo11n"  # nothing there yet
    shipped.mkdir(parents=True)
    assert paths.default_model_dir() == shipped


def test_default_model_dir_in_this_checkout_is_unchanged():
    from daemon.config import DEFAULT_MODEL_DIR

    assert paths.default_model_dir() == DEFAULT_MODEL_DIR


def test_device_id_is_host_then_instance(installed, monkeypatch):
    monkeypatch.setattr(paths.socket, "gethostname", lambda: "arm1.greenhouse.lan")
    assert paths.default_device_id() == "arm1"
    monkeypatch.setenv(paths.INSTANCE_ENV, "wrist")
    assert paths.default_device_id() == "arm1-wrist"
    from daemon import config

    assert config.validate({"device_id": paths.default_device_id()}).device_id == "arm1-wrist"  # topic-safe


def test_doctor_without_config_says_which_file_it_read(tmp_path):
    """Once daemon/cli.py resolves a missing --config through daemon.paths (issue 31, item 2)."""
    import os
    import subprocess

    from tests.conftest import REPO, RIPEYE

    if "resolve_config" not in (REPO / "daemon" / "cli.py").read_text():
        pytest.skip("daemon/cli.py does not use daemon.paths.resolve_config yet")
    cfg = tmp_path / "wrist.yaml"
    cfg.write_text("device_id: fromenv\nmqtt:\n  enabled: false\n")
    r = subprocess.run([*RIPEYE, "doctor", "--json"], capture_output=True, text=True, cwd=REPO, timeout=120,
                       env={**os.environ, "CI": "true", paths.CONFIG_ENV: str(cfg)})
    assert f"config: {cfg} ($RIPEYE_CONFIG)" in r.stderr.splitlines(), r.stderr[-1000:]
