"""Workers on one device (issue: the GPU path): which worker trains where, one copy of the
images handed from the group's first worker to the others, the parent of `--workers`
holding nothing on a GPU, each worker's share of the GPU's memory, and running out of it
while loading. GPU facts are faked; the hand-over itself runs for real between processes on
the CPU (shared memory there, CUDA IPC on a GPU: the same queue and code)."""

from __future__ import annotations

import multiprocessing as mp
import types

import pytest
import torch

from hpsearch import data as data_module
from hpsearch import session as session_module
from hpsearch import interrupts, sharing, train
from hpsearch import study as study_module
from hpsearch.config import DataConfig, load_config
from hpsearch.data import DataError, load_dataset, split
from hpsearch.images import digits_images
from hpsearch.model import build_cnn
from hpsearch.session import RunOptions, Session, training_setup

CPU = torch.device("cpu")
GIB = 2**30


@pytest.mark.parametrize("device,gpus,expected", [
    ("cuda", 1, [[0, 1, 2]]),
    ("cuda", 2, [[0, 2], [1]]),
    ("cuda", 4, [[0], [1], [2]]),  # more GPUs than workers: one each
    ("cuda:1", 4, [[0, 1, 2]]),  # a named GPU: all of them on it
    ("cpu", 1, [[0, 1, 2]]),
    ("mps", 1, [[0], [1], [2]]),  # mps memory cannot be handed between processes
])
def test_workers_are_grouped_by_the_device_they_train_on(device, gpus, expected):
    assert sharing.groups(3, torch.device(device), gpus) == expected


def test_only_workers_that_share_a_device_get_a_share():
    ctx = mp.get_context("spawn")
    shares = sharing.shares(3, torch.device("cuda"), 2, ctx)
    assert sorted(shares) == [0, 2]  # worker 1 has GPU 1 alone
    assert shares[0].is_owner and not shares[2].is_owner and shares[2].owner == 0
    assert shares[0].handoff is shares[2].handoff and shares[0].users == 1


def tiny_config(tmp_path):
    return load_config(None, ["study.name='s'", "data.image_size=8", "train.epochs=1"])


def owner_process(cfg, share):
    """Worker 0 of a group: loads the images, hands them on, waits to be released."""
    training_setup(cfg, CPU, 1, None, share)
    sharing.stay_for_users(share)


def test_the_second_worker_trains_from_the_first_ones_images(tmp_path):
    cfg = tiny_config(tmp_path)
    ctx = mp.get_context("spawn")
    shares = sharing.shares(2, CPU, 1, ctx)
    owner = ctx.Process(target=owner_process, args=(cfg, shares[0]))
    owner.start()
    try:
        _, data = training_setup(cfg, CPU, 1, None, shares[1])
        own = load_dataset(cfg.data, cfg.study.seed, CPU)
        assert data.x_train.is_shared() and data.x_test.is_shared()  # the owner's memory
        assert data.x_train is not own.x_train
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            assert torch.equal(getattr(data, name), getattr(own, name)), name
        assert data.record() == own.record()
        assert owner.is_alive()  # an owner stays while its users may read its images
        sharing.release_finished(shares, {0: True, 1: False})
        owner.join(60)
        assert owner.exitcode == 0
    finally:
        if owner.is_alive():
            owner.kill()


def test_users_of_an_owner_that_died_before_handing_over_load_their_own(tmp_path):
    cfg = tiny_config(tmp_path)
    shares = sharing.shares(3, CPU, 1, mp.get_context("spawn"))
    sharing.release_finished(shares, {0: False, 1: True, 2: True})
    _, data = training_setup(cfg, CPU, 1, None, shares[1])
    assert not data.x_train.is_shared()
    assert data is load_dataset(cfg.data, cfg.study.seed, CPU)
    assert shares[0].release.is_set()  # sent once, however often the parent looks
    sharing.release_finished(shares, {0: False, 1: True, 2: True})
    assert shares[2].handoff.get(timeout=5) is None and shares[2].caps.get(timeout=5) == (0, [])
    assert shares[2].gone.is_set()  # a user with the owner's images stops at its next batch


