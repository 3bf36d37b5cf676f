"""Candidates evaluated side by side: worker processes (or Ray tasks) and one timer per device.

``ParallelEvaluator`` is an :class:`~hwprune.evaluate.Evaluator` whose
``submit(policy)`` returns at once. Each candidate is *prepared* by a worker
(apply the policy, ``task.calibrate``, ``task.score``, ONNX export, every
untimed oracle), then each *timed* oracle measures it on its **device**: one
process (or one Ray actor) per timed oracle spec, which times one candidate at
a time, pinned to a core of its own where it shares the machine with the
workers (``os.sched_setaffinity``). The dense model, the confirmation of the
best candidates and the final proof go through the same device, so every
latency of a run is timed in the same conditions.

What stays in the main process, as with one worker: the measurement cache
(looked up before a candidate is sent to a device, written when it comes
back), the episodes log (outcomes are committed in the order they were
submitted, so the log of a search whose proposals do not depend on pending
results is the same with any number of workers), resume (a resumed run's
evaluator reads the log back before anything is submitted).

Backends: local processes (``concurrent.futures`` with the ``spawn`` start
method: no forked torch or sqlite state) or a Ray cluster (``ray_address``:
``auto`` joins a running cluster, ``local`` starts one on this machine, any
other value is a cluster address). Ray is optional: ``pip install "hwprune[ray]"``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import oracles
from hwprune.config import MAX_WORKERS
from hwprune.errors import ConfigError, HwpruneError
from hwprune.evaluate.evaluator import (
    CandidateFailure,
    Evaluator,
    Outcome,
    _as_cached,
    candidate_params,
)
from oracles import Measurement, Oracle
from oracles.errors import OracleError

# What a worker that died before it could start most often means, for the one-line error.
WORKERS_DIED = (
    "a worker process stopped while starting: worker processes are spawned and import your "
    "script again, so a script that calls hwprune.prune with workers > 1 must do so under "
    '`if __name__ == "__main__":` (otherwise, the worker\'s own error is printed above)'
)

log = logging.getLogger(__name__)

__all__ = [
    "ParallelEvaluator",
    "DeviceOracle",
    "Prepared",
    "check_ray",
    "check_workers",
    "plan_cores",
    "MAX_WORKERS",
]


def check_workers(workers: Any) -> int:
    """``workers`` as an int from 1 to MAX_WORKERS, or a ConfigError saying what is accepted."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(
            f"workers must be a whole number of worker processes from 1 to {MAX_WORKERS}, "
            f"got {workers!r}"
        )
    return workers


def plan_cores(
    devices: int, *, dedicated: bool = True, cores: Sequence[int] | None = None
) -> tuple[list[int | None], list[int] | None]:
    """(a core per local timing device, the cores the workers may use).

    With ``dedicated`` and at least two cores, the last ``devices`` cores (at
    most all but one) are the devices', one each (round robin if fewer), and the
    workers get the rest; otherwise nothing is pinned (``None``).
    """
    cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
    if not dedicated or devices < 1 or len(cores) < 2:
        return [None] * devices, None
    k = min(devices, len(cores) - 1)
    own = cores[-k:]
    return [own[i % k] for i in range(devices)], cores[:-k]


# ------------------------------------------------------------------ worker side
@dataclass(frozen=True)
class Prepared:
    """A candidate a worker prepared: its score and everything but the timed measurements."""

    accuracy: float
    params: int
    onnx: bytes | None
    module: Any  # the pruned module, only where a timed oracle takes torch modules
    measurements: Mapping[str, Measurement]
    timings: Mapping[str, float]


@dataclass(frozen=True)
class _Broken:
    """A candidate whose pruned model failed its forward pass: committed as infeasible."""

    error: str
    timings: Mapping[str, float]


@dataclass(frozen=True)
class _Failure:
    """One of our errors raised in a worker, sent back as a value (re-raised in the main process,
    as one line, whatever the transport does to exceptions)."""

    error: BaseException


