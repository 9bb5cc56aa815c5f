"""What PostgreSQL does per event, measured, not assumed: rows written and index insertions
(from its statistics, `pg_stat_user_tables`), and the CPU time of the backends serving a
database (from `/proc/<pid>/stat` of the processes `pg_stat_activity` lists for it).

Rows and index insertions: a backend publishes its table counters when it goes idle, at most once
a second, else within 10 s, and at its exit. So `Writes` diffs the counters around a counted
number of operations made by a service that was started after the first snapshot and stopped
before the second (`bench.run.Bench.count_writes`): every counter of its work is then published.
Index insertions are derived per table from the counters and the table's indexes: every inserted
row version and every non-HOT updated one adds one entry to each index (PostgreSQL 15 has no
per-index insertion counter); a partial index is counted as if every row matched its predicate
(an upper bound; `Writes.partial` names the tables with one).

CPU: user + system ticks of each client backend of the database, read before and after a
scenario's measured load; a backend that started in between counts from zero, one that exited
in between is lost (`BackendCpu.lost` says how many). PostgreSQL's shared processes (WAL writer,
checkpointer) serve every database on the server and are not counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

TICK = 1 / os.sysconf("SC_CLK_TCK")

_TABLE_COUNTERS = """
SELECT s.relname, s.n_tup_ins, s.n_tup_upd, s.n_tup_hot_upd, s.n_tup_del,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid) AS indexes,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid AND i.indpred IS NOT NULL)
           AS partial_indexes
FROM pg_stat_user_tables s
"""


@dataclass(frozen=True)
class TableCounters:
    inserted: int
    updated: int
    hot_updated: int
    deleted: int
    indexes: int
    partial_indexes: int


async def table_counters(dsn: str) -> dict[str, TableCounters]:
    """Every user table's write counters as published now (a new connection: no cached stats
    snapshot)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(_TABLE_COUNTERS)
    finally:
        await conn.close()
    return {
        row["relname"]: TableCounters(
            row["n_tup_ins"],
            row["n_tup_upd"],
            row["n_tup_hot_upd"],
            row["n_tup_del"],
            row["indexes"],
            row["partial_indexes"],
        )
        for row in rows
    }


@dataclass
class Writes:
    """The difference of two `table_counters()` over `events` events."""

    events: int
    rows_inserted: dict[str, int] = field(default_factory=dict)
    rows_updated: dict[str, int] = field(default_factory=dict)
    hot_updated: dict[str, int] = field(default_factory=dict)
    index_insertions: dict[str, int] = field(default_factory=dict)
    partial: set[str] = field(default_factory=set)

    @classmethod
    def between(
        cls, before: dict[str, TableCounters], after: dict[str, TableCounters], events: int
    ) -> Writes:
        writes = cls(events)
        for name, now in after.items():
            was = before.get(name, TableCounters(0, 0, 0, 0, now.indexes, now.partial_indexes))
            inserted = now.inserted - was.inserted
            updated = now.updated - was.updated
            hot = now.hot_updated - was.hot_updated
            if inserted:
                writes.rows_inserted[name] = inserted
            if updated:
                writes.rows_updated[name] = updated
                writes.hot_updated[name] = hot
            entries = (inserted + updated - hot) * now.indexes
            if entries:
                writes.index_insertions[name] = entries
                if now.partial_indexes:
                    writes.partial.add(name)
        return writes

    def per_event(self, counts: dict[str, int]) -> float:
        return sum(counts.values()) / self.events if self.events else 0.0

    def summary(self) -> str:
        """One line: rows inserted, rows updated (HOT), index insertions per event, and the
        tables they fall on."""

        def by_table(counts: dict[str, int]) -> str:
            return ", ".join(
                f"{name} {n / self.events:.2f}"
                for name, n in sorted(counts.items(), key=lambda item: -item[1])
            )

        updated = self.per_event(self.rows_updated)
        hot = self.per_event(self.hot_updated)
        text = (
            f"{self.per_event(self.rows_inserted):.2f} rows inserted "
            f"({by_table(self.rows_inserted) or 'none'}), {updated:.2f} row versions updated "
            f"({hot:.2f} HOT; {by_table(self.rows_updated) or 'none'}), "
            f"{self.per_event(self.index_insertions):.2f} index insertions "
            f"({by_table(self.index_insertions) or 'none'})"
        )
        if self.partial:
            text += f"; at most, partial indexes on {', '.join(sorted(self.partial))}"
        return text


# ---------------------------------------------------------------------------------------------
# CPU


def backend_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: fields count after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


async def backend_pids(admin_dsn: str, databases: list[str]) -> list[int]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[]) "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            databases,
        )
    finally:
        await conn.close()
    return [row["pid"] for row in rows]


@dataclass
class BackendCpu:
    """CPU seconds of the client backends of `databases` between `start()` and `stop()`.
    `seconds` is None when PostgreSQL's processes are not visible here (another machine, a
    container)."""

    admin_dsn: str
    databases: list[str]
    seconds: float | None = None
    lost: int = 0
    backends: int = 0
    _before: dict[int, int] = field(default_factory=dict)

    async def start(self) -> None:
        self._before = {}
        for pid in await backend_pids(self.admin_dsn, self.databases):
            ticks = backend_ticks(pid)
            if ticks is not None:
                self._before[pid] = ticks

    async def stop(self) -> None:
        pids = await backend_pids(self.admin_dsn, self.databases)
        total = 0
        seen = 0
        for pid in pids:
            ticks = backend_ticks(pid)
            if ticks is None:
                continue
            seen += 1
            total += ticks - self._before.get(pid, 0)
        self.lost = len(set(self._before) - set(pids))
        self.backends = seen
        self.seconds = total * TICK if seen else None

    def per_event_us(self, events: float) -> float | None:
        if self.seconds is None or events <= 0:
            return None
        return self.seconds / events * 1e6
