"""Rows on an S3-compatible object store: moto's standalone server on loopback, reached the way a user
reaches MinIO or Ceph (``AWS_ENDPOINT_URL`` and the usual AWS credential variables).

Covers: a run writes its rows and uploads its artifacts, a rerun writes nothing, `bench report` reads
the rows; a store that stops answering mid-run leaves only whole rows and a one-line error, and the same
command then completes the run; the run lock on an object store.
"""
from __future__ import annotations

import io
import time

import boto3
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from bench.errors import BenchError
from bench.results import RowWriteError, RunFolder
from test_runs import BASE, TWO, _free_port, bench

BUCKET = "bench-results"


class Store:
    """A moto S3 server on a fixed loopback port that can be stopped and started again (state is kept:
    moto's backends live in this process)."""

    def __init__(self, port: int):
        self.port = port
        self.env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        self.server = None

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def client(self):
        return boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def objects(self, prefix: str) -> dict[str, str]:
        """key -> ETag of every object under ``prefix`` (not the empty "folder/" markers)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])
                if not o["Key"].endswith("/")}


@pytest.fixture
def store(monkeypatch, tmp_path):
    s = Store(_free_port())
    s.start()
    try:
        for key, value in s.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))  # the run lock of an object-store run lives here
        s.client().create_bucket(Bucket=BUCKET)
        yield s
    finally:
        s.stop()


def s3_bench(store: Store, tmp_path, *args: str, **kw):
    return bench(*args, results=f"s3://{BUCKET}/prefix", env={**store.env, "BENCH_CACHE": str(tmp_path / "cache")},
                 **kw)


def test_rows_on_s3_rerun_skips_them_and_report_reads_them(store, tmp_path):
    args = ["run", "--run", "s3run", "--datasets", TWO, "--methods", "zeroshot,mask", "--set", "mask.steps=2",
            "--shots", "1", *BASE]
    code, _, err = s3_bench(store, tmp_path, *args)
    assert code == 0, err
    assert f"s3://{BUCKET}/prefix/s3run" in err
    rows = RunFolder(f"s3://{BUCKET}/prefix", "s3run").read()
    assert len(rows) == 4 and rows.trial_id.is_unique and set(rows.status) == {"ok"}
    assert rows.node_id.notna().all() and rows.node_ip.notna().all()
    objects = store.objects("prefix/s3run/")
    assert sorted(k for k in objects if k.startswith("prefix/s3run/trials/")) == sorted(
        f"prefix/s3run/trials/{t}.parquet" for t in rows.trial_id)
    for trial_id in rows.loc[rows["stack"] == "mask", "trial_id"]:  # artifacts are uploaded beside the rows
        assert f"prefix/s3run/artifacts/{trial_id}/mask/mask.safetensors" in objects

    code, _, err = s3_bench(store, tmp_path, *args)
    assert code == 0 and "running 0" in err, err
    assert store.objects("prefix/s3run/") == objects  # nothing rewritten

    code, out, err = s3_bench(store, tmp_path, "report", "--run", "s3run", "--format", "csv")
    assert code == 0, err
    assert "syn_colour" in out and "mask" in out
    code, out_latest, err = s3_bench(store, tmp_path, "report", "--format", "csv")  # the latest run, found on S3
    assert code == 0 and out_latest == out, err


def test_a_store_that_stops_answering_leaves_whole_rows_and_the_same_command_completes(store, tmp_path):
    args = ["run", "--run", "outage", "--datasets", TWO, "--methods", "zeroshot", "--seeds", "1,2,3", "--shots", "1",
            *BASE]
    proc = s3_bench(store, tmp_path, *args, wait=False)
    start = time.time()
    while not store.objects("prefix/outage/trials/"):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < 240, "no rows appeared in time"
        time.sleep(0.2)
    store.stop()
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        store.start()
    assert proc.returncode != 0
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and "s3://bench-results/prefix/outage" in last, err
    written = store.objects("prefix/outage/trials/")
    assert 0 < len(written) < 6
    for key in written:  # every object that exists is a whole row
        body = store.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert pq.read_table(io.BytesIO(body)).num_rows == 1

    code, _, err = s3_bench(store, tmp_path, *args)
    assert code == 0, err
    rows = RunFolder(f"s3://{BUCKET}/prefix", "outage").read()
    assert len(rows) == 6 and rows.trial_id.is_unique and set(rows.status) == {"ok"}


def test_a_failed_put_raises_one_line_and_stores_nothing(store):
    folder = RunFolder(f"s3://{BUCKET}/prefix", "put")
    folder.ensure()
    store.stop()
    try:
        with pytest.raises(RowWriteError) as info:
            folder.write_row({"run": "put", "trial_id": "abc", "status": "ok"})
    finally:
        store.start()
    assert isinstance(info.value, BenchError) and "\n" not in str(info.value)
    assert "the row of trial abc" in str(info.value)
    assert store.objects("prefix/put/trials/") == {}


def test_the_run_lock_of_an_object_store_run_is_local_and_refuses_a_second_holder(store):
    first, second = RunFolder(f"s3://{BUCKET}/prefix", "locked"), RunFolder(f"s3://{BUCKET}/prefix", "locked")
    with first.lock():
        with pytest.raises(BenchError, match="is in use by another `bench run`"):
            with second.lock():
                pass
    with second.lock():  # released with its holder
        pass
