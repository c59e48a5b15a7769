"""Command line: `otel-ebpf run | top | profile | doctor | version`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from otel_ebpf import SEMCONV_VERSION, __version__


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str, code: int = 1) -> int:
    print(f"otel-ebpf: {message}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from otel_ebpf import config as config_mod
    from otel_ebpf.privileges import MISSING_PRIVILEGES, can_trace

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        return _fail(f"config error: {exc}", 2)
    if not can_trace():
        return _fail(MISSING_PRIVILEGES)
    from otel_ebpf.pipeline import Collector
    from otel_ebpf.receivers.base_types import ReceiverError
    from otel_ebpf.scheduling import parse_cpu_list, pin, set_priority
    from otel_ebpf.shutdown import ShutdownGuard

    if cfg.ebpf.cpus.strip():  # before any thread starts: each inherits both
        try:
            pin(parse_cpu_list(cfg.ebpf.cpus))
        except ValueError as exc:  # a CPU this machine or its cpuset does not give us
            return _fail(f"config error: receivers.ebpf.cpus (OTEL_EBPF_CPUS): {exc}", 2)
    try:
        collector = Collector(cfg)
    except config_mod.ConfigError as exc:  # a setting that only the machine contradicts
        return _fail(f"config error: {exc}", 2)
    except OSError as exc:  # health port taken, file exporter path unwritable
        return _fail(f"cannot start: {exc}")

    ShutdownGuard(collector.stop, lambda: collector.stopping_at).install()
    try:
        # lowered once started: at nice 19 on a node whose CPUs are all busy,
        # loading and attaching took minutes instead of seconds
        collector.run(on_ready=lambda: set_priority(cfg.ebpf.nice))
    except ReceiverError as exc:
        return _fail(f"cannot start: {exc}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from otel_ebpf.privileges import MISSING_PRIVILEGES, can_trace

    if args.pid <= 0 or not os.path.isdir(f"/proc/{args.pid}"):
        return _fail(f"no process {args.pid}", 2)
    if not 0 < args.seconds <= 3600:
        return _fail("--seconds: from 0 to 3600", 2)
    if not 1 <= args.frequency <= 999:
        return _fail("--frequency: 1 to 999 samples a second", 2)
    if not can_trace():
        return _fail(MISSING_PRIVILEGES)
    from otel_ebpf.processors.profiling import flamegraph, pprof
    from otel_ebpf.profiling import profile_process, top_functions
    from otel_ebpf.receivers.base_types import ReceiverError

    print(
        f"sampling process {args.pid} at {args.frequency} Hz for {args.seconds:g} s ...",
        file=sys.stderr,
    )
    off_cpu = args.off_cpu or bool(args.off_cpu_svg)
    try:
        window = profile_process(args.pid, args.seconds, args.frequency, off_cpu=off_cpu)
    except ReceiverError as exc:
        return _fail(f"cannot profile: {exc}")
    samples = sum(s.samples for s in window.stacks)
    if not samples:
        print(f"no samples: process {args.pid} used no CPU while sampled", file=sys.stderr)
    else:
        print(
            f"{samples} samples ({samples * window.period_ns / 1e9:.2f} s of CPU); "
            "functions by samples at the top of the stack:"
        )
        for function, module, share in top_functions(window.stacks, args.top):
            print(f"{100 * share:6.2f} %  {function}  [{module}]")
    blocked_ns = sum(s.off_cpu_ns for s in window.stacks)
    if off_cpu and blocked_ns:
        print(
            f"{blocked_ns / 1e9:.2f} s blocked (all threads); "
            "where, by the first frame above the kernel:"
        )
        for function, module, share in top_functions(window.stacks, args.top, off_cpu=True):
            print(f"{100 * share:6.2f} %  {function}  [{module}]")
    if window.samples_lost:
        print(f"{window.samples_lost} samples not counted (no room)", file=sys.stderr)
    if window.stacks_lost:
        print(
            f"{window.stacks_lost} samples' stacks not kept (the stack maps had no room)",
            file=sys.stderr,
        )
    try:
        if args.pprof:
            with open(args.pprof, "wb") as f:
                f.write(pprof.encode(window))
            print(f"pprof profile: {args.pprof} (go tool pprof -top {args.pprof})", file=sys.stderr)
        if args.svg:
            title = f"CPU: process {args.pid}, {args.seconds:g} s at {args.frequency} Hz"
            with open(args.svg, "w") as f:
                f.write(flamegraph.render(window.stacks, title))
            print(f"flame graph: {args.svg}", file=sys.stderr)
        if args.off_cpu_svg:
            title = f"Off-CPU (blocked) time: process {args.pid}, {args.seconds:g} s"
            with open(args.off_cpu_svg, "w") as f:
                f.write(flamegraph.render(window.stacks, title, off_cpu=True))
            print(f"off-CPU flame graph: {args.off_cpu_svg}", file=sys.stderr)
    except OSError as exc:
        return _fail(f"cannot write: {exc}")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from otel_ebpf.top import SORTS, TopError, run

    if args.sort not in SORTS:
        return _fail(f"--sort: one of {', '.join(SORTS)}", 2)
    if not 0.2 <= args.interval <= 60:
        return _fail("--interval: from 0.2 to 60 seconds", 2)
    if not args.verbose:  # the screen is the output; the probes' log would tear it
        logging.getLogger().setLevel(logging.ERROR)
    try:
        return run(
            args.endpoint, args.once, args.json, args.sort, args.filter, args.interval, args.wait
        )
    except TopError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 0


def cmd_doctor(_args: argparse.Namespace) -> int:
    from otel_ebpf.doctor import FAIL, report, run_checks

    results = run_checks()
    print(report(results))
    return 1 if any(c.status == FAIL for c in results) else 0


def cmd_version(_args: argparse.Namespace) -> int:
    print(f"otel-ebpf {__version__} (semantic conventions {SEMCONV_VERSION})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otel-ebpf", description=__doc__)
    parser.add_argument(
        "--log-level",
        default=os.environ.get("OTEL_EBPF_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the collector")
    run.add_argument("--config", help="collector-style YAML (default: embedded, console output)")
    run.set_defaults(func=cmd_run)
    top = sub.add_parser(
        "top",
        help="live view of this node: services, edges, slowest requests",
        description="Reads the running collector's health endpoint (GET /live); starts "
        "its own probes, exporting nothing, when none answers.",
    )
    top.add_argument(
        "--endpoint",
        default=os.environ.get("OTEL_EBPF_HEALTH_ENDPOINT", "127.0.0.1:13133"),
        help="the collector's health_check endpoint (default 127.0.0.1:13133)",
    )
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.add_argument("--json", action="store_true", help="snapshots as JSON, one per line")
    top.add_argument("--sort", default="rate", help="rate (default), errors, p99 or name")
    top.add_argument("--filter", default="", help="only services and edges naming this")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument(
        "--wait",
        type=float,
        default=5.0,
        help="with --once, when nobody was watching: seconds to watch first (default 5)",
    )
    top.add_argument("--verbose", action="store_true", help="keep the probes' log")
    top.set_defaults(func=cmd_top)
    prof = sub.add_parser("profile", help="sample one process's CPU: top functions, pprof, SVG")
    prof.add_argument("--pid", type=int, required=True, help="the process to sample")
    prof.add_argument("--seconds", type=float, default=10.0, help="how long (default 10)")
    prof.add_argument(
        "--frequency", type=int, default=99, help="samples per CPU-second (default 99)"
    )
    prof.add_argument("--svg", help="write a flame graph (self-contained SVG) here")
    prof.add_argument("--pprof", help="write a gzipped pprof profile here")
    prof.add_argument(
        "--off-cpu", action="store_true", help="also measure where threads block, and how long"
    )
    prof.add_argument("--off-cpu-svg", help="write a flame graph of blocked time here")
    prof.add_argument("--top", type=int, default=15, help="functions to list (default 15)")
    prof.set_defaults(func=cmd_profile)
    sub.add_parser("doctor", help="report what this kernel and process can do").set_defaults(
        func=cmd_doctor
    )
    sub.add_parser("version", help="print the version").set_defaults(func=cmd_version)
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
