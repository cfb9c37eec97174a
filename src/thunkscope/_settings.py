"""Every setting thunkscope reads, in one table, and the one set of argument checkers.

A setting comes from, in this order: the argument a call was given (`configure()`,
`send_to_queue(stall_after=...)`), then its environment variable, then its default. The
environment is read by `from_environment`, through the row's parser; text a parser
refuses is logged as a warning and the default stands (a typo in a deployment's
environment must not stop the application). Arguments are checked by `seconds`, `count`,
`choice`, `text` and `optional_callable`: a wrong type or value is an exception naming
the argument. `configure`, `send_to_queue`, `ClientCache`, `serve_debug` and the CLI all
check with these.

Adding a setting is one row of `SETTINGS` (plus, if `configure()` takes it, one argument);
README's settings table is `readme_table()`, and a test keeps the two equal.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Final, Literal, TypeVar

from thunkscope import names

SpanMode = Literal["all", "in_trace"]

_log = logging.getLogger(names.LOGGER_NAME)

T = TypeVar("T")

DEFAULT_CONTENT_LIMIT: Final = 256
"""Characters of captured content kept per value when capture is on; the rest is cut."""

DEFAULT_NAME_LIMIT: Final = 100
"""Distinct stream names, and distinct cache names, that may label metrics."""

DEFAULT_EXPORT_TIMEOUT_S: Final = 10.0
"""Seconds one OTLP export may take, retries included: the OTel exporters' own default, so
a collector (or per-host agent) restart shorter than that loses nothing."""

SPAN_MODES: Final = ("all", "in_trace")
PROTOCOLS: Final = ("http/protobuf", "grpc")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_OFF: Final = frozenset({"none", "off", "0"})


class Unparsed(ValueError):
    """The text of an environment variable is not a value of its setting."""


# --- parsers of environment text ---------------------------------------------------------------


def parse_flag(raw: str) -> bool:
    """On for 1/true/yes/on (any case), off for anything else."""
    return raw.strip().lower() in _TRUE


def parse_seconds_or_off(raw: str) -> float | None:
    """A number of seconds; none/off/0 or a number not above 0 turn the feature off."""
    text = raw.strip().lower()
    if text in _OFF:
        return None
    try:
        value = float(text)
    except ValueError:
        raise Unparsed("not a number of seconds") from None
    return value if value > 0 else None


def parse_positive_seconds(raw: str) -> float:
    """A finite number of seconds above 0."""
    try:
        value = float(raw.strip())
    except ValueError:
        raise Unparsed("not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise Unparsed("not a positive number of seconds")
    return value


def parse_positive_int(raw: str) -> int:
    """A whole number, 1 or more."""
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise Unparsed("not a positive integer")
    return value


def parse_span_mode(raw: str) -> SpanMode:
    """'all' or 'in_trace' (any case)."""
    mode = raw.strip().lower()
    if mode not in SPAN_MODES:
        raise Unparsed("expected 'all' or 'in_trace'")
    return mode  # type: ignore[return-value]


def parse_text(raw: str) -> str | None:
    """The text, stripped; blank is unset. `configure()` checks it as its argument."""
    return raw.strip() or None


def parse_trace_url(raw: str) -> str | None:
    """An http(s) URL template containing ``{trace_id}``; blank is unset."""
    template = raw.strip()
    if not template:
        return None
    if not template.startswith(("http://", "https://")) or "{trace_id}" not in template:
        raise Unparsed("an http(s) URL template containing {trace_id}")
    return template


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: where it comes from, how its text is read, what it is without one."""

    name: str
    env: tuple[str, ...]
    parse: Callable[[str], Any]
    default: Any
    doc: str
    argument: str | None = None  # the configure() argument that overrides it, if any
    shown_default: str = ""  # the default as README shows it, if not repr(default)


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "span_mode",
        ("THUNKSCOPE_SPANS",),
        parse_span_mode,
        "all",
        "spans of the cheap helpers (`in_trace`: loop and cache spans only inside a trace)",
        argument="spans",
        shown_default="`all`",
    ),
    Setting(
        "stall_after",
        ("THUNKSCOPE_STALL_AFTER",),
        parse_seconds_or_off,
        30.0,
        "stall and backpressure warning threshold, seconds (`off`: no warnings)",
        argument="stall_after",
        shown_default="30 s",
    ),
    Setting(
        "capture_content",
        ("THUNKSCOPE_CAPTURE_CONTENT",),
        parse_flag,
        False,
        "let exception messages into telemetry",
        argument="capture_content",
        shown_default="off",
    ),
    Setting(
        "content_limit",
        ("THUNKSCOPE_CONTENT_LIMIT",),
        parse_positive_int,
        DEFAULT_CONTENT_LIMIT,
        "characters kept of each captured message",
        argument="content_limit",
    ),
    Setting(
        "name_limit",
        ("THUNKSCOPE_NAME_LIMIT",),
        parse_positive_int,
        DEFAULT_NAME_LIMIT,
        "distinct stream names, and cache names, on metrics; the rest fold into `other`",
        argument="name_limit",
    ),
    Setting(
        "protocol",
        ("OTEL_EXPORTER_OTLP_PROTOCOL",),
        parse_text,
        "http/protobuf",
        "OTLP protocol of `configure()` (`grpc` needs `pip install 'thunkscope[grpc]'`)",
        argument="protocol",
        shown_default="`http/protobuf`",
    ),
    Setting(
        "endpoint",
        ("OTEL_EXPORTER_OTLP_ENDPOINT",),
        parse_text,
        None,
        "collector of `configure()`; the per-signal `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT` "
        "win over it",
        argument="endpoint",
        shown_default="the OTLP exporters' default",
    ),
    Setting(
        "export_timeout",
        ("OTEL_EXPORTER_OTLP_TIMEOUT",),
        parse_positive_seconds,
        DEFAULT_EXPORT_TIMEOUT_S,
        "seconds each OTLP export of `configure()` keeps retrying before its batch is dropped "
        "(seconds, as OTel Python reads it); the per-signal "
        "`OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT` win over it; `shutdown()` stays bounded by its "
        "own timeout",
        shown_default="10 s",
    ),
    Setting(
        "debug_server",
        ("THUNKSCOPE_DEBUG_SERVER",),
        parse_flag,
        False,
        "`configure()` starts `serve_debug` on 127.0.0.1 (free port) in this process and in "
        "every child forked later, each with its discovery file",
        argument="debug_server",
        shown_default="off",
    ),
    Setting(
        "trace_url",
        ("THUNKSCOPE_TRACE_URL",),
        parse_trace_url,
        None,
        "link of a trace id on the debug page; `{trace_id}` is replaced",
        argument="trace_url",
        shown_default="no link",
    ),
    Setting(
        "service_name",
        ("OTEL_SERVICE_NAME",),
        parse_text,
        None,
        "`service.name` of `configure()`'s resource and of the discovery files",
        argument="service_name",
        shown_default="`unknown_service:<program>`",
    ),
    Setting(
        "runtime_dir",
        ("THUNKSCOPE_RUNTIME_DIR", "XDG_RUNTIME_DIR"),
        parse_text,
        None,
        "where debug endpoints write their discovery files (`thunkscope/<pid>.json` under it)",
        shown_default="`<temp dir>/thunkscope-<uid>` (mode 0700)",
    ),
    Setting(
        "mellea_fast_path",
        ("THUNKSCOPE_MELLEA_FAST_PATH",),
        parse_flag,
        False,
        "`MelleaInstrumentor` serves mellea's `send_to_queue` with thunkscope's own stream loop "
        "(its `instrument(fast_path=...)` wins)",
        shown_default="off",
    ),
    Setting(
        "sdk_disabled",
        ("OTEL_SDK_DISABLED",),
        parse_flag,
        False,
        "`configure()` sets nothing up; the helpers still run",
        shown_default="off",
    ),
)

