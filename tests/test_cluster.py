"""A real two-node Ray cluster on one machine: a head on 127.0.0.1 and a worker node on 127.0.0.2 (both
loopback), started with `ray start` as a user would, each with its own CPU and free ports, joined by
`bench run --address`. Checks that trials run on both nodes and say where, and that losing the worker
node mid-run costs no trial: its trial is rescheduled on the head, and the same command again has
nothing left to do.

Other Ray instances may run on this machine: every port is a free one, the session folder is private,
and only this test's processes are killed (by process group), never with `ray stop`.
"""
from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_runs import BASE, TWO, bench, rows_of, trial_files

ROOT = Path(__file__).resolve().parents[1]
WORKER_IP = "127.0.0.2"
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                      "RAY_health_check_failure_threshold": "4"}  # a lost node is declared dead in ~2 s, not ~30 s


def _ray() -> list[str]:
    """`ray` of this interpreter: a node's workers run the Python that started the node, and so import
    the bench under test (a bare `ray` on PATH may belong to another environment)."""
    return [sys.executable, "-m", "ray.scripts.scripts"]


def _free_ports(n: int, host: str) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((host, 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def readme_start_env() -> dict[str, dict[str, str]]:
    """The environment README.md's start commands give `ray start` on the head and on the other nodes, read
    from its **Start commands** block, so that the nodes here start as the README says."""
    block = (ROOT / "README.md").read_text().split("**Start commands.**", 1)[1].split("```", 2)[1]
    out = {}
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        env = dict(w.split("=", 1) for w in itertools.takewhile(lambda w: re.match(r"^[A-Z_]+=", w), words))
        if words[len(env):len(env) + 2] == ["ray", "start"]:
            out["head" if "--head" in words else "node"] = env
    assert set(out) == {"head", "node"}, block
    return out


def _auth_env() -> dict[str, str]:
    token = Path.home() / ".ray" / "auth_token"
    return {"RAY_AUTH_MODE": "token"} if "RAY_AUTH_MODE" not in os.environ and token.is_file() else {}


class RayNode:
    """One `ray start --block` process group: the node's raylet, object store, agents and workers."""

    def __init__(self, ip: str, cpus: int, folder: Path, head: str | None = None):
        self.ip = ip
        p = _free_ports(14, ip)
        cmd = [*_ray(), "start", "--block", f"--node-ip-address={ip}", f"--num-cpus={cpus}", "--disable-usage-stats",
               f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}",
               f"--dashboard-agent-listen-port={p[2]}", f"--dashboard-agent-grpc-port={p[3]}",
               f"--runtime-env-agent-port={p[4]}", f"--metrics-export-port={p[5]}",
               "--worker-port-list=" + ",".join(map(str, p[6:13])), f"--object-store-memory={100 * 2**20}"]
        if head is None:
            cmd += ["--head", f"--port={p[13]}", "--include-dashboard=false", f"--temp-dir={folder / 'ray'}"]
            self.address = f"{ip}:{p[13]}"
        else:
            cmd += [f"--address={head}"]
            self.address = head
        self.log = folder / f"node-{ip}.log"
        as_written = readme_start_env()["head" if head is None else "node"]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **as_written, **FAST_HEALTH_CHECKS})

    def wait_started(self, limit: float = 120) -> None:
        start = time.time()
        while "Ray runtime started" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.time() - start < limit, "ray node did not start in time"
            time.sleep(0.3)

    def processes(self) -> list[str]:
        out = subprocess.run(["ps", "-o", "args=", "-g", str(self.proc.pid)], capture_output=True, text=True)
        return out.stdout.splitlines()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        else:
            try:  # the leader is gone but its children may not be
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def cluster():
    folder = Path(tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    nodes: list[RayNode] = []
    try:
        head = RayNode("127.0.0.1", 1, folder)
        nodes.append(head)
        head.wait_started()
        worker = RayNode(WORKER_IP, 1, folder, head=head.address)
        nodes.append(worker)
        worker.wait_started()
        yield head, worker
    finally:
        for node in reversed(nodes):
            node.kill()
        shutil.rmtree(folder, ignore_errors=True)


def cluster_bench(head: RayNode, *args: str, results: Path, **kw):
    return bench(*args, "--address", head.address, results=results, env=_auth_env(), **kw)


def test_trials_run_on_both_nodes_and_rows_say_which(cluster, tmp_path):
    head, _ = cluster
    code, _, err = cluster_bench(head, "run", "--run", "two-nodes", "--methods", "zeroshot", "--datasets", TWO,
                                 "--seeds", "1,2,3", *BASE, results=tmp_path)
    assert code == 0, err
    rows = rows_of(tmp_path, "two-nodes")
    assert len(rows) == 6 and set(rows.status) == {"ok"}
    per_node = rows.groupby(["node_id", "node_ip"]).size()
    print("trials per node:", per_node.to_dict())
    assert rows.node_id.nunique() == 2, per_node
    assert WORKER_IP in set(rows.node_ip)


def test_losing_the_worker_node_mid_run_reschedules_its_trial_and_rerun_has_nothing_left(cluster, tmp_path):
    head, worker = cluster
    args = ["run", "--run", "node-loss", "--methods", "mask", "--set", "mask.steps=2", "--datasets", TWO,
            "--seeds", "1,2,3", *BASE]
    proc = cluster_bench(head, *args, results=tmp_path, wait=False)
    start = time.time()
    while not any("ImplicitFunc" in p for p in worker.processes()):  # a trial was placed on the worker node
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < 240, "no trial reached the worker node"
        time.sleep(0.2)
    time.sleep(1.0)  # the trial is under way (a mask trial takes seconds to build its model and data)
    before = rows_of(tmp_path, "node-loss")
    assert WORKER_IP not in set(before.node_ip)  # the worker's trial had not finished
    killed_at = time.time()
    worker.kill()
    out, err = proc.communicate(timeout=400)
    finished_at = time.time()
    assert proc.returncode == 0, err
    assert "its node was lost); rescheduled" in " ".join(err.split()), err
    assert "Traceback" not in err
    rows = rows_of(tmp_path, "node-loss")
    assert len(rows) == 6 and rows.trial_id.is_unique and set(rows.status) == {"ok"}
    assert WORKER_IP not in set(rows.node_ip)  # every trial, the lost one included, finished on the head
    print(f"node lost; run finished {finished_at - killed_at:.1f} s later;",
          [line for line in err.splitlines() if "rescheduled" in line])

    files = {p: p.stat().st_mtime_ns for p in trial_files(tmp_path, "node-loss")}
    code, _, err = cluster_bench(head, *args, results=tmp_path)
    assert code == 0 and "running 0" in err, err
    assert {p: p.stat().st_mtime_ns for p in trial_files(tmp_path, "node-loss")} == files
