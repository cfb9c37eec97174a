"""Instrument mellea's own async helpers with thunkscope's telemetry, without code changes.

With one line::

    from thunkscope.instrumentation import MelleaInstrumentor

    MelleaInstrumentor().instrument()  # tracer_provider=, meter_provider=, logger_provider=

or with none, through OpenTelemetry's auto-instrumentation (the ``mellea`` entry point of
the ``opentelemetry_instrumentor`` group; ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=mellea``
turns it off)::

    pip install 'thunkscope[instruments]' opentelemetry-distro
    opentelemetry-instrument python app.py

every stream mellea's backends feed (``send_to_queue``), every ``wait_for_all_mots``,
every ``get_current_event_loop`` and every backend ``ClientCache`` lookup, insert and
eviction gets thunkscope's span, metrics and log events, and its stall watch and
in-flight view (``thunkscope.inflight()``), on mellea 0.6, 0.7 and 0.8 alike. mellea's
functions keep doing the work (its calling convention, its ``STREAM_TIMEOUT``, its queue,
its cache): thunkscope observes them. Streams and caches are named after the backend,
``mellea.openai``, ``mellea.ollama``, ...; mellea's request, generation (0.8), session and
model ids go on the ``send_to_queue`` span (``mellea.request.id``,
``mellea.generation.id``, ``mellea.session.id``, ``gen_ai.request.model``) and its first
log event. When mellea's own spans are active (its ``session`` span, or on Python 3.12+
its backend ``chat`` span), thunkscope's spans are their children.

``MelleaInstrumentor().uninstrument()`` puts every original mellea object back.
Importing this package does not import mellea; ``instrument()`` does.
"""

from __future__ import annotations

from thunkscope.instrumentation._mellea import MelleaInstrumentor

__all__ = ["MelleaInstrumentor"]