BY_NAME: Final = {setting.name: setting for setting in SETTINGS}


def from_environment(name: str) -> Any:
    """The value of setting `name` from its environment variable, else its default."""
    setting = BY_NAME[name]
    for variable in setting.env:
        raw = os.environ.get(variable)
        if raw is None or raw.strip() == "":
            continue
        try:
            return setting.parse(raw)
        except Unparsed as exc:
            _log.warning("ignoring %s=%r: %s", variable, raw, exc)
            return setting.default
    return setting.default


def resolve(name: str, argument: object) -> Any:
    """The one precedence: the argument if given (not None), else the environment, else
    the default."""
    return from_environment(name) if argument is None else argument


def export_timeout_s(signal: str) -> float:
    """Seconds one OTLP export of `signal` may take, its retries included.

    ``OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT``, else the `export_timeout` setting
    (``OTEL_EXPORTER_OTLP_TIMEOUT``, default 10 s, the OTel exporters' own). It is the
    window in which a collector (or per-host agent) may restart without a batch being
    lost; `shutdown()` is bounded separately, so a longer window never delays the exit.
    """
    variable = f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT"
    raw = os.environ.get(variable)
    if raw is not None and raw.strip():
        try:
            return parse_positive_seconds(raw)
        except Unparsed as exc:
            _log.warning("ignoring %s=%r: %s", variable, raw, exc)
    return float(from_environment("export_timeout"))


