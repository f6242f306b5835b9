"""What /proc says about a process tree and the CPUs: CPU time, memory, connections.

Linux only, stdlib only. A "tree" is a process and all its live descendants
(gunicorn's master and workers, nginx's master and worker).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    ppid: int
    name: str
    #: When it started (clock ticks after boot): with the pid, tells a process from a
    #: later one that got the same pid. (A kernel thread's name changes with its work.)
    started: int
    #: utime + stime + cutime + cstime. The children's part keeps a worker that
    #: gunicorn restarted (max_requests) and reaped in its tree's sum.
    ticks: int


def scan() -> dict[int, Proc]:
    """Every live process, from one pass over /proc."""
    procs = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # it exited meanwhile
        # The name sits in parentheses and may hold spaces: split around them.
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()  # from field 3, state, on
        ticks = sum(int(value) for value in fields[11:15])
        procs[int(entry.name)] = Proc(int(fields[1]), name, int(fields[19]), ticks)
    return procs


def tree(procs: dict[int, Proc], root: int) -> list[int]:
    """``root`` and all its descendants in ``procs``."""
    children = defaultdict(list)
    for pid, proc in procs.items():
        children[proc.ppid].append(pid)
    found, queue = [], [root] if root in procs else []
    while queue and len(found) < len(procs):
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def process_tree(root: int) -> list[int]:
    return tree(scan(), root)


@dataclass(frozen=True)
class Snapshot:
    """CPU time of every process and every CPU at one moment."""

    at: float
    procs: dict[int, Proc]
    cores: dict[int, float]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(time.monotonic(), scan(), cores_busy())

    def tree_cpu(self, root: int) -> float:
        return sum(self.procs[pid].ticks for pid in tree(self.procs, root)) / CLOCK_TICKS


def busiest_others(before: Snapshot, after: Snapshot, ours: set[int], top: int = 3) -> list:
    """The processes not in ``ours`` that used the most CPU between two snapshots."""
    used = Counter()
    for pid, proc in after.procs.items():
        if pid in ours:
            continue
        start = before.procs.get(pid)
        ticks = proc.ticks - (start.ticks if start and start.started == proc.started else 0)
        if ticks > 0:
            used[f"{proc.name} ({pid})"] = ticks
    return [[name, ticks / CLOCK_TICKS] for name, ticks in used.most_common(top)]


def _kib(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_mib(root: int) -> dict:
    """RSS summed over the tree and over its children alone (gunicorn's workers, nginx's
    worker), and PSS, which counts pages shared since fork only once."""
    pids = process_tree(root)
    rss = {pid: _kib(f"/proc/{pid}/status", "VmRSS:") for pid in pids}
    pss = sum(_kib(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in pids)
    return {
        "rss_mib": sum(rss.values()) / 1024,
        "children_rss_mib": sum(kib for pid, kib in rss.items() if pid != root) / 1024,
        "pss_mib": pss / 1024,
        "processes": len(pids),
    }


def cores_busy() -> dict[int, float]:
    """Busy seconds of each CPU since boot: all but idle and iowait."""
    busy = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                # user nice system idle iowait irq softirq steal (guest time is in user)
                ticks = [int(v) for v in values[:8]]
                busy[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS
    return busy


def connections_per_process(port: int) -> dict[int, int] | None:
    """Established client connections to 127.0.0.1:``port`` by owning pid (None without ss)."""
    try:
        listing = subprocess.run(
            ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return dict(Counter(int(pid) for pid in re.findall(r"pid=(\d+)", listing)))