def test_an_owner_that_fails_to_load_lets_its_users_try_for_themselves(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    shares = sharing.shares(2, CPU, 1, mp.get_context("spawn"))

    def refuse(*args, **kwargs):
        raise DataError("no images")

    monkeypatch.setattr(session_module, "load_dataset", refuse)
    with pytest.raises(DataError):
        training_setup(cfg, CPU, 1, None, shares[0])
    assert shares[1].handoff.get(timeout=5) is None


@pytest.fixture
def fake_gpu(monkeypatch):
    """A 16 GiB GPU with 12 GiB free, of which this process holds 1 GiB."""
    facts = types.SimpleNamespace(free=12 * GIB, total=16 * GIB, reserved=1 * GIB,
                                  fractions=[])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (facts.free,
                                                                         facts.total))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: facts.reserved)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: facts.fractions.append(fraction))
    monkeypatch.setattr(data_module, "_CAPS", {})
    return facts


def thread_share(index: int, members=(0, 1)) -> sharing.Share:
    """A group's channels within this process: the owner's and a user's sides are played by
    the test itself, in turn."""
    import queue
    import threading

    return sharing.Share(index, members, queue.Queue(), queue.Queue(), queue.Queue(),
                         threading.Event(), threading.Event())


def test_gpu_memory_is_shared_out_from_measured_contexts(fake_gpu, monkeypatch):
    """The owner measures the free memory with its own context and images in place, before
    any user has a context; the user's context is then measured as what its creation and
    first step took of the free memory, less what its allocator reserved. Each worker may
    take an equal share of what is left, less CONTEXT_GROWTH."""
    gpu = torch.device("cuda", 0)
    mib = 2**20
    steps = []
    monkeypatch.setattr(sharing, "first_step", lambda device, dtype: steps.append(dtype))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: steps.append("set_device"))
    # Free memory as the owner reads it: after its own first step, before the user's
    # context, after it (a 430 MiB context and 20 MiB reserved), and when it shares out.
    frees = iter([12 * GIB, 12 * GIB, 12 * GIB - 450 * mib, 12 * GIB - 450 * mib])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (next(frees),
                                                                         16 * GIB))
    monkeypatch.setattr(sharing, "FACTS", {})
    monkeypatch.setenv("HPSEARCH_WORKER_FACTS", "unused")  # the checksums are taken
    owner = thread_share(0)
    user = sharing.Share(1, (0, 1), owner.handoff, owner.acks, owner.caps, owner.release,
                         owner.gone)
    owner.acks.put((0, 20 * mib))  # the answer of the user served first, as it will come
    data = load_dataset(DataConfig(image_size=8), 0)
    per_worker = sharing.hand_over(owner, data, gpu, torch.float16)
    free = 12 * GIB - 450 * mib
    assert per_worker == (free - 2 * sharing.CONTEXT_GROWTH) // 2
    assert sharing.FACTS["contexts"] == [430 * mib]
    assert sharing.FACTS["context_bytes"] == 16 * GIB - 12 * GIB - 1 * GIB  # an upper bound
    assert steps == [torch.float16]
    # The user's side: its context comes only now, and it learns its share and context.
    sharing.FACTS.clear()
    got, share_bytes = sharing.receive(user, gpu, torch.float16)
    assert got is data and share_bytes == per_worker
    assert steps == [torch.float16, "set_device", torch.float16]
    assert sharing.FACTS["context_bytes"] == 430 * mib and not sharing.FACTS["owner"]
    assert owner.acks.get_nowait() == (0, 1 * GIB)  # its turn, what its allocator held
    interrupts.unwatch()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (fake_gpu.free,
                                                                         fake_gpu.total))
    # The owner's cap covers the images it holds for both; a user's, its trials alone.
    assert sharing.cap(gpu, per_worker) == pytest.approx((1 * GIB + per_worker) / (16 * GIB))
    fake_gpu.reserved = 0
    assert sharing.cap(gpu, per_worker) == pytest.approx(per_worker / (16 * GIB))
    assert len(fake_gpu.fractions) == 2
    assert sharing.cap(gpu, 0) is None and sharing.cap(CPU, per_worker) is None
    # What the process may still take is its cap less what it holds, not the GPU's free
    # memory: evaluation batches are sized to it.
    fake_gpu.reserved = per_worker - 256 * mib
    assert data_module.device_free_bytes(gpu) == 256 * mib
    model = build_cnn(in_channels=3, num_classes=10, image_size=128, depth=4, width=64)
    capped = train.eval_batch_size(model, 128, gpu)
    data_module._CAPS.clear()
    assert capped < train.eval_batch_size(model, 128, gpu)


