"""What a Spark driver holds on to: persisted RDDs, broadcast variables, memory.

Shared by the reliability tests and ``benchmarks/soak.py``. Read-only probes of a classic
(non-Connect) session's JVM and of this machine's ``/proc``; nothing here changes Spark.

The driver's broadcast variables are read from its ``BlockManager``
(``BlockInfoManager.broadcastToBlockIds``: broadcast id → its blocks). py4j cannot call
methods of ``SparkEnv`` (listing them fails on a class Spark does not ship), so the fields
are read by Java reflection; the names are those of Spark 3.5 and 4.x.

Spark broadcasts more than our parameters: every stage's serialised tasks go out as a
broadcast too, removed by Spark's ``ContextCleaner`` only after a JVM garbage collection.
So the probes also record which broadcast ids pyspark created (``TrackedBroadcasts``), to
tell the parameter broadcasts of spark_gmm apart from Spark's own.
"""

from __future__ import annotations

import resource
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Resources",
    "TrackedBroadcasts",
    "persistent_rdd_ids",
    "process_rss_mib",
    "resources",
    "wait_for",
]


def _field(spark, obj: Any, cls: str, name: str) -> Any:
    jvm = spark.sparkContext._jvm
    field = jvm.java.lang.Class.forName(cls).getDeclaredField(name)
    field.setAccessible(True)
    return field.get(obj)


def driver_broadcast_ids(spark) -> set[int]:
    """Ids of the broadcast variables with blocks in the driver's BlockManager."""
    jsc = spark.sparkContext._jsc.sc()
    bm = _field(spark, jsc.env(), "org.apache.spark.SparkEnv", "blockManager")
    bim = _field(spark, bm, "org.apache.spark.storage.BlockManager", "blockInfoManager")
    by_id = _field(spark, bim, "org.apache.spark.storage.BlockInfoManager", "broadcastToBlockIds")
    return {int(i) for i in by_id.keySet().toArray()}


def persistent_rdd_ids(spark) -> set[int]:
    """Ids of the RDDs the SparkContext has persisted (``sc.getPersistentRDDs``)."""
    return {int(i) for i in spark.sparkContext._jsc.getPersistentRDDs().keySet().toArray()}


def process_rss_mib(pid: int | str = "self") -> float:
    """Resident set size of a process, MiB (Linux ``/proc``; this process elsewhere)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    if pid == "self":  # not Linux: peak RSS is the best available
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return float("nan")


def process_pss_mib(pid: int) -> float:
    """Proportional set size, MiB: shared pages split between the processes sharing them,
    so the PSS of forked Python workers adds up (their RSS counts shared pages in each)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class TrackedBroadcasts:
    """Record every broadcast variable pyspark creates on this SparkContext.

    Wraps ``sc.broadcast`` of the running context (undone by :meth:`close`); the
    library's own code is untouched. ``created`` holds the JVM ids in creation order,
    ``objects`` weak references to the pyspark ``Broadcast`` objects.
    """

    def __init__(self, spark) -> None:
        self._sc = spark.sparkContext
        self._original = self._sc.broadcast
        self.created: list[int] = []
        self.objects: list[weakref.ref] = []

        def broadcast(value):
            bc = self._original(value)
            self.created.append(int(bc._jbroadcast.id()))
            self.objects.append(weakref.ref(bc))
            return bc

        self._sc.broadcast = broadcast

    def close(self) -> None:
        self._sc.broadcast = self._original

    def __enter__(self) -> TrackedBroadcasts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Resources:
    """One sample of what the driver holds."""

    persistent_rdds: int
    broadcasts: int  # all live broadcast variables on the driver (Spark's own included)
    tracked_live: int  # of those, the ones pyspark created (spark_gmm's parameters)
    rss_mib: float  # this (Python driver) process


def resources(spark, tracked: TrackedBroadcasts | None = None) -> Resources:
    live = driver_broadcast_ids(spark)
    mine = set(tracked.created) if tracked is not None else set()
    return Resources(
        persistent_rdds=len(persistent_rdd_ids(spark)),
        broadcasts=len(live),
        tracked_live=len(live & mine),
        rss_mib=process_rss_mib(),
    )


def wait_for(condition, timeout: float = 10.0, interval: float = 0.1) -> bool:
    """Poll ``condition()`` until true or ``timeout`` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def children(pid: int) -> list[int]:
    """Direct children of a process (Linux ``/proc``)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def state(pid: int) -> str:
    """One-letter process state (R running, S sleeping, Z zombie, ...); '' if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def alive(pid: int) -> bool:
    return state(pid) not in ("", "Z", "X")
