"""Fashion-MNIST loading: the real IDX files, the three sources in order, clear errors, the cache."""

from __future__ import annotations

import gzip
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from jobs.ml import data
from jobs.ml.data import DataCorrupt, DataNotFound, fashion_mnist, find_fashion_mnist, load_dataset, read_idx
from sweeper.context import JobFailed

from .conftest import run_cli

# A proxy on a closed port: the torchvision download really runs and really fails, fast, online or not.
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}


@pytest.fixture
def nowhere(tmp_path, monkeypatch) -> Path:
    """No system copy and no network: only what a test puts in place can be found."""
    empty = tmp_path / "no-system-copy"
    empty.mkdir()
    monkeypatch.setenv("SWEEPER_FMNIST_SYSTEM_DIR", str(empty))
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    return empty


@pytest.fixture
def fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


def test_real_fashion_mnist_loads_as_normalized_tensors_with_the_official_shapes(fmnist_dir, fresh_cache):
    ds = fashion_mnist(data_dir=fmnist_dir)
    assert ds.train.x.shape == (60000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert abs(ds.train.x.mean().item()) < 0.01 and abs(ds.train.x.std().item() - 1) < 0.01
    assert torch.bincount(ds.train.y).tolist() == [6000] * 10
    assert torch.bincount(ds.test.y).tolist() == [1000] * 10
    # the first training image is an ankle boot (label 9) in the official files
    assert ds.train.y[0].item() == 9


def test_the_dataset_is_loaded_once_per_process_and_subsets_are_views(fmnist_dir, fresh_cache):
    first = load_dataset("fashion-mnist", data_dir=fmnist_dir, train_subset=10000, test_subset=2000)
    second = load_dataset("fashion-mnist", data_dir=fmnist_dir)
    assert len(first.train) == 10000 and len(first.test) == 2000
    assert first.train.x.data_ptr() == second.train.x.data_ptr()  # the same memory, not a reload or a copy
    assert torch.equal(first.test.y, second.test.y[:2000])


def test_data_dir_comes_first_then_the_system_package_then_a_download(tmp_path, nowhere, fmnist_dir):
    given = tmp_path / "given"
    shutil.copytree(fmnist_dir, given)
    state = tmp_path / "state"
    assert find_fashion_mnist(data_dir=given, state_dir=state) == (given, "data_dir")

    system = Path(shutil.copytree(fmnist_dir, tmp_path / "system"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWEEPER_FMNIST_SYSTEM_DIR", str(system))
        assert find_fashion_mnist(data_dir=None, state_dir=state) == (system, "system package")
        assert find_fashion_mnist(data_dir=tmp_path / "missing", state_dir=state) == (system, "system package")

    # torchvision leaves its download in <state>/data/FashionMNIST/raw, uncompressed next to the .gz
    raw = state / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in fmnist_dir.glob("*.gz"):
        with gzip.open(gz) as src, open(raw / gz.name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert find_fashion_mnist(data_dir=None, state_dir=state) == (raw, "downloaded earlier")
    labels = read_idx(raw / "t10k-labels-idx1-ubyte")
    assert torch.equal(labels, read_idx(fmnist_dir / "t10k-labels-idx1-ubyte.gz"))


def test_no_data_anywhere_names_all_three_sources_and_how_to_get_each(tmp_path, nowhere):
    with pytest.raises(DataNotFound) as caught:
        find_fashion_mnist(data_dir=tmp_path / "mine", state_dir=tmp_path / "state")
    message = caught.value.message
    assert f"1. data_dir {tmp_path / 'mine'}: no such directory" in message
    assert f"2. {nowhere}: missing train-images-idx3-ubyte[.gz]" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert f"3. download into {tmp_path / 'state' / 'data' / 'FashionMNIST' / 'raw'}: failed" in message
    assert "--data-dir" in message
    assert isinstance(caught.value, JobFailed) and caught.value.retry is False


def test_a_job_without_data_fails_at_once_and_status_and_the_log_say_what_to_run(tmp_path, nowhere):
    grid = tmp_path / "grid.yaml"
    grid.write_text(textwrap.dedent("sweep: nodata\nstages:\n  t: {kind: train}\n"))
    state = tmp_path / "state"
    assert run_cli("enqueue", str(grid), "--state", str(state)).returncode == 0
    env = {"SWEEPER_FMNIST_SYSTEM_DIR": str(nowhere), **OFFLINE}
    proc = run_cli("work", "--state", str(state), "--no-tracking", "--retry-backoff", "0", **env)
    assert proc.returncode == 0, proc.stderr
    engine = sa.create_engine(f"sqlite:///{state / 'queue.db'}")
    with engine.connect() as conn:
        job = conn.execute(sa.text("select id, status, attempt, error from jobs")).mappings().one()
    engine.dispose()
    assert job["status"] == "failed" and job["attempt"] == 1
    assert "Fashion-MNIST not found" in job["error"] and "apt-get install dataset-fashion-mnist" in job["error"]
    assert "Traceback" not in job["error"]

    # Only the first line reaches the worker log and `sweeper status`: it names what to run.
    one_line = (
        "Fashion-MNIST not found: run `python -m jobs.ml.data ensure` "
        "(or apt-get install dataset-fashion-mnist, or sweeper work --data-dir DIR)"
    )
    assert f"job {job['id']} raised: {one_line} -> failed" in proc.stderr
    status = run_cli("status", "--state", str(state), COLUMNS="200")
    assert status.returncode == 0 and f"{job['id']}   t       {one_line}" in status.stdout
    assert "Looked in" not in status.stdout
    status_json = json.loads(run_cli("status", "--state", str(state), "--json").stdout)
    assert [f["error"] for f in status_json["failed"]] == [one_line]
    # `sweeper show` gives the rest: every place looked in, and the three ways, once each
    show = run_cli("show", job["id"], "--state", str(state)).stdout
    assert show.count(one_line) == 1
    assert f"2. {nowhere}: missing" in show and "Get it one of three ways:" in show


@pytest.fixture
def labels_copy(tmp_path, fmnist_dir) -> Path:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    shutil.copy(fmnist_dir / path.name, path)
    return path


def test_a_truncated_gzip_file_is_reported_as_corrupted(labels_copy):
    blob = labels_copy.read_bytes()
    labels_copy.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataCorrupt, match=r"t10k-labels-idx1-ubyte.gz is corrupted: cannot read it .*fresh copy"):
        read_idx(labels_copy)


def test_a_file_that_is_not_idx_is_reported_as_corrupted(labels_copy):
    labels_copy.write_bytes(gzip.compress(b"<html>404 not found</html>"))
    with pytest.raises(DataCorrupt, match="is corrupted: not an IDX file"):
        read_idx(labels_copy)


def test_an_idx_file_shorter_than_its_header_says_is_reported_as_corrupted(labels_copy):
    content = gzip.decompress(labels_copy.read_bytes())
    labels_copy.write_bytes(gzip.compress(content[:-100]))
    with pytest.raises(DataCorrupt, match=r"header says shape \(10000,\) \(10000 values\) but it holds fewer"):
        read_idx(labels_copy)


def test_a_corrupted_file_in_the_chosen_directory_fails_the_load(tmp_path, fmnist_dir, fresh_cache):
    given = Path(shutil.copytree(fmnist_dir, tmp_path / "given"))
    (given / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataCorrupt, match=r"train-labels-idx1-ubyte\.gz is corrupted"):
        fashion_mnist(data_dir=given)


def test_synthetic_data_is_deterministic_and_fashion_mnist_shaped(fresh_cache):
    first = load_dataset("synthetic", train_subset=500, test_subset=100)
    data.clear_cache()
    second = load_dataset("synthetic", train_subset=500, test_subset=100)
    assert first.train.x.shape == (500, 1, 28, 28) and first.test.x.shape == (100, 1, 28, 28)
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    assert set(first.train.y.tolist()) == set(range(10))


def test_an_unknown_dataset_is_a_clear_error():
    with pytest.raises(JobFailed, match="unknown dataset 'cifar'; use fashion-mnist or synthetic"):
        load_dataset("cifar")