@dataclass
class _Job:
    """What every worker needs, sent once per worker process."""

    space: Any
    task: Any
    example_inputs: Any
    opset: int | None
    allow_trace_warnings: bool
    untimed: dict[str, Oracle]  # constraint name -> oracle (pickled), measured by the worker
    onnx: bool  # export ONNX (an untimed or a timed oracle takes it)
    module: bool  # send the pruned module back (a timed oracle takes torch modules)


_WORKER: dict[str, Any] = {}


def _pin(cores: Sequence[int] | None) -> None:
    if cores:
        try:
            os.sched_setaffinity(0, set(cores))
        except OSError as exc:  # a core the container does not own
            log.warning("cannot pin to cores %s: %s", list(cores), exc)


def _load_job(blob: bytes, cores: Sequence[int] | None) -> dict[str, Any]:
    import torch

    _pin(cores)
    torch.set_num_threads(1)  # one worker, one core: N workers use N cores
    job: _Job = pickle.loads(blob)  # our own bytes, made by the main process of this run
    evaluator = Evaluator(space=job.space, task=job.task, constraints=[], opset=job.opset,
                          allow_trace_warnings=job.allow_trace_warnings, seed=0)  # fmt: skip
    return {"job": job, "evaluator": evaluator, "oracles": dict(job.untimed)}


def _exit_with(parent: int | None) -> None:
    """End this process when ``parent`` is gone (a main process killed with SIGKILL cannot
    stop its workers, and they would wait on their queue for ever)."""
    import threading

    if parent is None:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="hwprune-parent-watch", daemon=True).start()


def _init_worker(blob: bytes, cores: Sequence[int] | None, parent: int | None = None) -> None:
    _exit_with(parent)
    _WORKER.update(_load_job(blob, cores))


def _prepare_here(
    state: Mapping[str, Any], policy: Any, what: str
) -> Prepared | _Broken | _Failure:
    job: _Job = state["job"]
    timings: dict[str, float] = {}
    try:
        t_start = time.perf_counter()
        try:
            module, acc = state["evaluator"].score_candidate(policy, timings=timings, what=what)
        except CandidateFailure as exc:
            return _Broken(error=str(exc), timings=timings)
        # The worker's evaluator has the run's space (its example inputs) and opset.
        onnx_bytes = state["evaluator"].export(module, timings=timings) if job.onnx else None
        shapes = job.example_inputs.shapes
        measured = {}
        for name, oracle in state["oracles"].items():
            t0 = time.perf_counter()
            model = onnx_bytes if oracle.input_format == "onnx" else module
            measured[name] = oracle.measure(model, input_shapes=shapes)
            timings[f"oracle:{name}"] = time.perf_counter() - t0
        timings["worker"] = time.perf_counter() - t_start
        return Prepared(
            accuracy=acc,
            params=candidate_params(state["evaluator"].space, policy, module),
            onnx=onnx_bytes,
            module=module if job.module else None,
            measurements=measured,
            timings=timings,
        )
    except (HwpruneError, OracleError) as exc:
        return _Failure(exc)


def _prepare_local(policy: Any, what: str) -> Prepared | _Broken | _Failure:
    return _prepare_here(_WORKER, policy, what)


def _prepare_ray(
    job_ref: list, job_id: str, cores: list[int] | None, node: str, policy: Any, what: str
) -> Prepared | _Broken | _Failure:
    import ray

    state = _WORKER.get(job_id)
    if state is None:
        here = ray.get_runtime_context().get_node_id()
        state = _load_job(ray.get(job_ref[0]), cores if here == node else None)
        _WORKER.clear()  # one run's job per worker process
        _WORKER[job_id] = state
    return _prepare_here(state, policy, what)


