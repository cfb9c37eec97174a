"""The ``thunkscope`` command: ``demo`` runs the workload, ``inflight`` shows live streams."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Final, NoReturn

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider

from thunkscope import _config, _demo
from thunkscope import _settings as checks
from thunkscope._telemetry import use_providers

Command = Callable[[argparse.Namespace], int]


def seconds(value: str) -> float:
    """An argparse type: a finite positive number of seconds (checked as `configure` checks)."""
    try:
        number: float = checks.seconds("value", float(value))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a finite positive number of seconds, got {value!r}"
        ) from None
    return number


def tcp_port(value: str) -> int:
    """An argparse type: a TCP port to listen on, 1 to 65535."""
    try:
        port: int = checks.count("value", int(value), high=65535)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a TCP port from 1 to 65535, got {value!r}"
        ) from None
    return port


def positive_int(value: str) -> int:
    """An argparse type: a process id, 1 or more."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(
            f"must be a process id (a positive integer), got {value!r}"
        )
    return number


# configure()'s ValueErrors begin with its argument's name: the demo option that set it.
_CONFIGURE_OPTIONS: Final = {
    "endpoint": "--otlp-endpoint",
    "protocol": "--protocol",
    "service_name": "--service-name",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thunkscope", description="Observable async helpers for LLM backends."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="run a simulated LLM backend workload through the helpers"
    )
    demo.add_argument("--duration", type=seconds, default=5.0, help="seconds (default 5)")
    demo.add_argument(
        "--otlp-endpoint",
        help="export traces, metrics and logs to this OTLP collector (e.g. http://localhost:4318)",
    )
    demo.add_argument(
        "--protocol",
        choices=["http/protobuf", "grpc"],
        help="OTLP protocol (default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf)",
    )
    demo.add_argument(
        "--prometheus-port",
        type=tcp_port,
        help="also serve the metrics for a Prometheus scrape at 127.0.0.1:PORT/metrics",
    )
    demo.add_argument("--service-name", default="thunkscope-demo")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.set_defaults(run=run_demo, parser=demo)

    inflight = commands.add_parser(
        "inflight",
        help="show the streams in flight in local processes serving a debug endpoint",
        description="A table of the running send_to_queue streams, most idle first, read "
        "from thunkscope.serve_debug() endpoints: the one at --url, else every live local "
        "process that serves one (found through their discovery files), merged.",
    )
    inflight.add_argument(
        "--url",
        help="one serve_debug base URL, e.g. http://127.0.0.1:8765/ (default: every local process)",
    )
    inflight.add_argument(
        "--pid",
        type=positive_int,
        action="append",
        default=[],
        help="only this process (repeatable; not with --url)",
    )
    inflight.add_argument(
        "--service",
        action="append",
        default=[],
        help="only processes of this service.name (repeatable; not with --url)",
    )
    inflight.add_argument(
        "--json", action="store_true", help="print the snapshots as a JSON list (not with --url)"
    )
    inflight.add_argument(
        "--watch", action="store_true", help="redraw the table until Ctrl-C, like top"
    )
    inflight.add_argument(
        "--interval",
        type=seconds,
        default=1.0,
        help="seconds between redraws with --watch (default 1)",
    )
    inflight.set_defaults(run=run_inflight, parser=inflight)

    ps = commands.add_parser(
        "ps",
        help="list the local processes serving a thunkscope debug endpoint",
        description="One row per live local process with a thunkscope.serve_debug() "
        "endpoint: pid, service, instance id, streams in flight, oldest idle, URL. One that "
        "does not answer says so on its row.",
    )
    ps.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    ps.set_defaults(run=run_ps)

    return parser


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo workload and print what the telemetry recorded."""
    if args.protocol is not None and not args.otlp_endpoint:
        _usage_error(
            args, "argument --protocol: needs --otlp-endpoint: it is the protocol of that export"
        )
    summary_reader = InMemoryMetricReader()
    readers: list[MetricReader] = [summary_reader]
    if args.prometheus_port is not None:
        try:
            readers.append(_demo.prometheus_reader(args.prometheus_port))
        except OSError as exc:
            _usage_error(
                args,
                f"argument --prometheus-port: cannot serve metrics on "
                f"127.0.0.1:{args.prometheus_port}: {exc.strerror or exc}",
            )
    handle: _config.TelemetryHandle | None = None
    if args.otlp_endpoint:
        try:
            handle = _config.configure(
                service_name=args.service_name,
                endpoint=args.otlp_endpoint,
                protocol=args.protocol,
                log_format="console",
                log_level="warning",
                metric_export_interval_s=5.0,
                metric_readers=readers,
            )
        except ValueError as exc:
            _usage_error(args, _configure_error(args, exc))
    else:
        resource = Resource.create({SERVICE_NAME: args.service_name})
        use_providers(
            tracer_provider=TracerProvider(resource=resource),
            meter_provider=MeterProvider(resource=resource, metric_readers=readers),
        )
        _config.configure_logging("console", level="warning")
    try:
        workload = _demo.Workload(duration_s=args.duration)
        rounds = workload.run()
        summary = _demo.summarize(summary_reader, rounds)
    finally:
        if handle is not None:
            handle.shutdown()
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2, sort_keys=True))
    else:
        print(summary.render())
        if args.otlp_endpoint:
            print(f"\ntelemetry exported to {args.otlp_endpoint}")
    return 0


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """Exit 2 with the subcommand's usage and `message`, as argparse does for a bad argument."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def _configure_error(args: argparse.Namespace, exc: ValueError) -> str:
    """configure()'s ValueError as an argparse error naming the demo option it came from."""
    argument, _, rest = str(exc).partition(" ")
    option = _CONFIGURE_OPTIONS.get(argument)
    if option is None:
        return f"argument --otlp-endpoint: {exc}"
    if option == "--protocol" and args.protocol is None:
        rest += " (from OTEL_EXPORTER_OTLP_PROTOCOL)"
    return f"argument {option}: {rest}"


def run_inflight(args: argparse.Namespace) -> int:
    """Print the in-flight table once, or keep redrawing it with --watch."""
    from thunkscope import _discovery, _fleet_view, _inflight_view

    try:
        if args.url is None:
            return _fleet_view.run_inflight(
                pids=args.pid,
                services=args.service,
                watch=args.watch,
                as_json=args.json,
                interval=args.interval,
            )
        if args.pid or args.service or args.json:
            _usage_error(args, "argument --url: not allowed with --pid, --service or --json")
        return _inflight_view.run(args.url, watch=args.watch, interval=args.interval)
    except (ValueError, _discovery.DiscoveryError) as exc:
        print(f"thunkscope inflight: {exc}", file=sys.stderr)
        return 2


def run_ps(args: argparse.Namespace) -> int:
    """List the live local processes serving a debug endpoint."""
    from thunkscope import _discovery, _fleet_view

    try:
        return _fleet_view.run_ps(as_json=args.json)
    except _discovery.DiscoveryError as exc:
        print(f"thunkscope ps: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``thunkscope`` console script."""
    args = build_parser().parse_args(argv)
    run: Command = args.run
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
