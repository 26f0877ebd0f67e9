"""Ray Tune scheduling: one function trial per TrialSpec; in the terminal the overall bar and the running
trials with their latest progress message (harness.live_view).

The trainable writes its own Parquet row (bench.trial), so results never depend on Tune's state;
Tune's files live under ``<run>/tune`` for debugging only.

On a cluster a trial whose process or node dies (a lost worker node, an out-of-memory kill) is
rescheduled by Tune on any node with room, up to ``MAX_RETRIES`` times; after that it becomes an error
row and the run exits non-zero. Local paths in the specs are absolute (planning makes them so), so
every node reads the same data and writes to the same results path.

While a trial runs, the messages its method sends (``ctx.progress``) go to the trial's ``log.txt`` and, at
most one every ``$BENCH_PROGRESS_EVERY_S`` seconds (default 1; 0 sends them all), through Tune's result channel to the driver's view; each such
report holds up the trial until the driver has taken it, hence the throttle. The trial's last result is
marked ``final``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import BenchError
from ..results import RowWriteError, RunFolder
from ..spec import TrialSpec
from .live_view import RunProgress

MAX_RETRIES = 2  # restarts of a trial whose process or node died, before it is recorded as lost
PROGRESS_EVERY_S = 1.0  # default of $BENCH_PROGRESS_EVERY_S

_QUIET_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",  # keep the launch directory as the trials' cwd
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: no experiment box
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # our rows are the results; skip Tune's csv/json/tb files
    "RAY_DEDUP_LOGS": "1",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


def _trainable(config: dict[str, Any], progress_every_s: float = PROGRESS_EVERY_S) -> None:
    import torch
    from ray import tune

    from ..trial import execute_trial
    from ..tune import epoch_reporter

    torch.set_num_threads(max(1, int(config["cpus"])))
    where = _this_node()
    progress = ThrottledProgress(lambda message: tune.report({"final": False, "progress": message, **where}),
                                 every_s=progress_every_s)
    progress("started")
    spec = TrialSpec.from_dict(config["spec"])
    try:
        row = execute_trial(spec, progress=progress, where=where,
                            on_epoch=epoch_reporter(spec, lambda result: tune.report({**result, **where})))
    except RowWriteError as err:  # the driver records it: as an error row if it can reach the store itself
        tune.report({"final": True, "ok": False, "unsaved": str(err), **where})
        return
    tune.report({"final": True, "ok": row["status"] == "ok", "top1": row.get("top1") or float("nan"),
                 "error": str(row.get("error") or ""), **where})


class ThrottledProgress:
    """Passes a message on unless one went less than ``every_s`` seconds ago (the trial's log keeps all)."""

    def __init__(self, send, every_s: float = PROGRESS_EVERY_S, clock=time.monotonic):
        self.send, self.every_s, self.clock = send, every_s, clock
        self.last: float | None = None

    def __call__(self, message: str) -> None:
        now = self.clock()
        if self.last is None or now - self.last >= self.every_s:
            self.last = now
            self.send(message)


def _progress_every_s() -> float:
    value = os.environ.get("BENCH_PROGRESS_EVERY_S", str(PROGRESS_EVERY_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise BenchError(f"BENCH_PROGRESS_EVERY_S={value!r} is not a number of seconds; set it to e.g. 1 (0: every "
                         "progress message)")
    return seconds


def _this_node() -> dict[str, str]:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}


def _prepare_env(address: str | None) -> None:
    """Environment for Ray; it must be set before ray is first imported, which reads it."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    # `ray start` turns token authentication on; a driver joining it must present the token too.
    # The token comes from RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token.
    has_token = "RAY_AUTH_TOKEN" in os.environ or "RAY_AUTH_TOKEN_PATH" in os.environ or (
        Path.home() / ".ray" / "auth_token").is_file()
    if address and "RAY_AUTH_MODE" not in os.environ and has_token:
        os.environ["RAY_AUTH_MODE"] = "token"


# Tune's trial actors (their own runtime env, in placement groups) never take the idle workers a local node
# starts for the driver; not starting them leaves the CPUs to the driver's imports and the trials' workers.
_LOCAL_NODE_CONFIG = {"prestart_worker_first_driver": False}


class _LocalStart:
    """The background start of this process's local Ray node: begun by ``start_local_ray``, awaited by
    ``_init_ray`` (which re-raises its failure) and by ``stop_ray``."""

    def __init__(self):
        self.ready: threading.Event | None = None  # None: no background start was begun
        self.error: BaseException | None = None

    def begin(self) -> None:
        self.ready = threading.Event()

        def start() -> None:
            try:
                _start_local()
            except BaseException as err:
                self.error = err
            finally:
                self.ready.set()
            # Ray's processes are started with a parent-death signal, which Linux sends when the *thread* that
            # started them ends: this thread lives as long as the process (a daemon, so exit never waits on it).
            threading.Event().wait()

        threading.Thread(target=start, name="bench-ray-start", daemon=True).start()

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.wait()


_local_start = _LocalStart()


def start_local_ray() -> None:
    """Start the local Ray node in the background, while the driver imports and plans the trials (Ray's
    start is mostly waiting on its own processes). Safe to call more than once; nothing starts when a
    cluster is joined."""
    if _local_start.ready is None and not os.environ.get("RAY_ADDRESS"):
        _prepare_env(None)
        importlib.import_module("ray")  # here: in the thread it would share the GIL with the torch import
        _local_start.begin()


def stop_ray() -> None:
    """Stop the local node this process started (waiting for a start still under way: a user mistake can end
    the run while Ray is starting), or leave the cluster it joined."""
    import ray

    _local_start.wait()
    if ray.is_initialized():
        _kill_local_monitor()
        ray.shutdown()


def _kill_local_monitor() -> None:
    """Ray's shutdown stops the GCS before the autoscaler's monitor, whose SIGTERM handler then waits on the
    GCS until it is killed a second later; a node this process started has nothing to autoscale, so its
    monitor is killed first (1.3 s -> 0.4 s of shutdown). Nothing happens on a cluster joined."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # None on a joined cluster's driver
    if node is not None and node.is_head() and hasattr(node, "kill_monitor"):
        node.kill_monitor(check_alive=False)


def _start_local() -> None:
    import ray

    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", object_store_memory=256 * 2**20, _system_config=_LOCAL_NODE_CONFIG)


def _init_ray(address: str | None) -> None:
    import ray

    if not address:
        _local_start.wait()
        if _local_start.error is not None:
            raise _local_start.error
    if ray.is_initialized():
        return
    if address:
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except Exception as err:
            raise BenchError(f"cannot join the Ray cluster at {address} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200]}); check the address, or that RAY_AUTH_MODE "
                             "matches the cluster's (token or disabled)") from None
    else:
        _start_local()


@contextlib.contextmanager
def _ray_output_to(path: Path, console: Console):
    """While Tune runs, what Ray's processes write straight to this process's stderr (state dumps when a node
    dies, warnings) goes to ``path``; bench's view and messages keep the terminal."""
    if console.file is not sys.__stderr__ or sys.__stderr__ is None:  # a console of its own (tests, pipes)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 2)
        console.file = terminal
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            console.file = None  # back to the process's stderr
            terminal.close()


def _node_stopped(log: Path) -> str:
    return f"the local Ray node stopped; run the same command again (finished trials are kept; Ray's messages: {log})"


@contextlib.contextmanager
def _watch_local_node(address: str | None, console: Console, log: Path):
    """When the Ray node this process started stops (its raylet killed, out of memory), Ray's core worker ends
    this process within seconds, with nothing said. A watcher says it first, in one line, and ends the
    process itself: every row written so far is complete (rows are written atomically) and a rerun resumes."""
    from .ray_callbacks import local_node_stopped

    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            if local_node_stopped():
                console.print(f"[bold red]error:[/] {_node_stopped(log)}", highlight=False, soft_wrap=True)
                console.file.flush()
                os._exit(1)

    if address is None:
        threading.Thread(target=watch, name="bench-node-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()


class _DropTrialTaskFailures(logging.Filter):
    """Tune logs the driver-side traceback of every dead trial process, which says nothing about the
    trial; bench prints one line per reschedule instead, and the error row says what happened.
    Exceptions raised by the trainable itself (bugs) keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ray.exceptions import RayActorError

        return not (record.getMessage().startswith("Trial task failed") and record.exc_info
                    and isinstance(record.exc_info[1], RayActorError))


def run_with_ray(specs: list[TrialSpec], *, address: str | None = None, cpus_per_trial: float = 1.0,
                 gpus_per_trial: float = 0.0, max_concurrent: int | None = None,
                 console: Console | None = None, scheduler=None, callbacks=()) -> dict[str, int]:
    """Run ``specs`` (already filtered to what is left to do). Returns counts of ok/error/lost trials (and
    of trials a ``scheduler``, e.g. bench.tune's ASHA, stopped early); ``callbacks``: more Tune callbacks."""
    _prepare_env(address)
    from ray import tune

    console = console or Console(stderr=True)
    if not specs:
        return {"ok": 0, "error": 0, "lost": 0}
    folder = RunFolder(specs[0].results, specs[0].run)
    _init_ray(address)
    tune_log = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, _DropTrialTaskFailures) for f in tune_log.filters):
        tune_log.addFilter(_DropTrialTaskFailures())
    by_id = {s.trial_id: s for s in specs}
    counts = {"ok": 0, "error": 0, "lost": 0, "stopped": 0}

    with RunProgress(console) as bar:
        task = bar.add_task(f"run {folder.run}", total=len(specs), failed=0)

        from .ray_callbacks import ProgressCallback, local_node_stopped

        callback = ProgressCallback(bar, task, folder, counts)
        storage = Path(folder.root) / "tune" if folder.is_local else Path.home() / "ray_results" / "bench"
        fn = tune.with_resources(tune.with_parameters(_trainable, progress_every_s=_progress_every_s()),
                                 {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        from .ray_callbacks import StageAwareSearcher

        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(search_alg=StageAwareSearcher(by_id.values(), cpus_per_trial),
                                        num_samples=len(by_id), max_concurrent_trials=max_concurrent,
                                        scheduler=scheduler,
                                        reuse_actors=True, trial_dirname_creator=lambda t: t.trial_id),
            run_config=tune.RunConfig(name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
                                      storage_path=str(storage.resolve()), verbose=0,
                                      callbacks=[callback, *callbacks],
                                      failure_config=tune.FailureConfig(max_failures=MAX_RETRIES)),
        )
        log = Path(folder.root) / "ray.log" if folder.is_local else Path(tempfile.gettempdir()) / "bench-ray.log"
        with _ray_output_to(log, console), _watch_local_node(address, console, log):
            try:
                tuner.fit()
            except Exception:
                if not local_node_stopped():
                    raise
            if local_node_stopped():
                raise BenchError(_node_stopped(log))
    callback.raise_problems()
    return counts


@dataclasses.dataclass
class RayExecutor:
    """Ray Tune: each trial a Tune trial holding its CPUs and GPUs, on this machine's node or the cluster at
    ``address`` (bench.runner.Executor)."""

    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    console: Console | None = None

    def __call__(self, specs: list[TrialSpec], *, scheduler=None, callbacks=()) -> dict[str, int]:
        return run_with_ray(specs, address=self.address, cpus_per_trial=self.cpus_per_trial,
                            gpus_per_trial=self.gpus_per_trial, max_concurrent=self.max_concurrent,
                            console=self.console, scheduler=scheduler, callbacks=callbacks)


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown, which with torch and Ray loaded takes seconds
    and does nothing for the results: every row is written and closed by now, and Ray is stopped first."""
    stop_ray()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # e.g. a pipe its reader closed
            pass
    os._exit(code)
