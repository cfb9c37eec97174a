"""_settings: the one table of settings, its precedence, and the shared argument checkers."""

from __future__ import annotations

import ast
import logging
import math
import pathlib
from typing import Any

import pytest

from thunkscope import _settings
from thunkscope._settings import SETTINGS, Settings, choice, count, from_environment, seconds, text

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "thunkscope"


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No variable of the table set but those a test sets."""
    for setting in SETTINGS:
        for variable in setting.env:
            monkeypatch.delenv(variable, raising=False)
    return monkeypatch


class TestTable:
    def test_readme_table_is_generated_from_it(self) -> None:
        """README's settings table is exactly `readme_table()`: one row per setting."""
        readme = (ROOT / "README.md").read_text()
        assert _settings.readme_table() in readme
        assert len(_settings.readme_table().splitlines()) == 2 + len(SETTINGS)

    def test_settings_fields_are_rows(self) -> None:
        """Every field of the process-wide Settings is a row, with the row's default."""
        defaults = Settings()
        for field in Settings.__dataclass_fields__:
            assert getattr(defaults, field) == _settings.BY_NAME[field].default, field

    def test_no_other_module_reads_the_environment(self) -> None:
        """Only _settings reads os.environ / os.getenv: the table is the one door."""
        readers = []
        for path in sorted(SRC.rglob("*.py")):
            if path.name == "_settings.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                    readers.append(f"{path.relative_to(SRC)}:{node.lineno}")
        assert readers == []

    def test_every_variable_a_module_names_is_a_row(self) -> None:
        """The THUNKSCOPE_* strings in the source are exactly the variables of the rows."""
        variables = {v for s in SETTINGS for v in s.env if v.startswith("THUNKSCOPE_")}
        named = {
            node.value
            for path in SRC.rglob("*.py")
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("THUNKSCOPE_")
            and node.value.isupper()
        }
        assert named == variables


class TestEnvironment:
    @pytest.mark.parametrize(
        ("name", "raw", "value"),
        [
            ("span_mode", " In_Trace ", "in_trace"),
            ("stall_after", "2.5", 2.5),
            ("stall_after", "off", None),
            ("stall_after", "-3", None),
            ("capture_content", "YES", True),
            ("capture_content", "nope", False),
            ("content_limit", " 12 ", 12),
            ("name_limit", "7", 7),
            ("protocol", " grpc ", "grpc"),
            ("endpoint", "http://collector:4318", "http://collector:4318"),
            ("sdk_disabled", "true", True),
            ("export_timeout", " 2.5 ", 2.5),
        ],
    )
    def test_parsed(
        self, clean_environment: pytest.MonkeyPatch, name: str, raw: str, value: Any
    ) -> None:
        """The row's variable, parsed by the row's parser."""
        clean_environment.setenv(_settings.BY_NAME[name].env[0], raw)
        assert from_environment(name) == value

    @pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
    def test_unset_or_blank_is_the_default(
        self, clean_environment: pytest.MonkeyPatch, setting: _settings.Setting
    ) -> None:
        """No variable, or a blank one, gives the row's default."""
        assert from_environment(setting.name) == setting.default
        clean_environment.setenv(setting.env[0], "  ")
        assert from_environment(setting.name) == setting.default

    @pytest.mark.parametrize(
        ("name", "raw", "reason"),
        [
            ("span_mode", "some", "expected 'all' or 'in_trace'"),
            ("stall_after", "soon", "not a number of seconds"),
            ("content_limit", "-4", "not a positive integer"),
            ("name_limit", "many", "not a positive integer"),
            ("export_timeout", "0", "not a positive number of seconds"),
            ("export_timeout", "inf", "not a positive number of seconds"),
            ("export_timeout", "10s", "not a number of seconds"),
        ],
    )
    def test_unparsable_warns_and_keeps_the_default(
        self,
        clean_environment: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        name: str,
        raw: str,
        reason: str,
    ) -> None:
        """Text the parser refuses is one warning naming the variable; the default stands."""
        variable = _settings.BY_NAME[name].env[0]
        clean_environment.setenv(variable, raw)
        with caplog.at_level(logging.WARNING, logger="thunkscope"):
            assert from_environment(name) == _settings.BY_NAME[name].default
        assert [r.getMessage() for r in caplog.records] == [
            f"ignoring {variable}={raw!r}: {reason}"
        ]

    def test_precedence(self, clean_environment: pytest.MonkeyPatch) -> None:
        """Argument, then environment, then default."""
        assert _settings.resolve("protocol", None) == "http/protobuf"
        clean_environment.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        assert _settings.resolve("protocol", None) == "grpc"
        assert _settings.resolve("protocol", "http/protobuf") == "http/protobuf"


