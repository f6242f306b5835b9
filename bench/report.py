"""Turn the benchmark's runs into cells, tables, warnings and the results file.

A cell is one target at one concurrency: the median of its runs for rates,
latencies and CPU, the sum for errors, memory as after its last run.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path

MEDIANS = ("req_per_s", "p50_ms", "p90_ms", "p99_ms", "cpu_us_per_req", "cpu_percent")


def summarize(key: str, label: str, connections: int, runs: list[dict]) -> dict:
    wrk_errors, non_2xx = Counter(), Counter()
    for run in runs:
        wrk_errors.update(run["wrk_errors"])
        non_2xx.update(run["chatd_log"]["non_2xx"])
    return {
        "target": key,
        "label": label,
        "connections": connections,
        "requests": sum(run["requests"] for run in runs),
        **{name: statistics.median(run[name] for run in runs) for name in MEDIANS},
        "added_p50_ms": None,
        "rss_mib": runs[-1]["rss_mib"],
        "pss_mib": runs[-1]["pss_mib"],
        "wrk_errors": dict(wrk_errors),
        "non_2xx": dict(non_2xx),
        "worker_boots": sum(run["chatd_log"]["worker_boots"] for run in runs),
        "connections_per_worker": [run["connections_per_worker"] for run in runs],
        "load_cpu_busy_percent": max(run["load_cpu_busy_percent"] for run in runs),
        "chatd_cpu_other_percent": max(run["chatd_cpu_other_percent"] for run in runs),
        "runs": runs,
    }


def add_baselines(cells: list[dict], baselines: dict[str, str]) -> None:
    """Compare each cell with its direct upstream's at the same concurrency, in the same
    run: added_p50_ms (the difference), and p50 and req/s as ratios to direct."""
    by_key = {(cell["target"], cell["connections"]): cell for cell in cells}
    for cell in cells:
        base = baselines.get(cell["target"])
        if base:
            direct = by_key[base, cell["connections"]]
            cell["added_p50_ms"] = cell["p50_ms"] - direct["p50_ms"]
            cell["p50_ratio"] = cell["p50_ms"] / direct["p50_ms"]
            cell["req_per_s_ratio"] = cell["req_per_s"] / direct["req_per_s"]


def error_count(cell: dict) -> int:
    """Failed requests: wrk's socket errors, plus non-2xx answers as wrk or chatd's log saw them.

    wrk counts statuses above 399; chatd's access lines any non-2xx, also for
    requests wrk gave up on. The larger count is taken, never the sum.
    """
    errors = cell["wrk_errors"]
    sockets = sum(n for kind, n in errors.items() if kind != "status")
    return sockets + max(errors.get("status", 0), sum(cell["non_2xx"].values()))


def error_text(cell: dict) -> str:
    count = error_count(cell)
    if not count:
        return "0"
    parts = [f"{kind} {n}" for kind, n in cell["wrk_errors"].items() if n and kind != "status"]
    parts += [f"HTTP {status}×{n:,}" for status, n in cell["non_2xx"].items()]
    if not cell["non_2xx"] and cell["wrk_errors"].get("status"):
        parts.append(f"status {cell['wrk_errors']['status']:,}")
    return f"**{count:,}** ({count / max(cell['requests'], 1):.0%}: {', '.join(parts)})"


def ms(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    digits = 3 if abs(value) < 10 else 1
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def cells_table(cells: list[dict]) -> str:
    rows = [
        "| target | conns | req/s | × direct | p50 ms | p99 ms | added p50 ms | CPU µs/req "
        "| CPU % | RSS MiB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for cell in sorted(cells, key=lambda c: c["connections"]):
        ratio = cell.get("req_per_s_ratio")
        rows.append(
            f"| {cell['label']} | {cell['connections']} | {cell['req_per_s']:,.0f} "
            f"| {'' if ratio is None else f'{ratio:.3g}'} "
            f"| {ms(cell['p50_ms'])} | {ms(cell['p99_ms'])} "
            f"| {ms(cell['added_p50_ms'], signed=True)} | {cell['cpu_us_per_req']:,.0f} "
            f"| {cell['cpu_percent']:.0f} | {cell['rss_mib']:.1f} | {error_text(cell)} |"
        )
    return "\n".join(rows)


def streaming_table(streaming: dict) -> str:
    rows = [
        "| streamed call | calls | first piece ms (median / max) | mean gap ms | max gap ms "
        "| pieces |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, s in streaming.items():
        rows.append(
            f"| {label} | {s['calls']} | {ms(s['first_piece_ms_median'])} / "
            f"{ms(s['first_piece_ms_max'])} | {ms(s['gap_ms_mean'])} | {ms(s['gap_ms_max'])} "
            f"| {'/'.join(map(str, s['pieces_per_call']))} |"
        )
    return "\n".join(rows)


def profile_table(profile: dict) -> str:
    rows = ["| layer | share of the worker's CPU samples |", "|---|---:|"]
    rows += [f"| {layer} | {pct:.0f}% |" for layer, pct in profile["layers_percent"].items()]
    return "\n".join(rows)


def warnings_for(cells: list[dict], chatd_cpu: int, noise_percent: float) -> list[str]:
    """ERRORS lines for cells with failed requests; notes for noise and worker restarts."""
    warnings = []
    for cell in cells:
        where = f"{cell['label']} at {cell['connections']} connections"
        if error_count(cell):
            split = [sorted(c.values(), reverse=True) for c in cell["connections_per_worker"] if c]
            seen = f"; connections per worker: {split}" if split else ""
            warnings.append(f"ERRORS: {where}: {error_text(cell).replace('**', '')}{seen}")
        if cell["chatd_cpu_other_percent"] > noise_percent:
            noisiest = max(cell["runs"], key=lambda run: run["chatd_cpu_other_percent"])
            others = ", ".join(
                f"{name} {s:.1f} s" for name, s in noisiest["busiest_other_processes"]
            )
            warnings.append(
                f"noisy: {where}: CPU {chatd_cpu} was up to "
                f"{cell['chatd_cpu_other_percent']:.0f}% busy outside chatd (busiest other "
                f"processes: {others or 'none seen'})"
            )
    boots = sum(cell["worker_boots"] for cell in cells)
    if boots:
        warnings.append(f"gunicorn restarted a worker {boots} times during the measured runs")
    return warnings


def distinct_problems(lines: list[str]) -> dict[str, int]:
    """Warning and error lines with timestamps, pids and request ids taken out, counted."""
    counts = Counter()
    for line in lines:
        line = re.sub(r"^\[[^]]*\] \[\d+\] |^\S+ \S+ ", "", line)  # gunicorn's or chatd's stamp
        counts[re.sub(r"\[[0-9a-f]{32}\]", "[id]", line)] += 1
    return dict(counts.most_common())


def write_results(report: dict, path: Path) -> Path:
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(".json.tmp")  # bench/results/*.tmp is git-ignored
    partial.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    partial.replace(path)
    return path


def print_report(report: dict, path: str) -> None:
    mode, head = report["mode"], report["headline"]
    print(
        f"\n## chatd benchmark, {report['date']} ({mode['name']}: {mode['runs']} run(s) x "
        f"{mode['seconds']} s per cell; medians)\n"
    )
    print(f"- Pinning: {report['pinning']}.")
    print(f"- chatd: `{report['commands']['chatd']}`")
    settings = report["chatd_settings"]
    print(
        f"- chatd settings: {settings['workers']} workers x {settings['threads']} threads, "
        f"log level {settings['log_level']} ({settings['access_log']})"
    )
    print(
        f"- Machine: {report['machine']['nproc']} CPUs ({report['machine']['cpu']}), "
        f"Python {report['machine']['python']}, {report['machine']['versions']}\n"
    )
    print(cells_table(report["cells"]))
    print(
        "\nCPU µs/req, CPU % and RSS are the answering server's: chatd's gunicorn tree on "
        "chatd rows, nginx's or upstream.py's on direct rows. × direct = req/s as a ratio to "
        "the direct upstream's at the same concurrency in the same run; added p50 = p50 minus "
        "the direct upstream's. Rows with errors count the (fast) error answers in req/s and "
        "latency.\n"
    )
    if report["streaming"]:
        print(streaming_table(report["streaming"]))
    added = head["chat_added_p50_ms_at_1_connection"]
    rate = head["chat_req_per_s_at_32_connections"]
    print(
        f"\n**Headline:** chatd /chat → Ollama-native: "
        f"{ms(added, signed=True) + ' ms' if added is not None else 'not run'} p50 added at 1 "
        f"connection, {f'{rate:,.0f}' if rate is not None else 'not run'} req/s at 32 "
        f"connections; RSS of the {head['workers']} workers {head['workers_rss_mib']:.1f} MiB, "
        f"with the master {head['rss_mib']:.1f} MiB (PSS {head['pss_mib']:.1f} MiB).\n"
    )
    if report.get("profile"):
        profile = report["profile"]
        print(
            f"Where a chatd worker's CPU goes ({profile['target']}, {profile['connections']} "
            f"connections, {profile['samples']:,} py-spy samples while holding the GIL):\n"
        )
        print(profile_table(profile) + "\n")
    for warning in report["warnings"]:
        print(f"{'!!!!' if warning.startswith('ERRORS') else 'note:'} {warning}")
    if report["chatd_log_problems"]:
        print("\nWarnings in chatd's log (distinct, with counts):")
        for line, count in report["chatd_log_problems"].items():
            print(f"  {count:>6} × {line[:200]}")
    print(f"\nResults: {path}; took {report['elapsed_s']:.0f} s.")


# -- the concurrent-streams mode ---------------------------------------------------------


def ratio(value: float | None, direct: float | None) -> str:
    return f"{value / direct:.2f}x" if value is not None and direct else ""


def streams_table(rows: list[dict]) -> str:
    """One line per N and server: counts, first piece and largest gap, CPU and memory."""
    lines = [
        "| N | server | completed | shed (503) | failed | first piece p50 / p99 ms "
        "| largest gap p99 ms (x direct) | CPU µs/piece | RSS KiB/stream | /health max ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        direct = row["direct"]
        for name, cell in (("direct", direct), ("chatd", row["chatd"])):
            gap = ms(cell["gap_ms_p99"])
            if name == "chatd" and cell["gap_ms_p99"] is not None:
                gap += f" ({ratio(cell['gap_ms_p99'], direct['gap_ms_p99'])})"
            rss = cell.get("rss_kib_per_stream")
            health = cell.get("health_ms_max")
            lines.append(
                f"| {row['streams']:,} | {name} | {cell['completed']:,} | {cell['shed']:,} "
                f"| {cell['failed']:,} | {ms(cell['first_piece_ms_p50'])} / "
                f"{ms(cell['first_piece_ms_p99'])} | {gap} | {cell['cpu_us_per_piece']:,.0f} "
                f"| {'' if rss is None else f'{rss:,.0f}'} "
                f"| {'' if health is None else ms(health)} |"
            )
    return "\n".join(lines)


def stream_row_text(row: dict) -> str:
    """One progress line for a finished N."""
    c = row["chatd"]
    return (
        f"  {row['streams']}: chatd completed {c['completed']}, shed {c['shed']}, failed "
        f"{c['failed']} {c['errors'] or ''}; first p99 {ms(c['first_piece_ms_p99'])} ms, gap p99 "
        f"{ms(c['gap_ms_p99'])} ms (direct {ms(row['direct']['gap_ms_p99'])}); "
        f"{c['cpu_us_per_piece']:.0f} µs CPU/piece"
    )


def print_stream_report(report: dict, path: str) -> None:
    stream = report["stream"]
    print(
        f"\n## chatd concurrent streams, {report['date']}: N streams opened at once, "
        f"{stream['pieces']} pieces {stream['gap_ms']} ms apart\n"
    )
    print(f"- Pinning: {report['pinning']}.")
    print(f"- chatd: `{report['commands']['chatd']}`")
    settings = report["chatd_settings"]
    print(f"- chatd settings: {settings['workers']} workers x {settings['threads']} threads")
    print(
        f"- Machine: {report['machine']['nproc']} CPUs ({report['machine']['cpu']}), "
        f"Python {report['machine']['python']}\n"
    )
    print(streams_table(report["rows"]))
    print(
        "\nFirst piece: from the connect to the first content piece; largest gap: each "
        "stream's longest wait between two pieces, p99 over streams (completed streams "
        "only). CPU µs/piece: the server's process tree CPU over the cell / pieces "
        "delivered. RSS KiB/stream: chatd's peak RSS over the cell minus its RSS before the "
        "first cell, per admitted stream. /health: the slowest of the probes sent every "
        "250 ms during the cell.\n"
    )
    for row in report["rows"]:
        for name in ("direct", "chatd"):
            if row[name]["errors"]:
                print(f"!!!! {row['streams']} streams, {name}: {row[name]['errors']}")
    if report["chatd_log_problems"]:
        print("\nWarnings in chatd's log (distinct, with counts):")
        for line, count in list(report["chatd_log_problems"].items())[:20]:
            print(f"  {count:>6} × {line[:200]}")
    print(f"\nResults: {path}; took {report['elapsed_s']:.0f} s.")
