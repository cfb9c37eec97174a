"""benchmarks/generation.py: its harness, run quick in .venv-mellea08; no timing is asserted.

The configurations that need the peers' environment (.venv-bench: mellea's telemetry
extra, openllmetry, openlit) are reported unavailable here, which is asserted too; the
telemetry facts of the ones that run (no telemetry, thunkscope's instrumentor wrapping
mellea's helpers and on its fast path) are
asserted exactly: the spans one generation starts, and how thunkscope records the
generation that stalls into mellea's STREAM_TIMEOUT. The callgrind figures are left to
the benchmark's own runs (``--no-callgrind`` here: callgrind runs at about 1/50 speed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from support.scripts import load_script

pytestmark = [pytest.mark.mellea, pytest.mark.mellea08]

GENERATION = Path(__file__).resolve().parent.parent / "benchmarks" / "generation.py"
CHUNKS = (6, 10)
# What thunkscope's instrumentor starts for one generation through mellea 0.8's OpenAI
# backend: mellea looks the event loop up twice, gets its client from the cache once
# and streams the response through send_to_queue once.
THUNKSCOPE_SPANS = Counter(
    {"get_current_event_loop": 2, "client_cache.get_or_create": 1, "send_to_queue": 1}
)
MELLEA_TIMEOUT = (
    "TimeoutError: Stream timed out after 0.5s without a chunk (covers time-to-first-token "
    "and inter-chunk gaps). Set ModelOption.STREAM_TIMEOUT to a larger value or None to disable."
)[:120]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One quick run of every configuration, callgrind off: its output and its JSON."""
    out = tmp_path_factory.mktemp("generation") / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            str(GENERATION),
            "--quick",
            "--no-callgrind",
            "--chunks",
            ",".join(map(str, CHUNKS)),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads(out.read_text())