def test_a_user_that_never_answers_leaves_the_rest_shared_out(fake_gpu, monkeypatch):
    monkeypatch.setattr(sharing, "first_step", lambda device, dtype: None)
    monkeypatch.setattr(sharing, "FACTS", {})
    monkeypatch.setattr(sharing, "ACK_WAIT", 1.0)
    owner = thread_share(0, (0, 1, 2))
    # The first user answers, twice (the second answer late, as it were); the second user
    # never does: the late answer is not taken for it.
    owner.acks.put((0, 0))
    owner.acks.put((0, 0))
    data = load_dataset(DataConfig(image_size=8), 0)
    per_worker = sharing.hand_over(owner, data, torch.device("cuda", 0), None)
    assert sharing.FACTS["contexts"] == [0, None]
    assert per_worker == (12 * GIB - 3 * sharing.CONTEXT_GROWTH) // 3
    assert [owner.handoff.get_nowait().turn for _ in range(2)] == [0, 1]  # both served
    assert [owner.caps.get_nowait()[0] for _ in range(2)] == [per_worker] * 2


def test_a_handshake_that_fails_sends_every_user_on_its_way(fake_gpu, monkeypatch):
    """The owner's first step fails (a cuDNN allocation on a crowded GPU): the users, none
    served yet, load their own; the owner has handed nothing on, so it will not wait for
    them at its end."""
    def fail(device, dtype):
        raise RuntimeError("CUDNN_STATUS_ALLOC_FAILED")

    monkeypatch.setattr(sharing, "first_step", fail)
    monkeypatch.setattr(sharing, "_handed", False)
    owner = thread_share(0, (0, 1, 2))
    with pytest.raises(RuntimeError, match="ALLOC_FAILED"):
        sharing.hand_over(owner, load_dataset(DataConfig(image_size=8), 0),
                          torch.device("cuda", 0), None)
    assert [owner.handoff.get_nowait() for _ in range(2)] == [None, None]
    assert owner.caps.empty() and not sharing._handed


def test_a_user_whose_owner_died_during_the_handshake_loads_its_own(fake_gpu, monkeypatch):
    monkeypatch.setattr(sharing, "first_step", lambda device, dtype: None)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    user = thread_share(1)
    user.handoff.put(sharing.Handed(load_dataset(DataConfig(image_size=8), 0), 1))
    sharing.release_finished({1: user}, {0: False, 1: True})  # the parent's fallback
    assert sharing.receive(user, torch.device("cuda", 0), None) == (None, 0)


def test_a_user_that_goes_on_alone_lifts_its_cap(fake_gpu, monkeypatch):
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(sharing, "FACTS", {})
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    sharing.cap(gpu, 2 * GIB)
    assert data_module._CAPS and fake_gpu.fractions[-1] < 1
    sharing.uncap(gpu)
    assert fake_gpu.fractions[-1] == 1.0 and not data_module._CAPS


def test_images_too_large_for_the_shared_memory_mount_are_not_handed_on(monkeypatch):
    """A container's /dev/shm may hold 64 MB; a process writing past it is killed. Images
    that do not fit stay the owner's own, and its users load theirs."""
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1000))
    x = data_module._empty((100, 8, 8, 1), shared=True)
    assert not x.is_shared()
    images = digits_images(8)
    data = split(images, DataConfig(image_size=8), 0, CPU, where="host", shared=True)
    assert not data.x_train.is_shared()
    owner = thread_share(0)
    assert sharing.hand_over(owner, data, CPU) == 0
    assert owner.handoff.get_nowait() is None and not data.x_train.is_shared()


def test_a_crowded_gpu_caps_nothing(fake_gpu):
    assert sharing.worker_bytes(256 * 2**20, 3) == 0  # less than the contexts may grow by
    assert sharing.cap(torch.device("cuda", 0), 0) is None and not fake_gpu.fractions


def test_an_owners_death_ends_its_users_trial_as_retried(tmp_path, monkeypatch):
    """A user trains from the owner's images; the owner is killed mid-trial. The parent's
    next look sets `gone`, the user's trial stops at its next batch, fails with that reason
    and is queued again; the worker then loads its own images and the retry completes with
    the same parameters."""
    import optuna

    from hpsearch.errors import OwnerGone

    cfg = load_config(None, ["study.name='s'", "data.image_size=8", "train.epochs=2",
                             "study.trials=1"])
    ctx = mp.get_context("spawn")
    shares = sharing.shares(2, CPU, 1, ctx)
    options = RunOptions(storage=f"sqlite:///{tmp_path / 's.db'}", workers=2, device="cpu")
    owner = ctx.Process(target=owner_process, args=(cfg, shares[0]))
    owner.start()
    # As on a GPU, where the images are the owner's device memory (on the CPU, shared
    # memory outlives the owner: nothing is lost).
    monkeypatch.setattr(sharing, "dies_with_owner", lambda data: True)
    try:
        session = Session.open(cfg, options, worker=1, share=shares[1])
        assert session.data.x_train.is_shared()

        def trainer(*args, **kwargs):
            owner.kill()
            owner.join(30)
            sharing.release_finished(shares, {0: owner.is_alive(), 1: True})
            return train.fit(*args, **kwargs)

        with pytest.raises(OwnerGone):
            session.run(objective=session.objective(trainer=trainer))
        # A later Ctrl-C between trials does not queue it a second time.
        assert study_module.requeue_interrupted(session.study, set()) is None
    finally:
        interrupts.unwatch()
        if owner.is_alive():
            owner.kill()
    trials = session.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL,
                                         optuna.trial.TrialState.WAITING]
    assert "worker 0, which held the images this worker trained from, ended; retried" in \
        trials[0].user_attrs["fail_reason"]
    again = Session.open(cfg, options, worker=1)
    assert again.data is not session.data  # its own, not the dead owner's
    again.run()
    retry = again.study.get_trials(deepcopy=False)[1]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.params == trials[0].params


