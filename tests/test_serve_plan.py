"""ltx-plan --serve: the capacity table per device-group layout, its fleet extension and its traffic counts."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from ltx_ascend.checkpoints.presets import config_22b
from ltx_ascend.serve.jobs import COLUMNS, SqliteJobStore, _SqliteTx
from ltx_ascend.tools import plan, serve_plan
from tests.conftest import run_cli

SHAPE = "41x1024x1536"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """One `ltx-plan --serve --hosts 3 --json` run (the slow part: ~20 s of counting on meta tensors)."""
    out = tmp_path_factory.mktemp("serve_plan") / "plan.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = plan.main(["ti2vid_two_stages", "--shape", SHAPE, "--serve", "--hosts", "3", "--json", str(out)])
    assert code == 0
    return json.loads(out.read_text()), stdout.getvalue()


def test_the_layout_table_has_the_four_layouts(planned):
    result, text = planned
    layouts = result["serve"]["layouts"]
    assert [r["layout"] for r in layouts] == ["8 x 1", "4 x 2", "2 x 4", "1 x 8"]
    assert [r["groups"] * r["devices_per_group"] for r in layouts] == [8] * 4
    for r in layouts:
        assert any(line.startswith(r["layout"] + " ") and r["parallel"] in line for line in text.splitlines())
    assert "videos/h x3" in text and "shared storage" in text


def test_the_numbers_are_consistent(planned):
    result, _ = planned
    serve = result["serve"]
    one_card = serve["layouts"][0]
    # 8 x 1: the published 910B s/step x steps (30 + 3), no communication
    assert one_card["parallel"] == "cfg=1,ulysses=1" and one_card["comm_mb_per_video"] == 0
    assert one_card["dit_s"] == pytest.approx(30 * 2.68 + 3 * 2.59)
    for r in serve["layouts"]:
        assert r["latency_s"] == pytest.approx(r["dit_s"] + r["other_s"])
        assert r["videos_per_hour_host"] == pytest.approx(r["groups"] * 3600 / r["latency_s"])
        assert r["videos_per_hour"] == pytest.approx(3 * r["videos_per_hour_host"])
        assert all(a["latency_s"] >= r["latency_s"] for a in r["alternatives"])  # the best layout is shown
    latencies = [r["latency_s"] for r in serve["layouts"]]
    assert latencies == sorted(latencies, reverse=True)  # more devices per job: each job finishes sooner
    # ...but a group's devices never do more than N times one device's work
    assert all(one_card["videos_per_hour_host"] >= r["videos_per_hour_host"] for r in serve["layouts"])
    assert serve["best_throughput"] == "8 x 1" and serve["best_latency"] == "1 x 8"


def test_videos_per_hour_scale_with_hosts_and_traffic_per_video_does_not(planned):
    result, _ = planned
    config = config_22b()
    dit = serve_plan.group_dit_seconds(result, config, 8, plan.HCCS_LINK_GB_S)
    one = serve_plan.serve_plan(result, config, hosts=1, link_gb_s=plan.HCCS_LINK_GB_S, dit_seconds=dit)
    twenty = serve_plan.serve_plan(result, config, hosts=20, link_gb_s=plan.HCCS_LINK_GB_S, dit_seconds=dit)
    for a, b in zip(one["layouts"], twenty["layouts"], strict=True):
        assert b["videos_per_hour"] == pytest.approx(20 * a["videos_per_hour"])
        assert b["latency_s"] == a["latency_s"]
    assert twenty["store"]["transactions"] == one["store"]["transactions"]
    assert twenty["store"]["fleet_transactions_per_s"] == pytest.approx(20 * one["store"]["fleet_transactions_per_s"])
    assert twenty["storage"]["fleet_bytes_per_s"] == pytest.approx(20 * one["storage"]["fleet_bytes_per_s"])
    # negligible: well under 1 % of a 10 GbE link and a few hundred transactions a second at 20 hosts
    assert twenty["storage"]["fleet_bytes_per_s"] * 8 < 0.01 * 10e9
    assert twenty["store"]["fleet_transactions_per_s"] < 500


def test_the_row_size_counts_every_column_of_the_job_table(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.db")
    columns = [r[1] for r in store._conn.execute("PRAGMA table_info(jobs)").fetchall()]
    store.close()
    assert set(columns) == set(serve_plan.COLUMN_BYTES) and set(COLUMNS) <= set(columns)


def test_the_store_calls_per_job_are_what_the_store_does(tmp_path, monkeypatch):
    """Run one job's life on a real store, counting its transactions and rows: they equal the plan's count."""
    steps, other_s, latency_s, lease_s, poll_s = 33, 25.0, 90.0, 60.0, 2.0
    calls = serve_plan.job_transactions(steps, other_s, latency_s, lease_s, poll_s)
    expected = serve_plan.job_traffic(calls, 1000)
    store = SqliteJobStore(tmp_path / "jobs.db")
    seen = {"tx": 0, "written": 0, "read": 0}
    run = store._run

    def counting_run(body, *, write=True):
        seen["tx"] += 1
        return run(body, write=write)

    def execute(self, sql, params=()):
        n = self.cur.execute(sql, params).rowcount
        seen["written"] += max(n, 0) if sql.lstrip().startswith(("INSERT", "UPDATE")) else 0
        return n

    def one(self, sql, params=()):
        row = self.cur.execute(sql, params).fetchone()
        seen["read"] += row is not None
        return row

    def all_rows(self, sql, params=()):
        rows = self.cur.execute(sql, params).fetchall()
        seen["read"] += len(rows)
        return rows

    monkeypatch.setattr(store, "_run", counting_run)
    monkeypatch.setattr(_SqliteTx, "execute", execute)
    monkeypatch.setattr(_SqliteTx, "one", one)
    monkeypatch.setattr(_SqliteTx, "all", all_rows)
    job = store.create("ti2vid_two_stages", {"prompt": "x"})
    store.claim("w1", lease_s, ["ti2vid_two_stages"])
    for step in range(steps):
        assert store.set_progress(job.id, "w1", step * 100 // steps)
        assert not store.cancel_requested(job.id)
    for _ in range(math.ceil(other_s / (lease_s / 3))):
        assert store.renew(job.id, "w1", lease_s)
    assert store.complete(job.id, "w1", "out.mp4")
    for _ in range(math.ceil(latency_s / poll_s) + 1):  # the client's polls and the download's lookup
        store.get(job.id)
    store.close()
    assert seen == {"tx": expected.transactions, "written": expected.rows_written, "read": expected.rows_read}
    assert expected.durable_transactions == 3  # create, claim, complete: the rest are soft (progress, lease)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--serve", "--hosts", "0"], "--hosts 0: a fleet has at least 1 host"),
        (["--hosts", "2"], "--hosts sizes a service fleet: add --serve"),
        (["--serve", "--devices", "8", "--parallel", "cfg=2,ulysses=4"], "--serve plans every device-group layout"),
        (["--serve", "--host-devices", "0"], "--host-devices 0"),
    ],
)
def test_bad_serve_flags_are_one_line(extra, message, capsys):
    code, out, err = run_cli(plan.main, ["ti2vid_two_stages", "--shape", SHAPE, *extra], capsys)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1