class TestExportTimeout:
    """The window an OTLP export may retry within, per signal."""

    @pytest.fixture
    def no_signal_timeouts(self, clean_environment: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
        """Neither the general nor a per-signal timeout variable set."""
        for signal in ("TRACES", "METRICS", "LOGS"):
            clean_environment.delenv(f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT", raising=False)
        return clean_environment

    def test_the_default_is_the_otel_exporters_10_s(
        self, no_signal_timeouts: pytest.MonkeyPatch
    ) -> None:
        """Unset, every signal gets 10 s, the OTel exporters' own default."""
        assert [_settings.export_timeout_s(s) for s in ("traces", "metrics", "logs")] == [
            10.0,
            10.0,
            10.0,
        ]

    def test_a_signals_own_variable_wins(self, no_signal_timeouts: pytest.MonkeyPatch) -> None:
        """OTEL_EXPORTER_OTLP_LOGS_TIMEOUT sets the logs' window; the others keep the general."""
        no_signal_timeouts.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "20")
        no_signal_timeouts.setenv("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "4.5")
        assert [_settings.export_timeout_s(s) for s in ("traces", "metrics", "logs")] == [
            20.0,
            20.0,
            4.5,
        ]

    def test_a_bad_signal_variable_warns_and_falls_back(
        self, no_signal_timeouts: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An unparsable per-signal value is one warning naming it; the general one stands."""
        no_signal_timeouts.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "7")
        no_signal_timeouts.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "-1")
        with caplog.at_level(logging.WARNING, logger="thunkscope"):
            assert _settings.export_timeout_s("traces") == 7.0
        assert [r.getMessage() for r in caplog.records] == [
            "ignoring OTEL_EXPORTER_OTLP_TRACES_TIMEOUT='-1': not a positive number of seconds"
        ]


class TestCheckers:
    @pytest.mark.parametrize(
        ("kwargs", "value", "expected"),
        [
            ({}, 1, 1.0),
            ({}, 0.5, 0.5),
            ({"optional": True}, None, None),
            ({"finite": False}, math.inf, math.inf),
        ],
    )
    def test_seconds_accepted(self, kwargs: dict[str, Any], value: Any, expected: Any) -> None:
        """Positive numbers (and None, infinity where allowed) pass, as floats."""
        result = seconds("wait", value, **kwargs)
        assert result == expected
        assert type(result) is type(expected)

    @pytest.mark.parametrize(
        ("kwargs", "value", "error", "message"),
        [
            ({}, None, TypeError, "wait must be a positive number of seconds, got NoneType None"),
            ({}, "1", TypeError, "wait must be a positive number of seconds, got str '1'"),
            ({}, True, TypeError, "wait must be a positive number of seconds, got bool True"),
            ({}, 0, ValueError, "wait must be a positive number of seconds, got 0"),
            ({}, math.inf, ValueError, "wait must be a positive number of seconds, got inf"),
            ({}, math.nan, ValueError, "wait must be a positive number of seconds, got nan"),
            (
                {"optional": True, "wrong_type": ValueError},
                [1],
                ValueError,
                "wait must be a positive number of seconds or None, got list [1]",
            ),
        ],
    )
    def test_seconds_refused(
        self, kwargs: dict[str, Any], value: Any, error: type[Exception], message: str
    ) -> None:
        """A wrong type or value is the stated error, naming the argument."""
        with pytest.raises(error) as info:
            seconds("wait", value, **kwargs)
        assert type(info.value) is error
        assert str(info.value) == message

    @pytest.mark.parametrize(
        ("kwargs", "value", "error", "message"),
        [
            ({}, 0, ValueError, "size must be a positive integer, got 0"),
            ({}, 2.0, TypeError, "size must be a positive integer, got float 2.0"),
            (
                {"optional": True},
                "3",
                TypeError,
                "size must be a positive integer or None, got str '3'",
            ),
            (
                {"low": 0, "high": 9, "note": " (0: any)"},
                10,
                ValueError,
                "size must be an int from 0 to 9 (0: any), got 10",
            ),
        ],
    )
    def test_count_refused(
        self, kwargs: dict[str, Any], value: Any, error: type[Exception], message: str
    ) -> None:
        """Out of range or not an int: the stated error, naming the argument."""
        with pytest.raises(error) as info:
            count("size", value, **kwargs)
        assert type(info.value) is error
        assert str(info.value) == message

    def test_count_accepted(self) -> None:
        """In range passes unchanged; None only when optional."""
        assert count("size", 1) == 1
        assert count("port", 0, low=0, high=65535) == 0
        assert count("size", None, optional=True) is None

    def test_choice(self) -> None:
        """One of the allowed values, stripped (and case-folded on request)."""
        assert choice("mode", " all ", ("all", "none")) == "all"
        assert choice("mode", "ALL", ("all",), fold_case=True) == "all"
        with pytest.raises(ValueError, match=r"^mode must be one of 'all', 'none', got 'some'$"):
            choice("mode", "some", ("all", "none"))
        with pytest.raises(TypeError, match=r"^mode must be one of 'all', got int$"):
            choice("mode", 1, ("all",))

    def test_text(self) -> None:
        """A non-empty str; blank only where blank is allowed."""
        assert text("name", " ", blank_ok=True) == " "
        assert text("name", None, optional=True) is None
        with pytest.raises(ValueError, match=r"^name must be a non-empty str, got ' '$"):
            text("name", " ")
        with pytest.raises(ValueError, match=r"^name must be a non-empty str, got ''$"):
            text("name", "", blank_ok=True)
        with pytest.raises(TypeError, match=r"^name must be a non-empty str or None, got int$"):
            text("name", 3, optional=True)
