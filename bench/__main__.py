"""The benchmark suite: ``.venv/bin/python -m bench`` (or ``make bench``) prints a table.

    python -m bench [--quick] [--backend sqlite,postgresql,mysql] [--repeat N]
                    [--only throughput,latency,scale,output,footprint,sequential,schedules]
                    [--profile DIR]

1. throughput: 2000 jobs of ``sh -c 'echo hi'`` through the HTTP API, in batches and one
   request per job (4 clients), 2 workers x 2 slots; jobs/s and the ratio to a raw-spawn
   baseline (a Python loop spawning the same command 4 at a time, output captured)
   measured right before, in the same run;
2. latency: 200 jobs at 20/s into idle workers; submit → started, submit → finished;
3. scale: 500 simulated workers and 1k / 10k / 100k waiting jobs, then 100k held jobs
   more, then 100k delayed jobs more: cost of a submit, of a finish that fills its slot,
   of a worker's poll, of a balancing pass and of the leader's tick (release of due
   delayed jobs, balancing, next wake-up); list API time;
4. output: one job writing 100 MB; MB/s into the database, worker peak RSS growth, and
   log read-back speed;
5. footprint: idle RSS of the server and a worker; CPU ms per job (throughput runs);
6. sequential: ONE client submitting one job per request, one after the other, over a
   kept-alive connection (``jobbalancer.client``), into one worker with 4 slots: jobs/s,
   CPU ms per job for the whole machine and by process (client, server, worker with its
   jobs, database), submit call time, then submit → started / finished at 20/s into the
   idle worker, the raw-spawn floor of the same run and idle RSS (see bench/sequential.py).
   Each run is a new cluster; the table gives every run, in order ("a / b").
7. schedules: 1k / 10k (/ 100k) enabled schedules, 10 of them firing every second: the
   leader's firing tick with nothing due and with 10 occurrences due (each a job), 200 due
   at one instant, and the lateness of occurrences fired by the leader's loop, p50/p99
   (see bench/schedules.py).

``--quick`` runs fewer jobs (400, 50 for latency, queue up to 10k, 20 MB of output).
``--profile DIR`` has py-spy (if installed) sample the server and the worker during the
sequential loop (DIR/N/ for run N when --repeat > 1); ``python -m bench.profile
DIR/*.txt`` summarises the stacks.
The machine may be shared: figures are medians of ``--repeat`` runs and the ratios compare
with a baseline taken in the same run. PostgreSQL and MariaDB are expected on 127.0.0.1
(see bench/cluster.py); each run uses a new database and drops it. The web pages have
their own benchmark: ``python -m bench.web_pages``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import output as output_bench
from bench import scale as scale_bench
from bench import schedules as schedules_bench
from bench import sequential as seq
from bench import throughput as tp
from bench.cluster import BACKENDS, Cluster

SECTIONS = ("throughput", "latency", "scale", "output", "footprint", "sequential", "schedules")


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print(
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for row in rows:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    sys.stdout.flush()  # fmt: skip


def _f(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


Rows = dict[str, list[list[str]]]


def run_cluster_benches(args: argparse.Namespace, backend: str, out: Rows) -> None:
    """Throughput, latency and footprint share one cluster per backend."""
    want = set(args.only)
    with Cluster(backend, workers=2, slots=2) as cluster:
        time.sleep(1)
        if "footprint" in want:
            rss = tp.idle_rss(cluster)
        batch: list[tp.Run] = []
        single: list[tp.Run] = []
        raw: list[float] = []
        if want & {"throughput", "footprint"}:
            for _ in range(args.repeat):
                raw.append(tp.raw_spawn(min(args.jobs, 1000)))
                batch.append(tp.throughput(cluster, args.jobs, batch=True))
                if "throughput" in want:
                    single.append(tp.throughput(cluster, args.jobs, batch=False))
        if "throughput" in want:
            base = statistics.median(raw)
            b = statistics.median(r.rate for r in batch)
            s = statistics.median(r.rate for r in single)
            out["throughput"].append([
                backend, _f(base, 0), _f(b, 0), f"{b / base:.0%}", _f(s, 0), f"{s / base:.0%}",
            ])  # fmt: skip
        if "latency" in want:
            lat = tp.latency(cluster, args.latency_jobs)
            row = [backend]
            for name in ("start", "finish"):
                v = lat[name]
                row += [_f(tp.pct(v, 50)), _f(tp.pct(v, 99)), _f(max(v))]
            out["latency"].append(row)
        if "footprint" in want:
            cpu = {k: statistics.median(r.cpu_ms[k] for r in batch) for k in batch[0].cpu_ms}
            out["footprint"].append([
                backend, _f(rss["server"], 0), _f(rss["worker"], 0),
                _f(cpu["server"], 2), _f(cpu["workers"], 2),
            ])  # fmt: skip


def _runs(values: list[float], digits: int = 1) -> str:
    """Every run's figure, in order: "185 / 156"."""
    return " / ".join(_f(v, digits) for v in values)