class _Device:
    """One timing device: an oracle built from its spec, timing one model at a time."""

    def __init__(self, oracle: Oracle, core: int | None) -> None:
        _pin(None if core is None else [core])
        self.oracle = oracle
        self.error: BaseException | None = None
        try:
            self.oracle.check_available()
        except OracleError as exc:
            self.error = exc

    def info(self) -> dict[str, Any] | _Failure:
        if self.error is not None:
            return _Failure(self.error)
        return {
            "identity": self.oracle.identity(),
            "machine": oracles.machine_identity(),
            "pid": os.getpid(),
            "cores": sorted(os.sched_getaffinity(0)),
        }

    def measure(
        self, model: Any, input_shapes: Any, changes: Mapping[str, Any] | None = None
    ) -> Measurement | _Failure:
        """One measurement; ``changes`` are setting changes for this call (the search's
        stop rule, ``Evaluator.search_oracles``)."""
        oracle = dataclasses.replace(self.oracle, **changes) if changes else self.oracle
        try:
            return oracle.measure(model, input_shapes=input_shapes)
        except OracleError as exc:
            return _Failure(exc)


_DEVICE: list[_Device] = []


def _init_device(oracle: Oracle, core: int | None, parent: int | None = None) -> None:
    _exit_with(parent)
    _DEVICE.append(_Device(oracle, core))


def _device_call(method: str, *args: Any) -> Any:
    return getattr(_DEVICE[0], method)(*args)


def _answer(value: Any) -> Any:
    if isinstance(value, _Failure):
        raise value.error
    return value


#: Times a candidate's preparation is sent again after its worker was lost (killed, out of
#: memory, its node gone), and times a timing device is restarted (its oracle built again).
PREPARE_RETRIES = 2
DEVICE_RESTARTS = 2

#: What a run stopped by a lost worker or device says after naming it.
RESUME_HINT = "everything measured so far is kept; `hwprune prune --resume RUN_DIR` continues"


class WorkerLost(HwpruneError):
    """A worker process or timing device that died, beyond what the run retries."""


def _retrying(
    submit: Callable[[], Future], *, lost: Callable[[BaseException], str | None], what: str,
    tries: int,
) -> Future:  # fmt: skip
    """``submit()``'s answer, sent again (at most ``tries`` times, each logged) while
    ``lost`` says its failure was a lost worker; then that failure as one WorkerLost line."""
    out: Future = Future()

    def attempt(n: int) -> None:
        def done(f: Future) -> None:
            if f.cancelled():  # the run is closing
                out.cancel()
                return
            exc = f.exception()
            if exc is None:
                out.set_result(f.result())
                return
            why = lost(exc)
            if why is None:
                out.set_exception(exc)
            elif n < tries:
                log.warning("%s was lost (%s); trying again (%d of %d)", what, why, n + 1, tries)
                attempt(n + 1)
            else:
                out.set_exception(WorkerLost(f"{what} was lost {n + 1} time(s) ({why}); "
                                             + RESUME_HINT))  # fmt: skip

        try:
            inner = submit()
        except Exception as exc:  # a backend that cannot send it any more
            why = lost(exc)
            out.set_exception(WorkerLost(f"{what} was lost ({why}); {RESUME_HINT}") if why
                              else exc)  # fmt: skip
            return
        inner.add_done_callback(done)

    attempt(0)
    return out


# ------------------------------------------------------------------ backends
class _LocalBackend:
    """Worker processes and one process per device, on this machine (spawned, not forked)."""

    def __init__(
        self,
        *,
        workers: int,
        blob: bytes,
        devices: Mapping[str, tuple[Oracle, int | None]],
        worker_cores: list[int] | None,
    ) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._devices = {
            spec: ProcessPoolExecutor(
                1, mp_context=ctx, initializer=_init_device, initargs=(oracle, core, os.getpid())
            )
            for spec, (oracle, core) in devices.items()
        }
        self._workers = ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(blob, worker_cores, os.getpid()),
        )
        # Start every worker now (the pool starts them on demand): loading torch and the
        # run's inputs is paid before the search, not by its first candidates.
        try:
            for f in [self._workers.submit(time.sleep, 0.05) for _ in range(workers)]:
                f.result()
        except BrokenProcessPool as exc:
            self.close()
            raise HwpruneError(WORKERS_DIED) from exc

    def prepare(self, policy: Any, what: str) -> Future:
        # A dead process breaks its whole pool: nothing to retry on, the run stops in one line.
        return _retrying(lambda: self._workers.submit(_prepare_local, policy, what),
                         lost=_pool_lost, what=f"the worker process preparing {what}",
                         tries=0)  # fmt: skip

    def call(self, spec: str, method: str, *args: Any) -> Future:
        return _retrying(lambda: self._devices[spec].submit(_device_call, method, *args),
                         lost=_pool_lost, what=f"the timing process of {spec}",
                         tries=0)  # fmt: skip

    def close(self) -> None:
        for pool in (self._workers, *self._devices.values()):
            pool.shutdown(wait=True, cancel_futures=True)