def test_an_owner_puts_what_stays_on_the_host_in_shared_memory():
    """Images too large for the GPU stay in host memory, unpinned: an owner's go into shared
    memory as they are split, so its users on that GPU share one copy of them."""
    images = digits_images(8)
    data = split(images, DataConfig(image_size=8), 0, CPU, where="host", shared=True)
    assert data.x_train.is_shared() and data.x_val.is_shared() and data.x_test.is_shared()
    alone = split(images, DataConfig(image_size=8), 0, CPU, where="host")
    assert not alone.x_train.is_shared() and torch.equal(alone.x_train, data.x_train)


@pytest.fixture
def fake_cuda_session(monkeypatch):
    """Session.open as on a machine with one fp16 GPU: the device, its precision and setting
    it are faked, and the data "on the GPU" is the host's, but where it is asked for is
    recorded."""
    asked = types.SimpleNamespace(loads=[], set_device=[])
    real_load = session_module.load_dataset

    def load(cfg, seed, device="cpu", on_progress=None):
        asked.loads.append(torch.device(device))
        return real_load(cfg, seed, CPU, on_progress)

    monkeypatch.setattr(session_module, "load_dataset", load)
    monkeypatch.setattr(session_module, "worker_device",
                        lambda name, worker: torch.device("cuda", 0))
    monkeypatch.setattr(session_module, "choose_precision",
                        lambda device, wanted: types.SimpleNamespace(name="fp16", note="",
                                                                           dtype=None))
    monkeypatch.setattr(torch.cuda, "set_device", asked.set_device.append)
    return asked


def test_the_parent_of_workers_loads_nothing_onto_the_gpu(tmp_path, fake_cuda_session):
    cfg = tiny_config(tmp_path)
    options = RunOptions(storage=f"sqlite:///{tmp_path / 's.db'}", workers=2)
    parent = Session.open(cfg, options)
    assert fake_cuda_session.loads == [CPU] and not fake_cuda_session.set_device
    assert parent.device.type == "cuda" and parent.threads is None
    Session.open(cfg, options, worker=1)  # a worker: its own GPU, set first, then the data
    assert fake_cuda_session.set_device == [torch.device("cuda", 0)]
    assert fake_cuda_session.loads[-1] == torch.device("cuda", 0)


def test_a_single_process_run_loads_onto_its_gpu(tmp_path, fake_cuda_session):
    cfg = tiny_config(tmp_path)
    Session.open(cfg, RunOptions(storage=f"sqlite:///{tmp_path / 's.db'}"))
    assert fake_cuda_session.loads == [torch.device("cuda", 0)]


def test_running_out_of_gpu_memory_while_loading_is_one_line(monkeypatch):
    images = digits_images(8)
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, torch.device) and target.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 MiB")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    with pytest.raises(DataError, match=r"^out of memory on cuda:0 while loading the images "
                                        r"\(.*\); free the GPU .* or lower data.image_size$"):
        split(images, DataConfig(image_size=8), 0, torch.device("cuda", 0))


def test_an_owner_whose_session_failed_before_loading_releases_its_users(monkeypatch):
    """An owner that never handed anything on (its store or device failed first) tells its
    users to load their own as it ends, instead of leaving them waiting."""
    shares = sharing.shares(3, CPU, 1, mp.get_context("spawn"))
    monkeypatch.setattr(sharing, "_handed", False)
    sharing.stay_for_users(shares[0])  # returns at once: nothing of its is in use
    assert [shares[0].handoff.get(timeout=5) for _ in range(2)] == [None, None]
