"""Where kdmkb finds Prometheus, and ``kdmkb tools prometheus`` with stand-ins for apt-get and dpkg (no network)."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from kdmkb.services import prometheus
from kdmkb.services.cli import Exit, app
from kdmkb.services.errors import ConfigError, PreconditionError
from kdmkb.services.prometheus import TOOLS_ENV, install_prometheus, prometheus_tool

# apt-get download writes the package into the current folder; "update" succeeds; $APT_FAIL makes download fail.
APT_GET = """#!/bin/sh
[ "$1" = update ] && { echo update >> "$APT_LOG"; exit 0; }
[ -n "$APT_FAIL" ] && { echo "E: Unable to locate package prometheus" >&2; exit 100; }
echo deb > prometheus_2.45.3+ds-2_amd64.deb
"""
# dpkg -x PACKAGE TARGET: unpacks the two binaries.
DPKG = """#!/bin/sh
PATH=/usr/bin:/bin
mkdir -p "$3/usr/bin" && echo prometheus > "$3/usr/bin/prometheus" && echo promtool > "$3/usr/bin/promtool"
"""


def _executable(folder, name, text="#!/bin/sh\n"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    (folder / name).chmod(0o755)
    return folder / name


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Empty project and user folders, a PATH of one empty folder, no $KDMKB_PROMETHEUS_BIN."""
    monkeypatch.setattr(prometheus, "PROJECT_TOOLS", tmp_path / "project" / "usr" / "bin")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setenv("APT_LOG", str(tmp_path / "apt.log"))
    monkeypatch.delenv(TOOLS_ENV, raising=False)
    monkeypatch.delenv("APT_FAIL", raising=False)
    (tmp_path / "path").mkdir()
    return {"env": tmp_path / "env", "project": tmp_path / "project" / "usr" / "bin", "user": tmp_path / "data" / "kdmkb" / "prometheus" / "usr" / "bin", "path": tmp_path / "path"}


def test_prometheus_is_looked_up_in_the_env_folder_then_the_project_then_the_user_folder_then_the_path(places, monkeypatch):
    with pytest.raises(ConfigError, match="run `kdmkb tools prometheus`"):
        prometheus_tool("prometheus")
    expected = []
    for place in ("path", "user", "project"):
        expected.append(_executable(places[place], "prometheus"))
        assert prometheus_tool("prometheus") == expected[-1], place
    monkeypatch.setenv(TOOLS_ENV, str(places["env"]))
    assert prometheus_tool("prometheus") == expected[0]  # the env folder replaces the project and user folders, not the PATH
    in_env = _executable(places["env"], "prometheus")
    assert prometheus_tool("prometheus") == in_env


def test_install_unpacks_the_package_into_the_user_folder_replacing_what_was_there(places):
    _executable(places["path"], "apt-get", APT_GET)
    _executable(places["path"], "dpkg", DPKG)
    stale = _executable(places["user"], "stale")
    assert install_prometheus() == places["user"]
    assert not stale.exists() and (places["user"] / "promtool").read_text() == "promtool\n"
    assert prometheus_tool("prometheus") == places["user"] / "prometheus"
    assert [path.name for path in places["user"].parents[2].iterdir()] == ["prometheus"]  # the work folder is gone


def test_a_failed_download_names_apt_get_and_leaves_the_folder_alone(places, monkeypatch, tmp_path):
    _executable(places["path"], "apt-get", APT_GET)
    _executable(places["path"], "dpkg", DPKG)
    kept = _executable(places["user"], "prometheus")
    monkeypatch.setenv("APT_FAIL", "1")
    with pytest.raises(PreconditionError, match="apt-get download prometheus` failed: E: Unable to locate package prometheus"):
        install_prometheus()
    assert kept.is_file()
    assert (tmp_path / "apt.log").is_file() == (os.geteuid() == 0)  # only root may run apt-get update


def test_the_command_says_what_is_missing_and_how_to_point_kdmkb_at_another_folder(places, tmp_path):
    _executable(places["path"], "dpkg", DPKG)
    result = CliRunner().invoke(app, ["tools", "prometheus"])
    assert result.exit_code == Exit.ERROR, result.output
    assert "apt-get not found" in result.output and TOOLS_ENV in result.output and "Traceback" not in result.output
    _executable(places["path"], "apt-get", APT_GET)
    result = CliRunner().invoke(app, ["tools", "prometheus", "--dir", str(tmp_path / "elsewhere")])
    assert result.exit_code == 0, result.output
    assert f"export {TOOLS_ENV}={tmp_path / 'elsewhere' / 'usr' / 'bin'}" in result.output