def _pool_lost(exc: BaseException) -> str | None:
    if isinstance(exc, BrokenProcessPool):
        return "its process stopped: killed, or out of memory"
    return None


def _ray_lost(exc: BaseException) -> str | None:
    """Why a Ray call failed for its worker or actor, not for its own code (None: its code)."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayActorError | rex.WorkerCrashedError | rex.NodeDiedError
                  | rex.OutOfMemoryError | rex.LocalRayletDiedError):  # fmt: skip
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__
    return None


class _RayBackend:
    """Ray tasks for the workers (the run's inputs put in the object store once) and one actor
    per device, placed on this (the driver's) node.

    A task whose worker is lost is sent again (``PREPARE_RETRIES``, logged); a device actor
    that dies is restarted by Ray with its oracle built again (``DEVICE_RESTARTS``) and the
    call sent again; beyond that the run stops in one line (``WorkerLost``). Resources are
    declared as used: a device takes a CPU (none for a remote oracle, which only waits) and a
    GPU where its oracle times on one; a preparation task takes a CPU, and a GPU share where
    candidates are scored on CUDA. ``plan`` says what was asked of the cluster.
    """

    def __init__(
        self,
        *,
        address: str,
        workers: int,
        blob: bytes,
        devices: Mapping[str, tuple[Oracle, int | None]],
        worker_cores: list[int] | None,
        timed_cpus: Mapping[str, float],
        score_gpu: bool = False,
        data_paths: Sequence[str] = (),
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            _ray_init(ray, address)
            self._started = True
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = ray.get_runtime_context().get_node_id()
        here = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        self.plan = _ray_plan(ray, workers=workers, devices=devices, timed_cpus=timed_cpus,
                              score_gpu=score_gpu)  # fmt: skip
        _check_paths_on_nodes(ray, data_paths)
        self._job = [ray.put(blob)]
        self._job_id = f"{os.getpid()}-{id(self)}-{time.time()}"
        self._node = node
        self._worker_cores = worker_cores
        # Retried here, not by Ray: each retry is logged and bounded, and its slot kept.
        self._prepare = ray.remote(num_cpus=1, num_gpus=self.plan["task_gpus"],
                                   max_retries=0)(_prepare_ray)  # fmt: skip
        actor = ray.remote(_Device)
        self._devices = {
            spec: actor.options(
                num_cpus=timed_cpus.get(spec, 1.0),
                num_gpus=1 if oracle.needs_gpu else 0,
                scheduling_strategy=here,
                max_concurrency=1,
                max_restarts=DEVICE_RESTARTS,
                max_task_retries=0,
            ).remote(oracle, core)
            for spec, (oracle, core) in devices.items()
        }

    def prepare(self, policy: Any, what: str) -> Future:
        def submit() -> Future:
            return self._prepare.remote(
                self._job, self._job_id, self._worker_cores, self._node, policy, what
            ).future()

        return _retrying(submit, lost=_ray_lost, what=f"the Ray worker preparing {what}",
                         tries=PREPARE_RETRIES)  # fmt: skip

    def call(self, spec: str, method: str, *args: Any) -> Future:
        def submit() -> Future:
            return getattr(self._devices[spec], method).remote(*args).future()

        # Ray restarts the actor; a call sent while it restarts waits for it.
        return _retrying(submit, lost=_ray_lost, what=f"the Ray timing actor of {spec}",
                         tries=DEVICE_RESTARTS)  # fmt: skip

    def close(self) -> None:
        for actor in self._devices.values():
            self._ray.kill(actor, no_restart=True)
        if self._started:
            self._ray.shutdown()


def _ray_plan(
    ray: Any,
    *,
    workers: int,
    devices: Mapping[str, tuple[Oracle, int | None]],
    timed_cpus: Mapping[str, float],
    score_gpu: bool,
) -> dict[str, Any]:
    """What the run asks of the cluster, checked against what it has (ConfigError in one line
    where the devices and one preparation task cannot be placed at once)."""
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
    device_cpus = sum(timed_cpus.get(spec, 1.0) for spec in devices)
    device_gpus = float(sum(1 for oracle, _ in devices.values() if oracle.needs_gpu))
    if device_gpus > gpus:
        raise ConfigError(
            f"the timing oracle(s) need {device_gpus:g} GPU(s) and the Ray cluster has "
            f"{gpus:g}; start Ray on a node with a GPU (ray start --num-gpus N)"
        )
    task_gpus = 0.0
    if score_gpu:
        free = gpus - device_gpus
        if free <= 0:
            raise ConfigError(
                f"candidates are scored on CUDA (--device) and the Ray cluster has no GPU left "
                f"for them ({gpus:g} in all, {device_gpus:g} timing); give --device cpu, or "
                "add a node with a GPU"
            )
        task_gpus = min(1.0, free / workers)
    if cpus - device_cpus < 1:
        raise ConfigError(
            f"the Ray cluster has {cpus:g} CPU(s) and the timing device(s) take "
            f"{device_cpus:g}: none is left for a preparation task; add CPUs to the cluster"
        )
    slots = int(min(workers, cpus - device_cpus))
    if task_gpus:
        slots = min(slots, int((gpus - device_gpus) / task_gpus + 1e-9))
    text = (f"Ray: {cpus:g} CPU(s), {gpus:g} GPU(s); timing device(s) {device_cpus:g} CPU, "
            f"{device_gpus:g} GPU on this node; preparation 1 CPU"
            + (f" + {task_gpus:g} GPU" if task_gpus else "")
            + f" per task, {slots} of {workers} at once")  # fmt: skip
    log.info("%s", text)
    return {"cpus": cpus, "gpus": gpus, "device_cpus": device_cpus, "device_gpus": device_gpus,
            "task_gpus": task_gpus, "worker_slots": max(1, slots), "text": text}  # fmt: skip


def _paths_missing(paths: Sequence[str]) -> tuple[str, list[str]]:
    """(this node's address, the paths it cannot read): run on each node of the cluster."""
    import socket

    return socket.gethostname(), [p for p in paths if not os.access(p, os.R_OK)]


def _check_paths_on_nodes(ray: Any, paths: Sequence[str]) -> None:
    """Every node with a CPU can read ``paths`` (an image folder the workers load from), or a
    ConfigError naming the first node that cannot."""
    if not paths:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(num_cpus=0, max_retries=0)(_paths_missing)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
    refs = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node_id=n["NodeID"], soft=False)).remote(list(paths)) for n in nodes]  # fmt: skip
    for host, missing in ray.get(refs, timeout=120):
        if missing:
            raise ConfigError(
                f"{missing[0]!r} cannot be read on the Ray node {host!r}: the workers load the "
                "data on every node, so the same path must exist on each (a shared or copied "
                "folder)"
            )


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            '--ray needs Ray, which is not installed: pip install "hwprune[ray]" '
            "(or drop --ray to use local worker processes)"
        ) from None
    return ray


