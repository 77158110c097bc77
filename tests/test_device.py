"""`device: auto | cpu | cuda` of train and prune (jobs/ml/device.py): checkpoints resume on any device.

A job trains on one device until it is stopped; its checkpoint goes through the real store
(torch.save, sha256, weights_only load with map_location="cpu") and resumes on the other device
with exactly the weights it saved, then finishes. On this machine both sides are the CPU; where
CUDA is present the cuda -> cpu and cpu -> cuda variants run for real. Across devices the run is
not bit-identical to an uninterrupted one (other kernels), so those variants check the exact
hand-over and a finished, sane run; CPU -> CPU is also checked against an uninterrupted run.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
import torch

import jobs.ml.device as device_module
from jobs.kinds import train as train_kind
from jobs.ml.data import Dataset, Split, load_dataset
from jobs.ml.device import job_numerics, numerics, on_device, pick_device
from jobs.ml.model import Arch, Conv, build
from jobs.ml.training import LoopConfig, TrainState, evaluate, fit, make_optimizer
from sweeper.context import Interrupted, JobContext, JobFailed

from .conftest import run_cli
from .onejob import Job, one_thread  # noqa: F401  (an autouse fixture)

CUDA = torch.cuda.is_available()
ARCH = Arch(Conv(8, 3), Conv(8, 3), 32)
CFG = LoopConfig(epochs=2, batch_size=32, seed=3, checkpoint_every_s=1e9, log_every=5, target_train_acc=0.7)
PAIRS = [
    ("cpu", "cpu"),
    pytest.param("cuda", "cpu", marks=pytest.mark.skipif(not CUDA, reason="no CUDA GPU here")),
    pytest.param("cpu", "cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA GPU here")),
    pytest.param("cuda", "cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA GPU here")),
]


@pytest.fixture(scope="module")
def cpu_data():
    return load_dataset("synthetic", train_subset=800, test_subset=200)


def attempt(ctx: JobContext, cpu_data, device: str, *, stop_after: int | None = None, init_seed: int = 0):
    """One attempt as kind train runs it: data and model on `device`, resumed from the checkpoint if any."""
    dev = pick_device(device)
    data = on_device(cpu_data, dev)
    model = build(ARCH, "xavier_uniform", init_seed).to(dev)
    optimizer = make_optimizer(model, lr=0.05, momentum=0.9)
    steps = [0]

    def count(_model: torch.nn.Module) -> None:
        steps[0] += 1
        if stop_after is not None and steps[0] == stop_after:
            ctx.request_stop()

    with job_numerics(dev):  # as the job kinds train: deterministic kernels on a GPU
        result = fit(ctx, model, optimizer, data.train, data.test, CFG, checkpoint=ctx.restore(), after_step=count)
    return model, data, result


def cpu_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_checkpoint_saved_on_one_device_resumes_on_another_with_the_same_weights(tmp_path, cpu_data, first, second):
    job = Job(tmp_path / "job")
    # 1. train on the first device and stop mid-epoch: the checkpoint is written through the real store
    model, _, result = attempt(job.attempt(), cpu_data, first, stop_after=9)
    assert isinstance(result, Interrupted)
    assert next(model.parameters()).device.type == first
    saved = cpu_weights(model)
    # the file holds CPU tensors only: it loads without map_location on a machine without a GPU
    raw = torch.load(job.newest_checkpoint_file(), weights_only=True)
    tensors = [*raw["model"].values(), *(b for b in raw["optimizer"]["momentum_buffers"] if b is not None)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    for name, tensor in saved.items():
        assert torch.equal(raw["model"][name], tensor), f"{name}: the checkpoint is not the trained weights"

    # 2. resume on the second device (another init seed: what is restored must win); stop before
    #    its first batch, so the model holds exactly what was restored
    ctx = job.attempt()
    ctx.request_stop()
    model, _, result = attempt(ctx, cpu_data, second, init_seed=99)
    assert isinstance(result, Interrupted)
    assert next(model.parameters()).device.type == second
    for name, tensor in cpu_weights(model).items():
        assert torch.equal(tensor, saved[name]), f"{name} changed on the way from {first} to {second}"

    # 3. ... and finish there
    model, data, state = attempt(job.attempt(), cpu_data, second, init_seed=7)
    assert isinstance(state, TrainState)
    assert state.epoch == CFG.epochs and state.step == CFG.epochs * state.batches_per_epoch
    _, acc = evaluate(model, data.test.x, data.test.y)

    # against an uninterrupted run on the second device: on one device bit-identical; across
    # devices only the rounding differs, so the accuracy lands close
    ref_model, _, ref = attempt(Job(tmp_path / "ref").attempt(), cpu_data, second)
    assert isinstance(ref, TrainState) and ref.step == state.step
    _, ref_acc = evaluate(ref_model, data.test.x, data.test.y)
    if first == second:
        for name, tensor in cpu_weights(ref_model).items():
            assert torch.equal(tensor, cpu_weights(model)[name]), f"{name} differs from the uninterrupted run"
        assert acc == ref_acc
    else:
        assert abs(acc - ref_acc) <= 0.05, (acc, ref_acc)
    assert acc > 0.2  # well above chance (0.1): it learned


def test_device_cuda_without_a_gpu_fails_the_job_without_retries(tmp_path):
    """CUDA_VISIBLE_DEVICES="" hides every GPU, so this runs the same on a GPU machine."""
    grid = tmp_path / "g.yaml"
    grid.write_text(
        "sweep: dev\ndefaults: {dataset: synthetic, train_subset: 64, test_subset: 32, max_epochs: 1}\n"
        "stages:\n  gpu: {kind: train, max_failures: 3, params: {device: cuda}}\n"
        "  fine: {kind: train, params: {device: auto}}\n"
    )
    state = tmp_path / "state"
    assert run_cli("enqueue", str(grid), "--state", str(state)).returncode == 0
    proc = run_cli(
        "work",
        "--workers",
        "1",
        "--state",
        str(state),
        "--no-tracking",
        "--retry-backoff",
        "0",
        CUDA_VISIBLE_DEVICES="",
    )
    assert proc.returncode == 0, proc.stderr
    engine = sa.create_engine(f"sqlite:///{state / 'queue.db'}")
    with engine.connect() as conn:
        rows = {
            r["stage"]: r
            for r in conn.execute(sa.text("select stage, status, attempt, error, result from jobs")).mappings()
        }
    engine.dispose()
    assert rows["gpu"]["status"] == "failed" and rows["gpu"]["attempt"] == 1, rows["gpu"]
    assert "device: cuda, but this worker sees no CUDA GPU" in rows["gpu"]["error"]
    assert "CUDA_VISIBLE_DEVICES=''" in rows["gpu"]["error"]
    assert "Traceback" not in rows["gpu"]["error"]
    assert rows["fine"]["status"] == "done" and json.loads(rows["fine"]["result"])["device"] == "cpu"  # auto


def test_pick_device_names_the_fix(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert pick_device("cpu").type == "cpu"
    if not CUDA:
        assert pick_device("auto").type == "cpu"
        with pytest.raises(JobFailed) as failed:
            pick_device("cuda")
        assert not failed.value.retry and "use device: auto" in failed.value.message


# -- the device cache: the data a job asked for ----------------------------------------------

META = torch.device("meta")  # a stand-in device: .to(meta) keeps shapes, not values, and needs no GPU
SUBSETS = [(96, 32), (64, 32), (96, 48), (32, 16), (64, 32), (128, 64)] * 2  # 12 jobs, as in issue 18


@pytest.fixture
def empty_cache():
    device_module.clear_cache()
    yield
    device_module.clear_cache()


@pytest.mark.parametrize("address_reused", [False, True], ids=["fresh-objects", "address-reused"])
def test_each_job_gets_the_data_it_asked_for_on_the_device(empty_cache, monkeypatch, address_reused):
    """Jobs one after another in one worker, each with its own Dataset object of its own subset,
    dropped when the job ends. CPython often gives the next object the dropped one's address;
    `address-reused` forces that on every job (id() is the same for all), which an identity-keyed
    cache answers with the previous job's data."""
    if address_reused:
        monkeypatch.setattr(device_module, "id", lambda _obj: 4242, raising=False)
    for job, (n_train, n_test) in enumerate(SUBSETS):
        data = load_dataset("synthetic", train_subset=n_train, test_subset=n_test)
        moved = on_device(data, META)
        assert moved.train.x.device.type == "meta"
        got = (len(moved.train), moved.train.x.shape[0], len(moved.test), moved.test.x.shape[0])
        assert got == (n_train, n_train, n_test, n_test), f"job {job} asked for {n_train}/{n_test}, got {got}"
        assert moved.identity == data.identity
        del data, moved  # the job ends


