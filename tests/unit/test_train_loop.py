"""The training core (jobs/ml/training.py) in-process, with a real queue, claim and checkpoint store.

A job is stopped at chosen batches through the real stop flag of its JobContext (what SIGTERM
sets), resumed from the checkpoint it wrote (serialized, sha256-verified, loaded with
weights_only=True), and must end exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from jobs.ml.data import load_dataset
from jobs.ml.model import Arch, Conv, build
from jobs.ml.training import LoopConfig, TrainState, evaluate, fit, make_optimizer
from sweeper.context import Interrupted, JobContext
from tests.onejob import Job, one_thread  # noqa: F401  (an autouse fixture)

ARCH = Arch(Conv(8, 3), Conv(8, 3), 32)
CFG = LoopConfig(
    epochs=3, batch_size=32, seed=7, checkpoint_every_s=1e9, log_every=5, target_train_acc=0.7, target_window=640
)


@pytest.fixture
def job(tmp_path: Path):
    j = Job(tmp_path)
    yield j
    j.db.dispose()


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", train_subset=1000, test_subset=300)


def train(ctx: JobContext, data, stop_after: int | None = None, init_seed: int = 0, cfg: LoopConfig = CFG):
    """One attempt: a freshly built model and optimizer, resumed from the job's checkpoint if any."""
    model = build(ARCH, "xavier_uniform", init_seed)
    optimizer = make_optimizer(model, lr=0.05, momentum=0.9)
    steps = [0]

    def count(_model: torch.nn.Module) -> None:
        steps[0] += 1
        if stop_after is not None and steps[0] == stop_after:
            ctx.request_stop()  # what the worker does on SIGTERM

    result = fit(ctx, model, optimizer, data.train, data.test, cfg, checkpoint=ctx.restore(), after_step=count)
    return model, result


def deterministic(state: TrainState) -> dict:
    """History without wall-clock figures."""
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_s"} for r in rows]  # noqa: E731
    return {"points": strip(state.history.points), "epochs": strip(state.history.epochs)}


def test_stopped_and_resumed_training_is_bit_identical_to_an_uninterrupted_run(tmp_path, data):
    ref_model, ref = train(Job(tmp_path / "ref").attempt(), data)
    assert isinstance(ref, TrainState) and ref.epoch == 3

    job = Job(tmp_path / "stopped")
    batches = ref.batches_per_epoch
    # mid-epoch, right at an epoch end, one batch into an epoch, then run to the end; attempts after
    # the first build their model with another init seed: what they restore must win
    for attempt, stop_after in enumerate((11, batches - 11, 2)):
        _, result = train(job.attempt(), data, stop_after=stop_after, init_seed=0 if attempt == 0 else 99)
        assert isinstance(result, Interrupted)
    model, result = train(job.attempt(), data, init_seed=123)
    assert isinstance(result, TrainState)

    for name, tensor in ref_model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), f"{name} differs after resume"
    assert deterministic(result) == deterministic(ref)
    assert result.step == ref.step == 3 * batches
    assert result.target_step == ref.target_step is not None
    assert evaluate(model, data.test.x, data.test.y) == evaluate(ref_model, data.test.x, data.test.y)


def test_time_to_target_is_training_compute_only(job, data):
    started = time.perf_counter()
    _, state = train(job.attempt(), data)
    wall = time.perf_counter() - started
    t = state.summary()
    assert t.reached and 0 < t.time_to_target_s <= t.total_train_s
    assert t.eval_s > 0 and t.checkpoint_s > 0 and t.checkpoints == 3  # one per epoch end
    # evaluation and checkpoint writes happened inside fit() but are not in the training time
    assert t.total_train_s + t.eval_s + t.checkpoint_s <= wall
    # the target was reached at the first batch where the running window crossed it
    points = state.history.points
    assert points[0]["train_acc"] < 0.7


def test_stop_at_target_ends_training_at_the_target_batch(job, data):
    cfg = LoopConfig(**{**CFG.__dict__, "stop_at_target": True})
    _, state = train(job.attempt(), data, cfg=cfg)
    assert state.stopped_at_target
    assert state.step == state.target_step < 3 * state.batches_per_epoch
    # resuming a job that already stopped at its target trains no further
    _, again = train(job.attempt(), data, cfg=cfg)
    assert again.step == state.step


def test_running_accuracy_window_spans_the_configured_number_of_images(job, data):
    _, state = train(job.attempt(), data)
    # 640 images at batch 32: the target is checked over the last 20 batches
    assert len(state.window.batches) == 20
    assert state.target_step >= 20


