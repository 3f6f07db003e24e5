"""`ltx-plan --serve`: capacity of the video service for each way of cutting a host's devices into replicas.

A host's D devices are split into D / g replica groups of g devices (8 x 1, 4 x 2, 2 x 4, 1 x 8 on an 8-card
910B host). Each group runs one job at a time; a job's latency is its DiT steps under the group's best
cfg x ulysses layout (ltx-plan's per-step model and its parallel communication model: published s/step
where the shape has one, else the roofline) plus the work outside the DiT steps (prompt encoding, decode,
mp4), which runs on one device. Videos per hour = groups x 3600 / latency, times `--hosts`. Then the traffic a
fleet adds per video: job-store transactions, rows and bytes (counted from the job table's columns and the
transitions one job goes through) and shared-storage bytes (the mp4 written once, read once), which must stay
negligible beside the devices' work.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from ltx_ascend.errors import UserError

# -- the job store's traffic per video --------------------------------------------------------------------
# Bytes each column of the job table holds for one representative job (ltx_ascend/serve/jobs.py COLUMNS plus
# the internal seq and lease_s; tests/test_serve_plan.py checks these names against the schema). Integers are
# 8 bytes, ids 38 characters ("video_" + 32 hex), params the JSON request (`_params_bytes`).
ROW_HEADER_BYTES = 24  # PostgreSQL's tuple header (SQLite's record header is smaller)
COLUMN_BYTES = {
    "seq": 8,
    "id": 38,
    "status": 11,
    "model": 17,  # "ti2vid_two_stages"
    "params": None,  # the request JSON: computed
    "created_at": 8,
    "started_at": 8,
    "completed_at": 8,
    "progress": 4,
    "error": 0,  # NULL unless failed
    "attempts": 4,
    "note": 0,  # NULL unless requeued
    "worker": 24,  # e.g. "host17:4242:r3"
    "lease_expires_at": 8,
    "lease_s": 8,
    "output": 48,  # the output key: the job id, the attempt, ".mp4"
    "cancel_requested": 4,
    "remixed_from": 0,
}


def _params_bytes(prompt_chars: int, frames: int, height: int, width: int) -> int:
    """The stored request: prompt and negative prompt plus the LTX settings, as the store writes JSON."""
    params = {
        "prompt": "x" * prompt_chars,
        "negative_prompt": "x" * 200,
        "seed": 2**31 - 1,
        "num_frames": frames,
        "height": height,
        "width": width,
        "frame_rate": 24.0,
        "num_inference_steps": 30,
        "guidance": {"cfg": 3.0, "stg": 1.0, "rescale": 0.7, "modality": 3.0},
        "pipeline": "ti2vid_two_stages",
    }
    return len(json.dumps(params, sort_keys=True, separators=(",", ":")))


@dataclass(frozen=True)
class JobTraffic:
    """What one video costs the job store: transactions, row versions written, rows read, and bytes."""

    transactions: int
    durable_transactions: int  # state changes that wait for the WAL flush; progress and renewals do not
    rows_written: int
    rows_read: int
    row_bytes: int
    bytes_total: int  # (written + read) x row bytes: an upper bound (most reads select a few columns)


def job_transactions(steps: int, other_s: float, latency_s: float, lease_s: float, poll_s: float) -> dict[str, tuple]:
    """The store calls one job makes, by the contract's transitions: name -> (transactions, rows written, rows
    read). The worker reports progress (which renews the lease) and checks for a cancel once per sampling step,
    renews every lease/3 outside them; the client polls `GET /v1/videos/{id}` every poll_s and downloads once."""
    renewals = math.ceil(other_s / (lease_s / 3))
    polls = math.ceil(latency_s / poll_s)
    return {
        "create": (1, 1, 1),  # insert, read it back
        "claim": (1, 1, 2),  # expired-lease scan (an index probe, no row), the candidate, read back
        "set_progress (per step)": (steps, steps, 0),
        "cancel_requested (per step)": (steps, 0, steps),
        "renew (outside steps)": (renewals, renewals, 0),
        "complete": (1, 1, 0),
        "client polls": (polls, 0, polls),
        "download (get)": (1, 0, 1),
    }


def job_traffic(calls: dict[str, tuple], params_bytes: int) -> JobTraffic:
    row = ROW_HEADER_BYTES + sum(params_bytes if b is None else b for b in COLUMN_BYTES.values())
    tx = sum(c[0] for c in calls.values())
    durable = sum(c[0] for name, c in calls.items() if name in DURABLE)
    written = sum(c[1] for c in calls.values())
    read = sum(c[2] for c in calls.values())
    return JobTraffic(tx, durable, written, read, row, (written + read) * row)


DURABLE = ("create", "claim", "complete")  # the writes that are job state changes (synchronous commits)


# -- the layouts ------------------------------------------------------------------------------------------
def factorizations(devices: int, heads: dict[str, int]) -> list[tuple[int, int]]:
    """(cfg, ulysses) with cfg x ulysses = devices and ulysses dividing every attention's head count."""
    return [
        (devices // u, u) for u in range(1, devices + 1) if devices % u == 0 and all(h % u == 0 for h in heads.values())
    ]


def group_latency(result: dict[str, Any], config: dict[str, Any], cfg: int, ulysses: int, link_gb_s: float) -> dict:
    """DiT seconds per video on one group: per stage, steps x the parallel model's s/step."""
    from ltx_ascend.tools.plan import parallel_plan, pipeline_stages

    steps = {s.name: s.steps for s in pipeline_stages(result["pipeline"])}
    stages = parallel_plan(result, config, cfg, ulysses, link_gb_s)
    per_stage = {}
    published = True
    for r in stages:
        s_per_step = r["predicted_s_n"] if r["predicted_s_n"] is not None else r["roofline_s_n"]
        published &= r["predicted_s_n"] is not None
        per_stage[r["stage"]] = s_per_step * steps[r["stage"]]
    comm_mb = sum(r["comm_mb_per_step"] * steps[r["stage"]] for r in stages)
    return {"dit_s": sum(per_stage.values()), "per_stage_s": per_stage, "published": published, "comm_mb": comm_mb}


def group_dit_seconds(
    result: dict[str, Any], config: dict[str, Any], host_devices: int, link_gb_s: float
) -> dict[int, list[dict]]:
    """Group size -> DiT seconds per video for each valid cfg x ulysses layout of that many devices."""
    transformer = config["transformer"]
    heads = {"video": transformer["num_attention_heads"], "audio": transformer["audio_num_attention_heads"]}
    out = {}
    for g in (d for d in range(1, host_devices + 1) if host_devices % d == 0):
        found = [
            {"cfg": cfg, "ulysses": ulysses, **group_latency(result, config, cfg, ulysses, link_gb_s)}
            for cfg, ulysses in factorizations(g, heads)
        ]
        if found:
            out[g] = found
    return out


def other_seconds(result: dict[str, Any]) -> tuple[float, str]:
    """Time outside the DiT steps (prompt encoding, decoders, vocoder), on one device: their roofline at the
    efficiency the published DiT figures show (roofline / published s/step), or the plain roofline."""
    rows = result["rows"]
    roofline = sum(r["roofline_s"] for r in rows if not r["component"].startswith("dit"))
    dit = [r for r in rows if r["component"].startswith("dit") and r["measured_s_per_step"]]
    if not dit:
        return roofline, "roofline at the SoC's peak"
    efficiency = min(r["roofline_s"] / r["measured_s_per_step"] for r in dit)
    return roofline / efficiency, f"roofline at the published DiT efficiency ({100 * efficiency:.0f} % of peak)"


def serve_plan(
    result: dict[str, Any],
    config: dict[str, Any],
    *,
    host_devices: int = 8,
    hosts: int = 1,
    link_gb_s: float,
    other_s: float | None = None,
    lease_s: float = 60.0,
    poll_s: float = 2.0,
    prompt_chars: int = 1000,
    mp4_mbit_s: float = 8.0,
    fps: float = 24.0,
    dit_seconds: dict[int, list[dict]] | None = None,
) -> dict[str, Any]:
    """The capacity table. `dit_seconds` (from `group_dit_seconds`, the slow part) may be reused across calls."""
    if hosts < 1:
        raise UserError(f"--hosts {hosts}: a fleet has at least 1 host")
    if host_devices < 1:
        raise UserError(f"--host-devices {host_devices}: a host has at least 1 device")
    frames, height, width = (int(v) for v in result["shape"].split("x"))
    default_other, other_basis = other_seconds(result)
    if other_s is None:
        other_s = default_other
    else:
        other_basis = "given (--other-s)"
    if dit_seconds is None:
        dit_seconds = group_dit_seconds(result, config, host_devices, link_gb_s)
    layouts = _group_layouts(result, dit_seconds, other_s, host_devices, hosts)
    best_throughput = max(layouts, key=lambda r: r["videos_per_hour"])
    fleet_vph = best_throughput["videos_per_hour"]
    dims = (frames, height, width)
    store = _store_load(result, other_s, best_throughput["latency_s"], fleet_vph, lease_s, poll_s, prompt_chars, dims)
    return {
        "hosts": hosts,
        "host_devices": host_devices,
        "link_gb_s": link_gb_s,
        "other_basis": other_basis,
        "layouts": layouts,
        "best_throughput": best_throughput["layout"],
        "best_latency": min(layouts, key=lambda r: r["latency_s"])["layout"],
        "store": store,
        "storage": _storage_load(mp4_mbit_s, frames, fps, fleet_vph),
    }


def _group_layouts(
    result: dict[str, Any], dit_seconds: dict[int, list[dict]], other_s: float, host_devices: int, hosts: int
) -> list[dict[str, Any]]:
    """One row per group size: the host split into groups of g devices, each group's fastest cfg x ulysses,
    its latency and videos per hour, and whether rank 0 (which holds every model) fits the device."""
    dit_rows = [r for r in result["rows"] if r["component"].startswith("dit")]
    weights_gb = dit_rows[0]["params_gb"]
    activation_gb = max(r["activation_gb"] for r in dit_rows)
    others_gb = sum(r["params_gb"] for r in result["rows"] if not r["component"].startswith("dit"))
    usable_gb = result["soc"]["hbm_gb"] * 0.9
    layouts = []
    for g, found in dit_seconds.items():
        options = [{**o, "latency_s": o["dit_s"] + other_s} for o in found]
        best = min(options, key=lambda o: o["latency_s"])
        groups = host_devices // g
        # Rank 0 of a group holds the DiT, its share of the activations, and the other components.
        rank0_gb = weights_gb + activation_gb / best["ulysses"] + others_gb
        layouts.append(
            {
                "layout": f"{groups} x {g}",
                "groups": groups,
                "devices_per_group": g,
                "parallel": f"cfg={best['cfg']},ulysses={best['ulysses']}",
                "dit_s": best["dit_s"],
                "other_s": other_s,
                "latency_s": best["latency_s"],
                "videos_per_hour_host": groups * 3600 / best["latency_s"],
                "videos_per_hour": hosts * groups * 3600 / best["latency_s"],
                "published_basis": best["published"],
                "comm_mb_per_video": best["comm_mb"],
                "rank0_gb": rank0_gb,
                "rank0_fits": rank0_gb <= usable_gb,
                "dit_rank_gb": weights_gb + activation_gb / best["ulysses"],
                "alternatives": [
                    {"parallel": f"cfg={o['cfg']},ulysses={o['ulysses']}", "latency_s": o["latency_s"]}
                    for o in options
                    if o is not best
                ],
            }
        )
    return layouts


def _store_load(
    result: dict[str, Any],
    other_s: float,
    latency_s: float,
    fleet_vph: float,
    lease_s: float,
    poll_s: float,
    prompt_chars: int,
    dims: tuple[int, int, int],
) -> dict[str, Any]:
    """The job store's load at the best-throughput layout: each job's calls, and the fleet's rates."""
    frames, height, width = dims
    steps = sum(s["steps"] for s in _stages(result))
    calls = job_transactions(steps, other_s, latency_s, lease_s, poll_s)
    traffic = job_traffic(calls, _params_bytes(prompt_chars, frames, height, width))
    return {
        "calls": {k: list(v) for k, v in calls.items()},
        **asdict(traffic),
        "lease_s": lease_s,
        "poll_s": poll_s,
        "prompt_chars": prompt_chars,
        "fleet_transactions_per_s": fleet_vph * traffic.transactions / 3600,
        "fleet_durable_per_s": fleet_vph * traffic.durable_transactions / 3600,
        "fleet_soft_writes_per_s": fleet_vph * (traffic.rows_written - traffic.durable_transactions) / 3600,
        "fleet_bytes_per_s": fleet_vph * traffic.bytes_total / 3600,
    }


def _storage_load(mp4_mbit_s: float, frames: int, fps: float, fleet_vph: float) -> dict[str, Any]:
    """The output store's load: each video written once by its worker and read once by the API."""
    mp4_bytes = mp4_mbit_s * 1e6 / 8 * frames / fps
    return {
        "mp4_mbit_s": mp4_mbit_s,
        "mp4_bytes": mp4_bytes,
        "bytes_per_video": 2 * mp4_bytes,  # written once by the worker, read once by the API streaming it
        "fleet_bytes_per_s": fleet_vph * 2 * mp4_bytes / 3600,
    }


def _stages(result: dict[str, Any]) -> list[dict[str, Any]]:
    from ltx_ascend.tools.plan import pipeline_stages

    return [{"name": s.name, "steps": s.steps} for s in pipeline_stages(result["pipeline"])]


def format_serve_plan(plan: dict[str, Any], result: dict[str, Any]) -> str:
    soc = result["soc"]
    hosts = plan["hosts"]
    lines = [
        f"ltx-serve capacity: {result['pipeline']} at {result['shape']} on {hosts} host(s) x "
        f"{plan['host_devices']} {soc['name']} ({soc['hbm_gb']:.0f} GB each), device link {plan['link_gb_s']:g} GB/s",
        f"one job at a time per group; DiT s/video = steps x ltx-plan's parallel s/step (published s/step x compute "
        f"share + comm, no overlap: an upper bound); other s = prompt, decode, vocoder: {plan['other_basis']}",
        "",
        f"{'layout':<7} {'parallel':<18} {'DiT s':>7} {'other s':>8} {'latency s':>10} {'videos/h/host':>14} "
        f"{'videos/h x' + str(hosts):>14} {'comm GB/rank':>13} {'rank-0 GB':>10} {'fits':>5}",
    ]
    for r in plan["layouts"]:
        basis = "" if r["published_basis"] else " (roofline)"
        lines.append(
            f"{r['layout']:<7} {r['parallel']:<18} {r['dit_s']:>7.1f} {r['other_s']:>8.1f} {r['latency_s']:>10.1f} "
            f"{r['videos_per_hour_host']:>14.0f} {r['videos_per_hour']:>14.0f} {r['comm_mb_per_video'] / 1e3:>13.1f} "
            f"{r['rank0_gb']:>10.1f} {'yes' if r['rank0_fits'] else 'no':>5}{basis}"
        )
    lines.append(
        f"most videos per hour: {plan['best_throughput']}; lowest latency: {plan['best_latency']} "
        "(the best cfg x ulysses per group size; others:"
        + "; ".join(
            f" {r['layout']} {a['parallel']} {a['latency_s']:.1f} s" for r in plan["layouts"] for a in r["alternatives"]
        )
        + ")"
    )
    lines.append(
        "the compute share assumes a rank's work shrinks as 1/U at 1/U of the tokens (optimistic at few tokens "
        "per rank: stage 1 has 2,304 video tokens); other s is optimistic too: pass --other-s with the prompt + "
        "decode seconds of ltx-run's stage timing table"
    )
    if not all(r["rank0_fits"] for r in plan["layouts"]):
        dit_gb = max(r["dit_rank_gb"] for r in plan["layouts"])
        lines.append(
            f"rank-0 GB = the DiT and its activations / ulysses ({dit_gb:.1f} GB at most: fits) + the text encoder and "
            f"decoders, which do not fit beside it in 90 % of {soc['hbm_gb']:.0f} GB: run the text encoder on the "
            "host or its own device, quantize it, or stream the DiT's blocks (ltx-plan --streaming-prefetch-count)"
        )
    store, storage = plan["store"], plan["storage"]
    fleet = max(r["videos_per_hour"] for r in plan["layouts"])
    lines += [
        "",
        f"per video, at {fleet:,.0f} videos/h over {hosts} host(s) ({plan['best_throughput']} per host):",
        f"{'traffic':<32} {'per video':>14} {'fleet':>16}",
        f"{'job store transactions':<32} {store['transactions']:>14,} {store['fleet_transactions_per_s']:>14.2f}/s",
        f"{'  of which durable commits':<32} {store['durable_transactions']:>14,}"
        f" {store['fleet_durable_per_s']:>14.2f}/s",
        f"{'job store rows written / read':<32} {str(store['rows_written']) + ' / ' + str(store['rows_read']):>14}",
        f"{'job store bytes (rows x ' + str(store['row_bytes']) + ' B)':<32} {store['bytes_total'] / 1e3:>12.1f} KB"
        f" {store['fleet_bytes_per_s'] / 1e3:>13.2f} KB/s",
        f"{'shared storage (mp4 in + out)':<32} {storage['bytes_per_video'] / 1e6:>12.1f} MB"
        f" {storage['fleet_bytes_per_s'] / 1e6:>13.2f} MB/s",
        "store calls per video: "
        + ", ".join(f"{name} {c[0]}" for name, c in store["calls"].items())
        + f" (lease {store['lease_s']:g} s, client poll every {store['poll_s']:g} s, prompt {store['prompt_chars']} "
        f"chars); mp4 at {storage['mp4_mbit_s']:g} Mbit/s (H.264 at this size: an assumption, --mp4-mbit-s)",
        f"fleet: {store['fleet_durable_per_s']:.1f} durable commits/s + {store['fleet_soft_writes_per_s']:.1f} "
        "progress/lease writes/s (asynchronous commits) + reads, all single-row, on the job store (one PostgreSQL "
        f"server commits thousands a second) and {storage['fleet_bytes_per_s'] * 8 / 1e6:.1f} Mbit/s of shared "
        f"storage ({100 * storage['fleet_bytes_per_s'] * 8 / 10e9:.2f} % of one 10 GbE link): negligible beside "
        f"{plan['hosts'] * plan['host_devices']} devices busy {plan['layouts'][0]['latency_s']:.0f} s a video",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ltx-plan --serve (service capacity)")
    group.add_argument("--serve", action="store_true", help="capacity of ltx-serve per device-group layout")
    group.add_argument("--hosts", type=int, default=None, help="hosts in the fleet (with --serve; default 1)")
    group.add_argument("--host-devices", type=int, default=8, help="devices per host (with --serve)")
    group.add_argument("--other-s", type=float, help="measured s per video outside the DiT steps (with --serve)")
    group.add_argument("--mp4-mbit-s", type=float, default=8.0, help="mp4 bitrate for storage traffic (--serve)")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad --serve flags before the plan's minutes of counting."""
    if not args.serve:
        if args.hosts is not None:
            raise UserError("--hosts sizes a service fleet: add --serve")
        return
    if args.hosts is not None and args.hosts < 1:
        raise UserError(f"--hosts {args.hosts}: a fleet has at least 1 host")
    if args.host_devices < 1:
        raise UserError(f"--host-devices {args.host_devices}: a host has at least 1 device")
    if args.devices != 1 or args.parallel:
        raise UserError("--serve plans every device-group layout itself: drop --devices / --parallel")
    if args.other_s is not None and args.other_s < 0:
        raise UserError(f"--other-s {args.other_s}: seconds, >= 0")
    if args.mp4_mbit_s <= 0:
        raise UserError(f"--mp4-mbit-s {args.mp4_mbit_s}: a bitrate, > 0")


def run(args: argparse.Namespace, result: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The --serve table for ltx-plan's main: prints it, returns the JSON part."""
    plan = serve_plan(
        result,
        config,
        host_devices=args.host_devices,
        hosts=args.hosts or 1,
        link_gb_s=args.link_gb_s,
        other_s=args.other_s,
        mp4_mbit_s=args.mp4_mbit_s,
    )
    print(format_serve_plan(plan, result))
    return plan