def run_sequential(args: argparse.Namespace, backend: str, out: Rows) -> None:
    """The sequential scenario, ``--repeat`` runs; one row of each table per backend."""
    runs = []
    for i in range(args.repeat):
        profile = args.profile and (args.profile / str(i + 1) if args.repeat > 1 else args.profile)
        runs.append(seq.sequential(backend, args.jobs, args.latency_jobs, profile))

    def each(figure: Callable[[seq.SeqRun], float], digits: int = 1) -> str:
        return _runs([figure(r) for r in runs], digits)

    pct = tp.pct
    out["sequential"].append([
        backend, each(lambda r: r.rate, 0), each(lambda r: r.cpu_ms["machine"]),
        each(lambda r: pct(r.submit_ms, 50)), each(lambda r: pct(r.idle_submit_ms, 50)),
        each(lambda r: pct(r.start_ms, 50)), each(lambda r: pct(r.start_ms, 99)),
        each(lambda r: pct(r.finish_ms, 50)), each(lambda r: pct(r.finish_ms, 99)),
        each(lambda r: pct([f - s for s, f in zip(r.start_ms, r.finish_ms, strict=True)], 50)),
        each(lambda r: r.floor_rate, 0), each(lambda r: r.floor_cpu_ms, 2),
    ])  # fmt: skip
    parts = ("machine", "client", "server", "worker", "jobs", "database", "rest")
    out["sequential_cpu"].append([
        backend, *(_runs([r.cpu_ms[k] for r in runs], 2) for k in parts),
        each(lambda r: r.rss_mib["server"], 0), each(lambda r: r.rss_mib["worker"], 0),
    ])  # fmt: skip


def _print_sequential(args: argparse.Namespace, out: Rows) -> None:
    runs = "each run in order, a / b" if args.repeat > 1 else "one run"
    move = seq.idle_move_ms()
    host = "no job cgroups here" if move is None else f"a cgroup move at idle: {move:.2f} ms"
    _table(
        f"6. Sequential: one client, one request per job over a kept-alive connection, "
        f"{args.jobs} jobs of sh -c 'echo hi', 1 worker x {seq.SLOTS} slots ({runs}); "
        f"latency: {args.latency_jobs} jobs at 20/s into the idle worker (run: started → "
        f"finished; {host}); ms",
        ["backend", "jobs/s", "CPU ms/job", "submit p50", "idle submit p50", "start p50",
         "p99", "finished p50", "p99", "run p50", "floor jobs/s", "floor CPU ms/job"],
        out["sequential"],
    )  # fmt: skip
    _table(
        "6b. Sequential: CPU ms per job by process (same runs; 'of it jobs' is the jobs' own "
        "sh, inside worker+jobs; 'rest' is the machine's busy CPU outside these processes: "
        "other load); idle RSS, MiB",
        ["backend", "machine", "client", "server", "worker+jobs", "of it jobs", "database",
         "rest", "server RSS", "worker RSS"],
        out["sequential_cpu"],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer jobs, smaller queues")
    parser.add_argument("--backend", default="sqlite,postgresql,mysql",
                        help="comma list of sqlite, postgresql, mysql")  # fmt: skip
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections")
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure (median)")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per throughput run")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy the server and worker in the sequential loop")  # fmt: skip
    args = parser.parse_args()
    args.backend = [b.strip() for b in args.backend.split(",") if b.strip()]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    for b in args.backend:
        if b not in BACKENDS:
            parser.error(f"unknown backend {b!r}")
    for s in args.only:
        if s not in SECTIONS:
            parser.error(f"unknown section {s!r}")
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.jobs = args.jobs or (400 if args.quick else 2000)
    args.latency_jobs = 50 if args.quick else 200
    levels = [1000, 10_000] if args.quick else [1000, 10_000, 100_000]
    output_mb = 20 if args.quick else 100

    out: dict[str, list[list[str]]] = {s: [] for s in (*SECTIONS, "sequential_cpu")}
    for backend in args.backend:
        print(f"running {backend} ...", file=sys.stderr, flush=True)
        if set(args.only) & {"throughput", "latency", "footprint"}:
            run_cluster_benches(args, backend, out)
        if "scale" in args.only:
            for level, costs in scale_bench.scale(backend, levels, 50).items():
                out["scale"].append([backend, level, *(_f(v, 2) for v in costs.values())])
        if "output" in args.only:
            o = output_bench.output(backend, output_mb)
            out["output"].append([backend, f"{output_mb} MB", _f(o.mb_per_s), _f(o.rss_growth_mb),
                                  _f(o.read_mb_per_s)])  # fmt: skip
        if "sequential" in args.only:
            run_sequential(args, backend, out)
        if "schedules" in args.only:
            out["schedules"] += schedules_bench.run(backend, levels, 5 if args.quick else 10)

    n = args.jobs
    if out["throughput"]:
        _table(
            f"1. Throughput: {n} jobs of sh -c 'echo hi', 2 workers x 2 slots, jobs/s "
            f"(median of {args.repeat})",
            ["backend", "raw spawn", "batch", "of raw", "one by one", "of raw"],
            out["throughput"],
        )
    if out["latency"]:
        _table(
            f"2. Start latency: {args.latency_jobs} jobs at 20/s into idle workers, ms",
            ["backend", "start p50", "p99", "max", "finish p50", "p99", "max"],
            out["latency"],
        )
    if out["scale"]:
        _table(
            f"3. Scale: {scale_bench.WORKERS} workers, all slots busy; median ms per operation",
            ["backend", "waiting", "submit", "finish+assign", "poll", "balance pass",
             "list API", "list waiting", "list worker", "leader tick"],
            out["scale"],
        )  # fmt: skip
    if out["output"]:
        _table(
            "4. Output: one job writing 64-byte lines",
            ["backend", "size", "MB/s into DB", "worker RSS +MB", "read back MB/s"],
            out["output"],
        )
    if out["footprint"]:
        _table(
            "5. Footprint: idle RSS (MiB); CPU ms per job in the batch throughput runs",
            ["backend", "server RSS", "worker RSS", "server CPU ms/job", "workers CPU ms/job"],
            out["footprint"],
        )
    if out["sequential"]:
        _print_sequential(args, out)
    if out["schedules"]:
        _table(schedules_bench.TITLE, schedules_bench.HEADER, out["schedules"])


if __name__ == "__main__":
    main()