def test_our_sgd_updates_weights_exactly_like_torch_optim_sgd():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(30)]
    for momentum, weight_decay in ((0.0, 0.0), (0.9, 0.0), (0.9, 5e-4)):
        ours, theirs = build(ARCH, "kaiming_normal", 1), build(ARCH, "kaiming_normal", 1)
        opt_ours = make_optimizer(ours, lr=0.02, momentum=momentum, weight_decay=weight_decay)
        opt_theirs = torch.optim.SGD(
            theirs.parameters(), lr=0.02, momentum=momentum, weight_decay=weight_decay, foreach=False
        )
        for i, (x, y) in enumerate(batches):
            for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            if i == 14:  # through a state_dict round trip, as a resume does
                state = opt_ours.state_dict()
                opt_ours = make_optimizer(ours, lr=0.5, momentum=0.0)
                opt_ours.load_state_dict(state)
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b), f"{name} differs (momentum {momentum}, weight decay {weight_decay})"


# A checkpoint that jobs/ml/training.py wrote at commit 57a93b6, before TrainState (the loop kept its
# state in the checkpoint dict itself): ARCH_V1 and CFG_V1 on synthetic 320/64, init seed 0, SGD lr
# 0.05 momentum 0.9, stopped after 14 batches (epoch 1, batch 4), wrapped as
# {"torch": version, "commit": ..., "state": the checkpoint dict}.
V1_FILE = Path(__file__).parents[1] / "data" / "train_state_v1.pt"
ARCH_V1 = Arch(Conv(2, 3), Conv(2, 3), 8)
CFG_V1 = LoopConfig(
    epochs=2, batch_size=32, seed=5, checkpoint_every_s=1e9, log_every=3, target_train_acc=0.3, target_window=96
)


def test_a_checkpoint_written_before_train_state_resumes_where_it_stopped(tmp_path):
    v1 = torch.load(V1_FILE, weights_only=True)
    old = v1["state"]
    data = load_dataset("synthetic", train_subset=320, test_subset=64)
    written: list[dict] = []
    ref_model = build(ARCH_V1, "xavier_uniform", 0)
    ref = fit(
        Job(tmp_path / "ref").attempt(), ref_model, make_optimizer(ref_model, lr=0.05, momentum=0.9),
        data.train, data.test, CFG_V1, save=written.append,
    )  # fmt: skip
    assert isinstance(ref, TrainState)

    # the dict on disk keeps its layout: the same keys, sums and window as lists
    new = written[0]
    assert set(new) == set(old)
    assert (len(new["epoch_sums"]), len(new["log_sums"])) == (len(old["epoch_sums"]), len(old["log_sums"])) == (3, 4)
    assert all(len(w) == 2 for w in [*new["window"], *old["window"]])

    # every field of the old dict lands in the named field that writes it back unchanged
    state = TrainState.from_dict(old, window_size=3)
    assert (state.epoch, state.batch, state.step) == (1, 4, 14)
    again = state.to_dict(old["model"], old["optimizer"], old["rng"])
    assert again == {**old, "window": [list(w) for w in old["window"]]}

    # ... and training resumes from it (another init seed: what is restored must win) at the exact batch
    model = build(ARCH_V1, "xavier_uniform", 99)
    resumed = fit(
        Job(tmp_path / "resumed").attempt(), model, make_optimizer(model, lr=0.5), data.train, data.test, CFG_V1,
        checkpoint=old,
    )  # fmt: skip
    assert isinstance(resumed, TrainState)
    assert resumed.step == ref.step == 2 * ref.batches_per_epoch
    assert [p["step"] for p in resumed.history.points] == [p["step"] for p in ref.history.points]
    # The file's first 14 batches were computed on another machine. Another CPU (AVX2 against
    # AVX-512 kernels) rounds differently in the last bits, so the runs agree to float precision,
    # not bit for bit. This runs on every torch build (it used to skip unless torch was exactly the
    # file's build): a torch whose arithmetic drifts further would fail here naming both builds,
    # which is what someone resuming an old checkpoint on a new torch needs to know. Bit-identity
    # of a resume on one machine is the test above.
    builds = f"the file was written with torch {v1['torch']}, this is torch {torch.__version__}"
    for name, tensor in ref_model.state_dict().items():
        resumed_tensor = model.state_dict()[name]
        assert torch.allclose(tensor, resumed_tensor, rtol=1e-4, atol=1e-6), f"{name} differs after resuming v1 ({builds})"
    got, want = deterministic(resumed), deterministic(ref)
    for part in ("points", "epochs"):
        assert [sorted(r) for r in got[part]] == [sorted(r) for r in want[part]]
        for a, b in zip(got[part], want[part], strict=True):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-6), (part, a, b, builds)
