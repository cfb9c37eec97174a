"""The live HTML page at the debug endpoint's root (SPEC section 6).

One self-contained page, no external assets: a table of the in-flight streams, most idle
first, refreshed every second by inline JavaScript fetching ``./inflight`` (no reload),
each row's producer stack on demand, and trace ids linked when a trace URL template is
set (``THUNKSCOPE_TRACE_URL``). Every value reaches the page through ``textContent`` or
an escaped attribute, never as markup, so a stream named ``<script>...`` shows as text; a
Content-Security-Policy allows only this page's own script (by nonce) and requests to
its own origin.
"""

from __future__ import annotations

import html
import json
import os
import secrets

__all__ = ["content_security_policy", "new_nonce", "render"]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>thunkscope in flight: {title}</title>
<style>
body {{ font: 13px/1.4 system-ui, sans-serif; margin: 1em; color: #222; }}
h1 {{ font-size: 16px; margin: 0 0 .3em; }}
.meta {{ color: #666; margin-bottom: .8em; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: 3px 8px; border-bottom: 1px solid #ddd;
  vertical-align: top; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.stalled td {{ background: #fde8e8; }}
tr.blocked_on_put td {{ background: #fff4d6; }}
pre {{ margin: 4px 0 0; font-size: 12px; white-space: pre-wrap; }}
#status.error {{ color: #b00; }}
</style></head>
<body>
<h1>thunkscope: streams in flight</h1>
<div class="meta">pid {pid} · {service} · instance {instance} ·
<span id="status">loading…</span></div>
<table><thead><tr><th>idle</th><th>age</th><th>state</th><th>items</th><th>name</th>
<th>stream</th><th>backend</th><th>trace</th><th>producer stack</th></tr></thead>
<tbody id="rows"></tbody></table>
<p id="empty" hidden>no stream in flight</p>
<script type="application/json" id="config">{config}</script>
<script nonce="{nonce}">
"use strict";
const config = JSON.parse(document.getElementById("config").textContent);
const open = new Set();
function seconds(value) {{
  const s = Number(value) || 0;
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + "s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
}}
function cell(row, text, cls) {{
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}}
function traceCell(row, traceId) {{
  const td = cell(row, "");
  if (!traceId) {{ td.textContent = "-"; return; }}
  if (config.trace_url && /^[0-9a-f]{{32}}$/.test(traceId)) {{
    const a = document.createElement("a");
    a.href = config.trace_url.split("{{trace_id}}").join(traceId);
    a.textContent = traceId;
    a.rel = "noreferrer";
    td.appendChild(a);
  }} else {{
    td.textContent = traceId;
  }}
}}
function stackCell(row, snap) {{
  const td = cell(row, "");
  const stack = Array.isArray(snap.stack) ? snap.stack : [];
  if (!stack.length) {{ td.textContent = "-"; return; }}
  const details = document.createElement("details");
  details.open = open.has(snap.stream_id);
  details.addEventListener("toggle", () => {{
    if (details.open) open.add(snap.stream_id); else open.delete(snap.stream_id);
  }});
  const summary = document.createElement("summary");
  const own = stack.map(String).filter((frame) => !frame.includes("/asyncio/"));
  summary.textContent = (own.length ? own : stack).slice(-1)[0].split("/").pop();
  const pre = document.createElement("pre");
  pre.textContent = stack.map(String).join("\\n");
  details.append(summary, pre);
  td.appendChild(details);
}}
function draw(snapshots) {{
  snapshots.sort((a, b) => (Number(b.idle_s) || 0) - (Number(a.idle_s) || 0));
  const body = document.createElement("tbody");
  body.id = "rows";
  for (const snap of snapshots) {{
    const row = document.createElement("tr");
    row.className = String(snap.state);
    row.dataset.streamId = String(snap.stream_id);
    row.dataset.state = String(snap.state);
    cell(row, seconds(snap.idle_s), "num");
    cell(row, seconds(snap.age_s), "num");
    cell(row, String(snap.state));
    cell(row, String(snap.items), "num");
    cell(row, String(snap.name)).className = "name";
    cell(row, String(snap.stream_id));
    cell(row, String(snap.backend_type || "-"));
    traceCell(row, snap.trace_id);
    stackCell(row, snap);
    body.appendChild(row);
  }}
  document.getElementById("rows").replaceWith(body);
  document.getElementById("empty").hidden = snapshots.length > 0;
}}
async function refresh() {{
  const status = document.getElementById("status");
  try {{
    const reply = await fetch("inflight", {{cache: "no-store"}});
    if (!reply.ok) throw new Error("HTTP " + reply.status);
    const snapshots = await reply.json();
    draw(snapshots);
    status.textContent = snapshots.length + " in flight · updated " +
      new Date().toLocaleTimeString();
    status.className = "";
  }} catch (error) {{
    status.textContent = "cannot read ./inflight: " + error.message;
    status.className = "error";
  }} finally {{
    setTimeout(refresh, config.refresh_ms);
  }}
}}
refresh();
</script>
</body></html>
"""

REFRESH_MS = 1000


def render(*, service: str, instance: str, trace_url: str | None, nonce: str) -> bytes:
    """The page, with this process's identity and the trace URL template filled in."""
    config = json.dumps({"trace_url": trace_url, "refresh_ms": REFRESH_MS})
    # In a <script> element only "</" (and "<!--") can end or confuse it: escape "<".
    config = config.replace("<", "\\u003c")
    return _PAGE.format(
        title=html.escape(service),
        pid=os.getpid(),
        service=html.escape(service),
        instance=html.escape(instance),
        config=config,
        nonce=nonce,
    ).encode()


def new_nonce() -> str:
    """A fresh script nonce for one response."""
    return secrets.token_urlsafe(16)


def content_security_policy(nonce: str) -> str:
    """Only this page's own inline script and requests to its own origin."""
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'"
    )
