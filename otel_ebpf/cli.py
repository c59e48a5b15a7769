"""Command line: `otel-ebpf run | doctor | version`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
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
    from otel_ebpf.receivers.sockets import ReceiverError

    try:
        collector = Collector(cfg)
    except config_mod.ConfigError as exc:  # a setting that only the machine contradicts
        return _fail(f"config error: {exc}", 2)
    except OSError as exc:  # health port taken, file exporter path unwritable
        return _fail(f"cannot start: {exc}")

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("otel_ebpf").info(
            "%s: flushing and detaching", signal.Signals(signum).name
        )
        collector.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        collector.run()
    except ReceiverError as exc:
        return _fail(f"cannot start: {exc}")
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