def test_the_same_data_in_another_object_is_moved_once(empty_cache):
    first = load_dataset("synthetic", train_subset=64, test_subset=32)
    again = load_dataset("synthetic", train_subset=64, test_subset=32)
    assert first is not again and first.identity == again.identity
    assert on_device(again, META) is on_device(first, META), "one copy on the device per dataset"


def test_what_makes_data_differ_makes_its_identity_differ():
    a = load_dataset("synthetic", train_subset=64, test_subset=32)
    # the same test size, but `synthetic` draws its test set after a training set of another size
    b = load_dataset("synthetic", train_subset=96, test_subset=32)
    assert not torch.equal(a.test.x, b.test.x) and a.identity != b.identity
    c = load_dataset("synthetic", train_subset=64, test_subset=16)
    assert a.identity != c.identity


def test_data_of_unknown_identity_is_moved_but_never_cached(empty_cache):
    full = load_dataset("synthetic", train_subset=64, test_subset=32)
    by_hand = Dataset("synthetic", Split(full.train.x[32:], full.train.y[32:]), full.test, full.source)
    assert by_hand.identity is None
    first, second = on_device(by_hand, META), on_device(by_hand, META)
    assert first is not second and len(first.train) == 32
    assert not device_module._CACHE


# -- numerics: the job's, not the worker's ------------------------------------------------------