def check_ray(address: str, *, timeout: float = 5.0) -> None:
    """ConfigError in one line unless Ray is installed and ``address`` answers (``auto`` and
    ``local`` are checked when joined); a cluster address is tried with a plain TCP connect
    first, since Ray itself waits minutes for a server that is not there."""
    import socket

    _import_ray()
    if address in ("auto", "local"):
        return
    text = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"--ray must be 'auto', 'local' or a cluster address HOST:PORT "
            f"(or ray://HOST:PORT), got {address!r}"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"cannot reach the Ray cluster at {address!r} ({why}); start one with "
            "'ray start --head', or give --ray local to start one here"
        ) from None


def _ray_init(ray: Any, address: str) -> None:
    """Join (``auto``, an address) or start (``local``) a Ray instance; one line on failure."""
    check_ray(address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    try:
        if address == "local":
            ray.init(**kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"cannot join the Ray cluster at {address!r} ({first}); start one with "
            "'ray start --head', or give --ray local to start one here"
        ) from None


def _local_plan(workers: int, cores: list[int] | None, devices: int) -> dict[str, Any]:
    """How local workers share this machine: the cores they may use and how many run at once."""
    n = len(os.sched_getaffinity(0)) if cores is None else len(cores)
    slots = max(1, min(workers, n))
    text = (f"local: {workers} worker process(es) on {n} core(s), {slots} at once; "
            f"{devices} timing device(s)" + (" on a core of its own" if cores else ""))  # fmt: skip
    return {"worker_cores": cores, "worker_slots": slots, "text": text}


# ------------------------------------------------------------------ the device oracle
class DeviceOracle(Oracle):
    """An oracle measured in its device process (or actor): the same spec, settings and cache
    key as the oracle itself, plus the device's machine where that is another machine."""

    def __init__(
        self,
        inner: Oracle,
        call: Any,
        info: Mapping[str, Any],
        changes: Mapping[str, Any] | None = None,
    ) -> None:
        # ``changes``: settings the device applies to its oracle for each call made here.
        self.changes = dict(changes or {})
        if self.changes:
            inner = dataclasses.replace(inner, **self.changes)
        self.inner = inner
        self._call = call
        self._identity = dict(info.get("identity", {}))
        if info.get("machine") != oracles.machine_identity():
            self._identity["machine"] = info.get("machine")
        self.name = inner.name
        self.quantity = inner.quantity
        self.unit = inner.unit
        self.input_format = inner.input_format
        self.timed = inner.timed
        self.value_sensitive = inner.value_sensitive
        self.device = inner.device

    @property
    def spec(self) -> str:
        return self.inner.spec

    def settings(self) -> dict[str, Any]:
        return self.inner.settings()

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def model_key(self, model: Any, *, input_shapes: Any = None) -> str:
        return self.inner.model_key(model, input_shapes=input_shapes)

    def measure(self, model: Any, *, input_shapes: Any = None) -> Measurement:
        return _answer(self.submit(model, input_shapes).result())

    def submit(self, model: Any, input_shapes: Any = None) -> Future:
        """Send one measurement to the device; its Future answers a Measurement or _Failure."""
        if self.changes:
            return self._call("measure", model, dict(input_shapes or {}), self.changes)
        return self._call("measure", model, dict(input_shapes or {}))


# ------------------------------------------------------------------ the evaluator
@dataclass(eq=False)
class _Slot:
    policy: Any
    key: str
    what: str
    prep: Future | None = None  # None until a worker is free for it
    prepared: Prepared | _Broken | None = None
    timing: dict[str, Future] = field(default_factory=dict)
    cache_keys: dict[str, str] = field(default_factory=dict)
    measured: dict[str, Measurement] = field(default_factory=dict)
    t_submit: float = field(default_factory=time.perf_counter)
    outcome: Outcome | None = None


class _Handle:
    """A submitted policy; ``result()`` waits for (and commits, in order) its Outcome."""

    def __init__(self, owner: ParallelEvaluator, slot: _Slot | None, *, cached: bool) -> None:
        self._owner = owner
        self._slot = slot
        self._cached = cached

    def done(self) -> bool:
        self._owner._pump(None)
        return self._slot.outcome is not None

    def result(self) -> Outcome:
        outcome = self._owner._pump(self._slot)
        return _as_cached(outcome) if self._cached else outcome


class ParallelEvaluator(Evaluator):
    """An Evaluator that prepares ``workers`` candidates at once and times them on devices.

    Takes every argument of :class:`Evaluator` plus ``workers`` (worker
    processes or concurrent Ray tasks), ``ray_address`` (None: local
    processes) and ``dedicated_timing_core`` (pin each local timing device to a
    core the workers do not use; needs two cores or more). Call ``close()``
    when done (the run does).
    """

    def __init__(
        self,
        *,
        workers: int,
        ray_address: str | None = None,
        dedicated_timing_core: bool = True,
        score_device: str = "cpu",
        data_paths: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        self._backend: Any = None  # close() works on an evaluator whose start failed
        super().__init__(**kwargs)
        self.width = check_workers(workers)
        self._slots: deque[_Slot] = deque()
        self._pending: dict[str, _Slot] = {}
        timed = {c.name: o for c, o in ((c, self._oracles[c.name]) for c in self.constraints)
                 if o.timed}  # fmt: skip
        untimed = {c.name: self._oracles[c.name] for c in self.constraints
                   if c.name not in timed}  # fmt: skip
        specs = sorted({o.spec for o in timed.values()})
        by_spec = {o.spec: o for o in timed.values()}
        # A remote oracle times on its server: its device here only waits, on no core of its own.
        local = [s for s in specs if not by_spec[s].remote]
        device_cores, worker_cores = plan_cores(len(local), dedicated=dedicated_timing_core)
        cores = dict(zip(local, device_cores, strict=True))
        devices = {s: (by_spec[s], cores.get(s)) for s in specs}
        formats = {o.input_format for o in self._oracles.values()}
        job = _Job(
            space=self.space,
            task=self.task,
            example_inputs=self.example_inputs,
            opset=self.opset,
            allow_trace_warnings=self.allow_trace_warnings,
            untimed=untimed,
            onnx="onnx" in formats,
            module=any(o.input_format != "onnx" for o in timed.values()),
        )
        try:
            blob = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"workers need the model and task sent to other processes, and this one cannot "
                f"be ({exc}); define the task's functions at module level, or use one worker"
            ) from None
        if ray_address is None:
            self._backend = _LocalBackend(
                workers=self.width, blob=blob, devices=devices, worker_cores=worker_cores
            )
            self.parallel_plan = _local_plan(self.width, worker_cores, len(local))
        else:
            self._backend = _RayBackend(address=ray_address, workers=self.width, blob=blob,
                devices=devices, worker_cores=worker_cores,
                timed_cpus={s: 0.0 if s not in local else 1.0 for s in specs},
                score_gpu=str(score_device).startswith("cuda"), data_paths=data_paths,
            )  # fmt: skip
            self.parallel_plan = self._backend.plan
        try:
            infos = {s: _answer(self._backend.call(s, "info").result()) for s in specs}
        except BaseException:
            self._backend.close()
            raise
        self.devices = infos
        for name, oracle in timed.items():
            spec = oracle.spec

            def call(method: str, *args: Any, _spec: str = spec) -> Future:
                return self._backend.call(_spec, method, *args)

            self._oracles[name] = DeviceOracle(oracle, call, infos[spec])
            self._search_oracles[name] = DeviceOracle(
                oracle, call, infos[spec], changes=self._search_changes[name]
            )
        log.info(
            "evaluating with %d worker(s) on %s; timing devices: %s",
            self.width,
            "Ray" if ray_address is not None else "local processes",
            {s: i["cores"] for s, i in infos.items()} or "none",
        )

    # ------------------------------------------------------------- submit
    def evaluate(self, policy: Any) -> Outcome:
        return self.submit(policy).result()

    def submit(self, policy: Any) -> _Handle:
        if any(c.bound is None for c in self.constraints):
            self.calibrate()
        key = self.space.shape_key(policy)
        seen = self._by_key.get(key)
        if seen is not None:
            done = _Slot(policy=policy, key=key, what="", outcome=seen)
            return _Handle(self, done, cached=True)
        slot = self._pending.get(key)
        if slot is not None:
            return _Handle(self, slot, cached=True)
        what = f"candidate {len(self.history) + len(self._slots) + 1}"
        slot = _Slot(policy=policy, key=key, what=what)
        self._slots.append(slot)
        self._pending[key] = slot
        self._dispatch()
        return _Handle(self, slot, cached=False)

    def _dispatch(self) -> None:
        """Hand waiting candidates to workers, at most ``width`` being prepared at once."""
        preparing = sum(1 for s in self._slots if s.prep is not None and s.prepared is None)
        for slot in self._slots:
            if preparing >= self.width:
                return
            if slot.prep is None:
                slot.prep = self._backend.prepare(slot.policy, slot.what)
                preparing += 1

    # ------------------------------------------------------------- progress
    def _advance(self, slot: _Slot) -> None:
        """Move one slot on: prepared -> timing sent (or answered by the cache) -> measured."""
        if slot.prepared is None:
            if slot.prep is None or not slot.prep.done():
                return
            slot.prepared = _answer(slot.prep.result())
            if isinstance(slot.prepared, _Broken):
                return  # nothing to measure: committed as infeasible
            shapes = self.example_inputs.shapes
            for c in self.constraints:
                oracle = self._search_oracles[c.name]  # a candidate: the search's stop rule
                model = (
                    slot.prepared.onnx if oracle.input_format == "onnx" else slot.prepared.module
                )
                ckey = None
                if self.cache is not None:
                    ckey = oracles.cache.cache_key(
                        oracle, oracle.model_key(model, input_shapes=shapes)
                    )
                    hit = self.cache.get(ckey)
                    if hit is not None:
                        slot.measured[c.name] = hit.replace(cached=True)
                        continue
                if isinstance(oracle, DeviceOracle):
                    slot.timing[c.name] = oracle.submit(model, shapes)
                    if ckey is not None:
                        slot.cache_keys[c.name] = ckey
                else:
                    m = slot.prepared.measurements[c.name]
                    slot.measured[c.name] = m
                    if ckey is not None:
                        self.cache.put(ckey, m)
        for name, future in list(slot.timing.items()):
            if future.done():
                m = _answer(future.result())
                slot.measured[name] = m
                if name in slot.cache_keys:
                    self.cache.put(slot.cache_keys[name], m)
                del slot.timing[name]

    def _pump(self, until: _Slot | None) -> Outcome | None:
        """Advance every slot, commit the finished ones in submission order; with ``until``,
        wait until that slot is committed and return its outcome."""
        while True:
            for slot in self._slots:
                self._advance(slot)
            self._dispatch()
            while self._slots and self._ready(self._slots[0]):
                self._commit(self._slots.popleft())
            if until is None or until.outcome is not None:
                return None if until is None else until.outcome
            busy = [s.prep for s in self._slots if s.prep is not None and s.prepared is None]
            busy += [f for s in self._slots for f in s.timing.values()]
            if busy:
                wait(busy, return_when=FIRST_COMPLETED)

    def _ready(self, slot: _Slot) -> bool:
        return isinstance(slot.prepared, _Broken) or (
            slot.prepared is not None
            and not slot.timing
            and len(slot.measured) == len(self.constraints)
        )

    def _commit(self, slot: _Slot) -> None:
        p = slot.prepared
        if isinstance(p, _Broken):
            slot.outcome = self.commit_failed(
                policy=slot.policy, key=slot.key, error=p.error, timings=p.timings
            )
            self._pending.pop(slot.key, None)
            return
        timings = dict(p.timings)
        for name, m in slot.measured.items():
            if name not in p.measurements:
                timings[f"oracle:{name}"] = float(m.seconds)
        timings["total"] = time.perf_counter() - slot.t_submit
        measurements = {c.name: slot.measured[c.name] for c in self.constraints}
        slot.outcome = self.commit(
            policy=slot.policy,
            key=slot.key,
            accuracy=p.accuracy,
            measurements=measurements,
            timings=timings,
            params=p.params,
        )
        self._pending.pop(slot.key, None)

    def close(self) -> None:
        """Stop the workers and devices (waiting for nothing that was not asked for)."""
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