def _spans(facts: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """The spans of one generation by name (the send_to_queue span is the one that matters)."""
    return {span["name"]: span for span in facts[kind]["spans"]}


class TestAvailability:
    def test_peers_are_reported_unavailable_without_their_packages(
        self, quick_run: tuple[str, dict[str, Any]]
    ) -> None:
        """Without the peers' environment, each peer is named unavailable with the reason."""
        stdout, report = quick_run
        notes = report["notes"]
        assert notes["none"] == "no SDK, no instrumentation"
        assert notes["thunkscope"] == "MelleaInstrumentor().instrument(), wrapping"
        assert notes["mellea"] == "mellea[telemetry] is not installed (cpex missing)"
        assert notes["openllmetry"] == "opentelemetry-instrumentation-openai is not installed"
        assert notes["openlit"] == "openlit is not installed"
        for peer in ("mellea", "openllmetry", "openlit"):
            assert report["facts"][peer] is None
            assert f"| {peer} | unavailable: {notes[peer]} |" in stdout.splitlines()

    def test_fast_path_runs_and_is_checked_active(
        self, quick_run: tuple[str, dict[str, Any]]
    ) -> None:
        """The fast-path configuration runs with the instrumentor reporting its fast path on."""
        _, report = quick_run
        note = report["notes"]["thunkscope-fast"]
        assert note == "MelleaInstrumentor().instrument(fast_path=True), fast_path_active"
        assert report["facts"]["thunkscope-fast"] is not None


class TestCpuTable:
    def test_every_available_configuration_has_every_case(
        self, quick_run: tuple[str, dict[str, Any]]
    ) -> None:
        """Each case (fresh context per chunk count, growing history) has a row per configuration
        that ran, none's ratio being 1 by construction."""
        stdout, report = quick_run
        ran = [c for c, facts in report["facts"].items() if facts is not None]
        assert ran == ["none", "thunkscope", "thunkscope-fast"]
        cases = [f"fresh/{CHUNKS[0]}", f"fresh/{CHUNKS[1]}", f"history/{CHUNKS[0]}"]
        assert list(report["cpu"]) == cases
        for case in cases:
            assert sorted(report["cpu"][case]) == sorted(ran)
            assert report["cpu"][case]["none"]["ratio"] == 1.0
            for figures in report["cpu"][case].values():
                assert figures["cpu_us"] > 0
        assert report["instructions"] == {}
        header = next(line for line in stdout.splitlines() if line.startswith("| configuration"))
        assert [f"CPU {case} (ratio, us)" in header for case in cases] == [True] * 3


class TestTelemetryFacts:
    def test_no_telemetry_makes_no_span_and_the_stall_still_times_out(
        self, quick_run: tuple[str, dict[str, Any]]
    ) -> None:
        """With no telemetry nothing is recorded, and the stalled generation raises mellea's
        TimeoutError."""
        _, report = quick_run
        facts = report["facts"]["none"]
        assert facts["normal"] == {"raised": None, "spans": []}
        assert facts["stall"] == {"raised": MELLEA_TIMEOUT, "spans": []}

    @pytest.mark.parametrize("config", ["thunkscope", "thunkscope-fast"])
    def test_thunkscope_spans_of_one_generation(
        self, quick_run: tuple[str, dict[str, Any]], config: str
    ) -> None:
        """One generation: four spans, all ended, none in error, no timeout recorded."""
        _, report = quick_run
        facts = report["facts"][config]
        assert facts["normal"]["raised"] is None
        spans = facts["normal"]["spans"]
        assert Counter(span["name"] for span in spans) == THUNKSCOPE_SPANS
        for span in spans:
            assert span["scope"] == "thunkscope"
            assert (span["ended"], span["status"], span["timeout_recorded"]) == (
                True,
                "UNSET",
                False,
            )
        assert {
            "thunkscope.stream.duration",
            "thunkscope.stream.items",
            "thunkscope.stream.time_to_first_item",
        } <= set(facts["metrics"])

    @pytest.mark.parametrize("config", ["thunkscope", "thunkscope-fast"])
    def test_thunkscope_ends_the_stalled_stream_with_outcome_timeout(
        self, quick_run: tuple[str, dict[str, Any]], config: str
    ) -> None:
        """The stalled generation's send_to_queue span is ended, in error, with outcome timeout,
        error type and the timeout event; mellea's own TimeoutError reaches the caller."""
        _, report = quick_run
        stall = report["facts"][config]["stall"]
        assert stall["raised"] == MELLEA_TIMEOUT
        assert Counter(span["name"] for span in stall["spans"]) == THUNKSCOPE_SPANS
        assert all(span["ended"] for span in stall["spans"])
        assert _spans(report["facts"][config], "stall")["send_to_queue"] == {
            "name": "send_to_queue",
            "scope": "thunkscope",
            "ended": True,
            "status": "ERROR",
            "description": "no item from the backend within chunk_timeout=0.5s",
            "timeout_recorded": True,
            "evidence": [
                "thunkscope.stream.outcome=timeout",
                "error.type=TimeoutError",
                "event stream.timeout",
            ],
        }

    def test_facts_table_has_a_row_per_span(self, quick_run: tuple[str, dict[str, Any]]) -> None:
        """The printed facts table has one row per recorded span and says which ended."""
        stdout, report = quick_run
        rows = [
            line
            for line in stdout.splitlines()
            if line.startswith(("| thunkscope | normal | ", "| thunkscope | stall | "))
        ]
        spans = report["facts"]["thunkscope"]
        assert len(rows) == len(spans["normal"]["spans"]) + len(spans["stall"]["spans"])
        assert (
            "| thunkscope | stall | send_to_queue | yes | ERROR: no item from the backend within "
            "chunk_timeout=0.5s | thunkscope.stream.outcome=timeout, error.type=TimeoutError, "
            "event stream.timeout |"
        ) in rows


def _load_generation() -> Any:
    return load_script(GENERATION, "thunkscope_generation_bench")


class TestReport:
    def test_report_reprints_a_saved_run(
        self, quick_run: tuple[str, dict[str, Any]], tmp_path: Path
    ) -> None:
        """``--report`` prints a saved JSON run exactly as the run printed it."""
        stdout, report = quick_run
        saved = tmp_path / "run.json"
        saved.write_text(json.dumps(report))
        done = subprocess.run(
            [sys.executable, str(GENERATION), "--report", str(saved)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert done.stdout == stdout
        assert stdout.rstrip().endswith("targets: no instruction counts (run with callgrind)")

    def test_targets_against_no_telemetry_and_the_cheapest_peer(self) -> None:
        """The issue's targets are judged from the instruction counts: the fast path below no
        telemetry at each chunk count, thunkscope's overhead under a fifth of the cheapest
        peer's (a tie with the fifth is a miss)."""
        generation = _load_generation()
        result = generation.Result(
            sizes={},
            environment={},
            instructions={
                "none": {"fresh/50": 60e6, "fresh/200": 200e6},
                "thunkscope": {"fresh/50": 61.8e6, "fresh/200": 201.9e6},
                "thunkscope-fast": {"fresh/50": 59e6, "fresh/200": 201e6},
                "mellea": {"fresh/50": 80e6, "fresh/200": 240e6},
                "openllmetry": {"fresh/50": 69e6, "fresh/200": 230e6},
                "openlit": {"fresh/50": 72e6, "fresh/200": 210e6},
            },
        )
        assert generation.targets(result) == [
            "- fast path, fresh/50: 59.00 M against 60.00 M with no telemetry "
            "(met: target below no telemetry)",
            "- fast path, fresh/200: 201.00 M against 200.00 M with no telemetry "
            "(missed: target below no telemetry)",
            "- thunkscope, fresh/50: +1.80 M above no telemetry against openllmetry's +9.00 M, "
            "the cheapest peer (missed: target under a fifth)",
            "- thunkscope-fast, fresh/50: -1.00 M above no telemetry against openllmetry's "
            "+9.00 M, the cheapest peer (met: target under a fifth)",
            "- thunkscope, fresh/200: +1.90 M above no telemetry against openlit's +10.00 M, "
            "the cheapest peer (met: target under a fifth)",
            "- thunkscope-fast, fresh/200: +1.00 M above no telemetry against openlit's "
            "+10.00 M, the cheapest peer (met: target under a fifth)",
        ]
