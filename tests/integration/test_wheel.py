"""The built wheel, installed into a fresh venv: one ``kdmkb`` namespace, its data inside, and a working CLI.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation``) from a clean copy of what
the build reads (pyproject.toml, the README and the package folders pyproject.toml maps), so that a
stale ``build/`` or ``*.egg-info`` of the working tree cannot leak into it and the build writes nothing
into the repository. The fresh venv sees the dependencies through a ``.pth`` file naming the running
interpreter's site-packages: a plain path line there does not run that folder's own ``.pth`` files, so
the editable install of the repository stays off and ``kdmkb`` can only come from the wheel.

The commands run with decoy top-level ``services``, ``protos``, ``kb_worker`` and ``coordinator``
packages first on ``PYTHONPATH`` (the Ray workers inherit it): importing one by its bare name records
the import and fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("services", "protos", "kb_worker", "coordinator")
REPORT_METRICS = {"mrr", "mr", "hits@1", "hits@3", "hits@10"}
DECOY_LOG = "DECOY_IMPORTED"
DECOY = f'''import os
from pathlib import Path

with (Path(__file__).resolve().parents[1] / "{DECOY_LOG}").open("a", encoding="utf-8") as log:
    log.write(f"{{__name__}} pid={{os.getpid()}}\\n")
raise ImportError(f"decoy top-level package {{__name__!r}} imported: kdmkb must import kdmkb.{{__name__}}")
'''


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that points Python or Ray elsewhere."""
    env = {key: value for key, value in os.environ.items() if key not in {"RAY_ADDRESS", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV"}}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", NO_COLOR="1", TERM="dumb", COLUMNS="200", KDMKB_LOG_LEVEL="WARNING")
    env.update(extra)
    return env


def _show(result: subprocess.CompletedProcess) -> str:
    return f"\n$ {' '.join(map(str, result.args))}\nexit code {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def _run(args: list, *, timeout: float, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs a command in its own process group; on timeout kills the group (a local Ray included) and fails with the output so far."""
    args = [str(arg) for arg in args]
    process = subprocess.Popen(args, cwd=cwd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"timed out after {timeout} s" + _show(subprocess.CompletedProcess(args, process.returncode, stdout, stderr)))
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def _check(args: list, *, timeout: float, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    result = _run(args, timeout=timeout, cwd=cwd, env=env)
    assert result.returncode == 0, _show(result)
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built offline from a clean copy of its sources."""
    import shutil

    pyproject = _pyproject()
    source = tmp_path_factory.mktemp("wheel-source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache")
    for folder in sorted(set(pyproject["tool"]["setuptools"]["package-dir"].values())):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    readme = pyproject["project"].get("readme")
    readme = readme.get("file") if isinstance(readme, dict) else readme
    for name in ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "LICENSE", readme):
        if name and (ROOT / name).is_file():
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir", "-w", out, source], timeout=300)
    wheels = list(out.glob("kdmkb-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_one_kdmkb_namespace_with_its_data(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        top_level = archive.read(f"{dist_info}/top_level.txt").decode().split() if f"{dist_info}/top_level.txt" in names else ["kdmkb"]
    assert {name.split("/")[0] for name in names} == {"kdmkb", dist_info}, sorted({name.split("/")[0] for name in names})
    assert top_level == ["kdmkb"], top_level
    assert not [name for name in names if name.split("/")[0] in ROOMS]
    python = [name for name in names if name.endswith(".py")]
    assert python and all(name.startswith("kdmkb/") for name in python), [name for name in python if not name.startswith("kdmkb/")]
    assert {"kdmkb/__init__.py", "kdmkb/__main__.py"} <= set(names)
    assert "kdmkb = kdmkb.services.cli:app" in entry_points, entry_points

    packages = _pyproject()["tool"]["setuptools"]["packages"]
    missing_packages = [package for package in packages if package.replace(".", "/") + "/__init__.py" not in names]
    assert not missing_packages, f"packages without their __init__.py in the wheel: {missing_packages}"

    # Data the code reads at run time: every packaged dataset file and every .proto, under kdmkb/<room>/.
    data = [path for path in (ROOT / "services" / "datasets").rglob("*") if path.is_file() and path.suffix in {".tsv", ".gz", ".md"}]
    data += list((ROOT / "protos").rglob("*.proto"))
    # The monitoring configuration (`kdmkb cluster up` reads the alert rules), installed as kdmkb/deploy/.
    data += [path for path in (ROOT / "deploy").rglob("*") if path.is_file() and path.suffix in {".yml", ".json"}]
    assert (ROOT / "services/datasets/umls/train.tsv") in data and any(path.suffix == ".proto" for path in data)
    assert {"kdmkb/deploy/prometheus/alerts.yml", "kdmkb/deploy/grafana/dashboards/kdmkb.json"} <= set(names)
    missing = sorted(f"kdmkb/{path.relative_to(ROOT).as_posix()}" for path in data if f"kdmkb/{path.relative_to(ROOT).as_posix()}" not in names)
    assert not missing, f"{len(missing)} data files missing from {wheel.name}: {missing}"


def test_the_wheel_names_its_license_and_keeps_build_tools_out_of_the_runtime(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{dist_info}/METADATA").decode().splitlines()
        license_text = archive.read(f"{dist_info}/licenses/LICENSE").decode()
    assert "License-Expression: MIT" in metadata and license_text.startswith("MIT License")
    requires = [line.removeprefix("Requires-Dist: ") for line in metadata if line.startswith("Requires-Dist: ")]
    assert "grpcio-status<2,>=1.85.1" in requires and "torch==2.13.0" in requires
    assert [line for line in requires if line.startswith("grpcio-tools")] == ['grpcio-tools==1.85.1; extra == "dev"'], requires


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> dict:
    """A new venv of the base interpreter with the wheel installed and the dependencies visible through a .pth file."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    base = getattr(sys, "_base_executable", None) or sys.executable
    _check([base, "-m", "venv", venv], timeout=300)
    python = venv / "bin" / "python"
    site_packages = Path(_check([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], timeout=60).stdout.strip())
    assert site_packages.is_dir() and site_packages.is_relative_to(venv), site_packages
    # The wheel first: with the dependencies already visible, pip would see the editable kdmkb as installed.
    _check([python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir", wheel], timeout=300)
    dependencies = dict.fromkeys(sysconfig.get_path(key) for key in ("purelib", "platlib"))
    (site_packages / "zz_kdmkb_test_dependencies.pth").write_text("".join(f"{path}\n" for path in dependencies), encoding="utf-8")
    return {"venv": venv, "python": python, "script": venv / "bin" / "kdmkb", "site_packages": site_packages}


@pytest.fixture
def decoys(tmp_path) -> Path:
    """A working folder whose top-level ``services``, ``protos``, ``kb_worker`` and ``coordinator`` packages log and fail when imported."""
    folder = tmp_path / "cwd"
    for room in ROOMS:
        (folder / room).mkdir(parents=True)
        (folder / room / "__init__.py").write_text(DECOY, encoding="utf-8")
    return folder


def _decoy_env(decoys: Path) -> dict[str, str]:
    return _env(PYTHONPATH=str(decoys))


def _assert_no_decoy_imported(decoys: Path) -> None:
    log = decoys / DECOY_LOG
    assert not log.exists(), f"bare room packages were imported:\n{log.read_text()}"


IMPORTS = """
import importlib, importlib.metadata, json, sys
import kdmkb
modules = ["kdmkb", "kdmkb.services", "kdmkb.services.cli", "kdmkb.services.datasets", "kdmkb.protos.kdmkb.coordinator.v1.coordinator_pb2",
           "kdmkb.protos.kdmkb.exchange.v1.queries_pb2", "kdmkb.kb_worker", "kdmkb.coordinator", "kdmkb.coordinator.service"]
files = {name: importlib.import_module(name).__file__ for name in modules}
from kdmkb.services.datasets import dataset_dir
print(json.dumps({
    "files": files,
    "version": kdmkb.__version__,
    "dist": str(importlib.metadata.distribution("kdmkb").locate_file("")),
    "umls": str(dataset_dir("umls") / "train.tsv"),
    "editable": sorted(name for name in sys.modules if "editable" in name),
    "bare": sorted(name for name in sys.modules if name.split(".")[0] in ("services", "protos", "kb_worker", "coordinator")),
}))
"""


def test_the_installed_package_comes_from_the_wheel(fresh_venv, decoys):
    result = _check([fresh_venv["python"], "-c", IMPORTS], cwd=decoys, env=_decoy_env(decoys), timeout=300)
    _assert_no_decoy_imported(decoys)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    site_packages = fresh_venv["site_packages"].resolve()
    for name, file in found["files"].items():
        path = Path(file).resolve()
        assert path.is_relative_to(site_packages / "kdmkb"), (name, file, "expected inside", site_packages)
        assert not path.is_relative_to(ROOT), (name, file, "imported from the repository")
    assert Path(found["dist"]).resolve() == site_packages, found["dist"]
    assert found["version"] == _pyproject()["project"]["version"], found
    assert found["editable"] == [] and found["bare"] == [], found
    assert Path(found["umls"]).is_file(), f"packaged dataset not installed: {found['umls']}"


ALERT_RULES = "from kdmkb.services.cluster import ALERT_RULES; print(ALERT_RULES)"


def test_cluster_up_finds_its_alert_rules_in_the_installed_package(fresh_venv, decoys):
    result = _check([fresh_venv["python"], "-c", ALERT_RULES], cwd=decoys, env=_decoy_env(decoys), timeout=300)
    _assert_no_decoy_imported(decoys)
    rules = result.stdout.strip().splitlines()[-1]
    installed = fresh_venv["site_packages"].resolve() / "kdmkb" / "deploy" / "prometheus" / "alerts.yml"
    assert Path(rules).resolve() == installed, rules
    assert installed.read_text(encoding="utf-8") == (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text(encoding="utf-8")


def test_python_dash_m_kdmkb_help(fresh_venv, decoys):
    result = _check([fresh_venv["python"], "-m", "kdmkb", "--help"], cwd=decoys, env=_decoy_env(decoys), timeout=300)
    _assert_no_decoy_imported(decoys)
    for command in ("demo", "split", "run", "serve"):
        assert command in result.stdout, _show(result)


@pytest.mark.slow  # a local Ray and two 2-round jobs on umls: about a minute
def test_the_installed_script_runs_the_demo(fresh_venv, decoys):
    result = _run([fresh_venv["script"], "demo", "--kbs", "2", "--rounds", "2", "--report", "r.json"], cwd=decoys, env=_decoy_env(decoys), timeout=540)
    if result.returncode != 0 or not (decoys / "r.json").is_file():
        print(_show(result))
    assert result.returncode == 0, _show(result)
    _assert_no_decoy_imported(decoys)
    assert (decoys / "r.json").is_file(), _show(result)
    report = json.loads((decoys / "r.json").read_text(encoding="utf-8"))
    assert report["dataset"] == "umls" and report["strategy"] == "cooperative", report
    assert report["state"] == "SUCCEEDED" and report["rounds"] == 2, report
    for job in (report, report["baseline"]):
        assert len(job["kbs"]) == 2, job
        for kb, metrics in job["kbs"].items():
            assert set(metrics) == REPORT_METRICS | {"by_degree"}, (kb, metrics)
            assert 0 < metrics["mrr"] <= 1 and metrics["mr"] >= 1, (kb, metrics)
            assert 0 <= metrics["hits@1"] <= metrics["hits@3"] <= metrics["hits@10"] <= 1, (kb, metrics)
    assert set(report["baseline"]["kbs"]) == set(report["kbs"]), report
    assert "report written to r.json" in result.stdout, _show(result)