def readme_table() -> str:
    """README's settings table, generated from `SETTINGS`."""
    lines = [
        "| setting | environment | `configure()` | default |",
        "|---|---|---|---|",
    ]
    for setting in SETTINGS:
        variables = ", ".join(f"`{variable}`" for variable in setting.env)
        argument = f"`{setting.argument}=`" if setting.argument else ""
        default = setting.shown_default or repr(setting.default)
        lines.append(f"| {setting.doc} | {variables} | {argument} | {default} |")
    return "\n".join(lines)


# --- process-wide settings -----------------------------------------------------------------------


@dataclass(slots=True)
class Settings:
    """Process-wide knobs, read from the environment once and changed by `configure()`.

    `capture_content` lets the text of exceptions into telemetry, cut to `content_limit`
    characters; see `_telemetry.captured`. `name_limit` caps the distinct stream and cache
    names on metrics. Each field is the row of `SETTINGS` of the same name.
    """

    span_mode: SpanMode = "all"
    stall_after: float | None = 30.0
    capture_content: bool = False
    content_limit: int = DEFAULT_CONTENT_LIMIT
    name_limit: int = DEFAULT_NAME_LIMIT
    trace_url: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        """Settings as the THUNKSCOPE_* environment variables give them."""
        return cls(**{field.name: from_environment(field.name) for field in fields(cls)})


# --- argument checkers ---------------------------------------------------------------------------


def seconds(
    argument: str,
    value: object,
    *,
    optional: bool = False,
    finite: bool = True,
    wrong_type: type[Exception] = TypeError,
) -> Any:
    """`value` as a positive number of seconds (None too if `optional`).

    A value that is not a number is `wrong_type` (TypeError, or ValueError where an entry
    point always said so); one not above 0 (NaN, or infinity if `finite`) a ValueError.
    Both name `argument`.
    """
    if type(value) is float and value > 0 and (value != math.inf or not finite):
        return value  # the common case, defaults included; NaN fails `> 0`
    if value is None and optional:
        return None
    what = f"{argument} must be a positive number of seconds{' or None' if optional else ''}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong_type(f"{what}, got {type(value).__name__} {value!r}")
    if not value > 0 or (finite and not math.isfinite(value)):
        raise ValueError(f"{what}, got {value!r}")
    return float(value)


def count(
    argument: str,
    value: object,
    *,
    optional: bool = False,
    low: int = 1,
    high: int | None = None,
    note: str = "",
    wrong_type: type[Exception] = TypeError,
) -> Any:
    """`value` as an int from `low` to `high` (None too if `optional`); errors name
    `argument`."""
    if value is None and optional:
        return None
    span = "a positive integer" if (low, high) == (1, None) else f"an int from {low} to {high}"
    what = f"{argument} must be {span}{' or None' if optional else ''}{note}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(f"{what}, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{what}, got {value!r}")
    return value


def choice(
    argument: str, value: object, allowed: tuple[str, ...], *, fold_case: bool = False
) -> str:
    """`value`, one of `allowed` (after stripping, and lower-casing if `fold_case`)."""
    expected = f"{argument} must be one of {', '.join(map(repr, allowed))}"
    if not isinstance(value, str):
        raise TypeError(f"{expected}, got {type(value).__name__}")
    chosen = value.strip().lower() if fold_case else value.strip()
    if chosen not in allowed:
        raise ValueError(f"{expected}, got {value!r}")
    return chosen


def text(
    argument: str,
    value: object,
    *,
    optional: bool = False,
    blank_ok: bool = False,
    wrong_type: type[Exception] = TypeError,
) -> Any:
    """`value`, a non-empty str (None too if `optional`); whitespace only counts as empty
    unless `blank_ok`."""
    if value is None and optional:
        return None
    what = f"{argument} must be a non-empty str{' or None' if optional else ''}"
    if not isinstance(value, str):
        raise wrong_type(f"{what}, got {type(value).__name__}")
    if not (value if blank_ok else value.strip()):
        raise ValueError(f"{what}, got {value!r}")
    return value


def optional_callable(argument: str, value: T) -> T:
    """`value`, a callable or None."""
    if value is not None and not callable(value):
        raise TypeError(f"{argument} must be a callable or None, got {type(value).__name__}")
    return value