def settings() -> tuple:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )


@pytest.mark.parametrize("before", [(False, False, False, True), (True, True, True, True)], ids=["defaults", "all-on"])
def test_gpu_numerics_hold_for_the_job_and_come_back_after_it_even_when_it_fails(before):
    """job_numerics only sets torch's process-wide flags, so it runs here without a GPU."""
    saved = settings()
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1:]
    try:
        with job_numerics(torch.device("cuda")):
            assert settings() == (True, False, False, False), "deterministic, no autotuning, no TF32"
        assert settings() == before
        with pytest.raises(RuntimeError, match="the job broke"), job_numerics(torch.device("cuda")):
            assert settings() == (True, False, False, False)
            raise RuntimeError("the job broke")
        assert settings() == before, "restored after an exception too"
        with job_numerics(CPU_DEVICE):
            assert settings() == before, "the CPU path changes nothing"
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[
            1:
        ]


CPU_DEVICE = torch.device("cpu")


def test_a_train_job_that_fails_on_the_gpu_leaves_the_worker_as_it_was(tmp_path, monkeypatch):
    """kind train on a stand-in GPU: pick_device says cuda, and the job fails as it starts."""
    inside: list[tuple] = []

    def broken(*_args: object, **_kwargs: object) -> Dataset:
        inside.append(settings())
        raise RuntimeError("the GPU fell off the bus")

    monkeypatch.setattr(train_kind, "pick_device", lambda _name: torch.device("cuda"))
    monkeypatch.setattr(train_kind, "load_dataset", broken)
    # a stand-in GPU has no name to ask the driver for; what the job records of it is not the point here
    monkeypatch.setattr(train_kind, "numerics", lambda d: {"device": f"{d} (stand-in)", "tf32": False})
    before = settings()
    params = {"dataset": "synthetic", "train_subset": 64, "test_subset": 32, "max_epochs": 1}
    with pytest.raises(RuntimeError, match="fell off the bus"):
        train_kind.run(Job(tmp_path).attempt(), params)
    assert inside == [(True, False, False, False)], "the job ran with the GPU numerics"
    assert settings() == before, "and they did not outlive it"


def test_numerics_say_what_a_job_computes_with():
    assert numerics(CPU_DEVICE) == {"device": "cpu", "tf32": False, "deterministic": False}


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU here")
def test_on_the_gpu_numerics_name_the_card_and_tf32_off_keeps_logits_within_float32_rounding_of_the_cpu():
    gpu = pick_device("cuda")
    model = build(ARCH, "xavier_uniform", 0)
    x = load_dataset("synthetic", train_subset=64, test_subset=256).test.x
    with torch.no_grad():
        on_cpu = model(x)
    with job_numerics(gpu):
        used = numerics(gpu)
        with torch.no_grad():
            on_gpu = model.to(gpu)(x.to(gpu)).cpu()
    assert used["device"].startswith("cuda:0 ") and len(used["device"]) > len("cuda:0 ")
    assert (used["tf32"], used["deterministic"]) == (False, True)
    # How close: float32 rounding of sums in another order (a few ulps of values around 1-10), not
    # TF32's 10-bit mantissa, which differs by about 1e-3 relative.
    assert torch.allclose(on_gpu, on_cpu, rtol=1e-5, atol=1e-5), (on_gpu - on_cpu).abs().max()
