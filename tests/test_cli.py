"""The ``thunkscope`` command's arguments: a bad one is a usage error (exit 2) naming it."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m thunkscope`` with `args`; bounded, since a bad duration ran forever."""
    return subprocess.run(
        [sys.executable, "-m", "thunkscope", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], option: str) -> str:
    """Exit 2, nothing on stdout, and argparse's one error line naming `option`; that line."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"thunkscope {result.args[3]}: error: argument {option}: "), last
    return last


class TestDemoArguments:
    @pytest.mark.parametrize("port", ["70000", "65536", "-1", "0", "8o80", ""])
    def test_prometheus_port_out_of_range(self, port: str) -> None:
        """--prometheus-port takes a TCP port, 1 to 65535, and says so."""
        result = cli("demo", "--duration", "0.1", f"--prometheus-port={port}")
        line = assert_usage_error(result, "--prometheus-port")
        assert line.endswith(f"must be a TCP port from 1 to 65535, got {port!r}")

    def test_prometheus_port_in_use(self) -> None:
        """A port another socket holds is a usage error naming it, not a bare OSError."""
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            result = cli("demo", "--duration", "0.1", "--prometheus-port", str(port))
        line = assert_usage_error(result, "--prometheus-port")
        assert f"cannot serve metrics on 127.0.0.1:{port}: " in line

    @pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "1e999", "soon"])
    def test_duration_must_be_finite_and_positive(self, value: str) -> None:
        """--duration nan or inf never ended; they, zero, negatives and words are refused."""
        result = cli("demo", f"--duration={value}")
        line = assert_usage_error(result, "--duration")
        assert line.endswith(f"must be a finite positive number of seconds, got {value!r}")

    @pytest.mark.parametrize("endpoint", ["localhost:4318", "127.0.0.1:4318/v1"])
    def test_otlp_endpoint_without_a_scheme(self, endpoint: str) -> None:
        """configure()'s ValueError comes out as a usage error naming --otlp-endpoint."""
        result = cli("demo", "--duration", "0.1", "--otlp-endpoint", endpoint)
        line = assert_usage_error(result, "--otlp-endpoint")
        assert line.endswith(
            f"must be an http:// or https:// URL for protocol 'http/protobuf', got {endpoint!r}"
        )

    def test_protocol_needs_an_endpoint(self) -> None:
        """--protocol alone was silently ignored: it names what it needs."""
        result = cli("demo", "--duration", "0.1", "--protocol", "grpc")
        line = assert_usage_error(result, "--protocol")
        assert line.endswith("needs --otlp-endpoint: it is the protocol of that export")


class TestInflightArguments:
    @pytest.mark.parametrize("value", ["nan", "inf", "0", "-2", "often"])
    def test_interval_must_be_finite_and_positive(self, value: str) -> None:
        """--interval is checked like --duration."""
        result = cli("inflight", "--url", "http://127.0.0.1:1/", f"--interval={value}")
        line = assert_usage_error(result, "--interval")
        assert line.endswith(f"must be a finite positive number of seconds, got {value!r}")
