"""`python -m jobs.ml.data ensure`: the quick start's data step, run as the README runs it.

apt-get is never run for real: SWEEPER_APT_GET (documented in jobs/ml/fetch.py and docs/jobs.md)
names a stand-in that does what the package does, copying the real files into the system
directory, or is empty to switch apt off; a PATH without apt-get covers the real default.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jobs.ml.sources import find_fashion_mnist

from .conftest import cli_env

OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}


def ensure(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.ml.data", "ensure", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def empty_system_dir(tmp_path) -> Path:
    path = tmp_path / "usr-share-datasets-fashion-mnist"
    path.mkdir()
    return path


def fake_apt_get(tmp_path: Path, *, exit_code: int = 0) -> tuple[Path, Path]:
    """An apt-get that logs its arguments and, on install, puts the real files where the package does."""
    log = tmp_path / "apt.log"
    script = tmp_path / "apt-get"
    script.write_text(
        textwrap.dedent(f"""\
            #!{sys.executable}
            import os, shutil, sys
            with open({str(log)!r}, "a") as f:
                f.write(" ".join(sys.argv[1:]) + "\\n")
            if "install" in sys.argv and {exit_code} == 0:
                for name in os.listdir(os.environ["FAKE_APT_FILES"]):
                    shutil.copy(os.path.join(os.environ["FAKE_APT_FILES"], name), os.environ["SWEEPER_FMNIST_SYSTEM_DIR"])
            print("fake apt-get", *sys.argv[1:])
            sys.exit({exit_code})
            """)
    )
    script.chmod(0o755)
    return script, log


def poisoned_torch(tmp_path: Path) -> Path:
    """A directory whose `torch` fails on import: put first on PYTHONPATH, it shows who imports torch."""
    pkg = tmp_path / "poison" / "torch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    return pkg.parent


def test_ensure_finds_the_real_data_without_importing_torch(tmp_path, fmnist_dir):
    poison = poisoned_torch(tmp_path)
    pythonpath = f"{poison}{os.pathsep}{cli_env()['PYTHONPATH']}"
    # the poison works: loading the data module proper does import torch
    loading = subprocess.run(
        [sys.executable, "-c", "import jobs.ml.data"], env=cli_env(PYTHONPATH=pythonpath), capture_output=True, text=True
    )
    assert loading.returncode != 0 and "torch was imported" in loading.stderr

    proc = ensure(
        "--state",
        str(tmp_path / "state"),
        cwd=tmp_path,
        PYTHONPATH=pythonpath,
        SWEEPER_FMNIST_SYSTEM_DIR=str(fmnist_dir),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"Fashion-MNIST: {fmnist_dir} (system package)\n"

    given = Path(shutil.copytree(fmnist_dir, tmp_path / "given"))
    proc = ensure("--data-dir", str(given), cwd=tmp_path, PYTHONPATH=pythonpath, SWEEPER_APT_GET="", **OFFLINE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"Fashion-MNIST: {given} (data_dir)\n"


@pytest.mark.parametrize(
    ("seam", "why_no_apt"),
    [
        ({"SWEEPER_APT_GET": ""}, "switched off (SWEEPER_APT_GET is empty)"),
        ({"PATH": "{tmp}"}, "apt-get is not on this machine (not Debian or Ubuntu)"),  # the real lookup, on a bare PATH
    ],
)
def test_ensure_offline_without_apt_exits_1_with_the_three_ways_and_no_traceback(
    tmp_path, empty_system_dir, seam, why_no_apt
):
    seam = {k: v.format(tmp=tmp_path) for k, v in seam.items()}
    proc = ensure(
        "--state",
        str(tmp_path / "state"),
        cwd=tmp_path,
        SWEEPER_FMNIST_SYSTEM_DIR=str(empty_system_dir),
        **seam,
        **OFFLINE,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    err = proc.stderr
    assert "Traceback" not in err
    assert "Fashion-MNIST is not on this machine, and it could not be fetched:" in err
    assert f"apt-get install dataset-fashion-mnist: {why_no_apt}" in err
    raw = tmp_path / "state" / "data" / "FashionMNIST" / "raw"
    assert f"download into {raw}: http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ is unreachable" in err
    assert "1. apt-get install dataset-fashion-mnist" in err
    assert "2. online, `python -m jobs.ml.data ensure` downloads them" in err
    assert "3. any directory with the four files" in err and "--data-dir DIR" in err


def test_an_apt_install_that_places_the_files_is_then_found(tmp_path, empty_system_dir, fmnist_dir):
    apt, log = fake_apt_get(tmp_path)
    env = {"SWEEPER_APT_GET": str(apt), "FAKE_APT_FILES": str(fmnist_dir), **OFFLINE}
    proc = ensure(
        "--state", str(tmp_path / "state"), cwd=tmp_path, SWEEPER_FMNIST_SYSTEM_DIR=str(empty_system_dir), **env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"Fashion-MNIST: {empty_system_dir} (system package)\n"
    assert log.read_text().splitlines() == ["-q update", "-q -y install --no-install-recommends dataset-fashion-mnist"]
    # progress before each long step, apt's own output after it
    assert "ensure: installing the Debian package dataset-fashion-mnist" in proc.stderr
    assert "fake apt-get -q -y install" in proc.stderr
    # what the jobs look up finds the same directory
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWEEPER_FMNIST_SYSTEM_DIR", str(empty_system_dir))
        assert find_fashion_mnist(state_dir=tmp_path / "state", download=False) == (empty_system_dir, "system package")

    # run again: found at once, apt not called
    proc = ensure(
        "--state", str(tmp_path / "state"), cwd=tmp_path, SWEEPER_FMNIST_SYSTEM_DIR=str(empty_system_dir), **env
    )
    assert proc.returncode == 0 and proc.stderr == ""
    assert len(log.read_text().splitlines()) == 2


def test_a_failed_apt_install_then_no_network_reports_both(tmp_path, empty_system_dir, fmnist_dir):
    apt, log = fake_apt_get(tmp_path, exit_code=100)
    env = {"SWEEPER_APT_GET": str(apt), "FAKE_APT_FILES": str(fmnist_dir), **OFFLINE}
    proc = ensure(
        "--state", str(tmp_path / "state"), cwd=tmp_path, SWEEPER_FMNIST_SYSTEM_DIR=str(empty_system_dir), **env
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "apt-get update failed" in proc.stderr  # not fatal: the install is tried anyway
    assert len(log.read_text().splitlines()) == 2
    assert (
        f"apt-get install dataset-fashion-mnist: `{apt} -q -y install --no-install-recommends dataset-fashion-mnist` exited 100"
        in proc.stderr
    )
    assert "is unreachable" in proc.stderr
    assert not any(empty_system_dir.iterdir())
