"""``GET /docs``: the OpenAPI document rendered as one self-contained HTML page, server-side.

Invariants: the page loads nothing (no script, stylesheet, font or image from anywhere: the
serving hosts may have no network, and a page that runs a CDN's latest script runs whatever that
is today); every text taken from the document is HTML-escaped; it is rendered once per replica.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator, Mapping
from typing import Any

_METHODS = ("get", "post", "put", "patch", "delete")
_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
line-height:1.45;color:#1d1d1f}
h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.5rem}
code,pre{font-family:ui-monospace,monospace;font-size:.85rem}
pre{background:#f4f4f6;padding:.6rem;overflow-x:auto;border-radius:4px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
.method{font-weight:bold;text-transform:uppercase}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pre(value: object) -> str:
    return f"<pre>{_e(json.dumps(value, indent=2, sort_keys=False))}</pre>"


def _anchor(name: str) -> str:
    return "schema-" + "".join(c if c.isalnum() else "-" for c in name)


def _schema_link(schema: Mapping[str, Any]) -> str:
    """A ``$ref`` as a link to its component, anything else in full."""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return f'<a href="#{_anchor(name)}">{_e(name)}</a>'
    return _pre(schema)


def _security(op: Mapping[str, Any], schemes: Mapping[str, Any]) -> str:
    names = [name for requirement in op.get("security", []) for name in requirement]
    if not names:
        return "<p>No API key needed.</p>"
    ways = []
    for name in names:
        scheme = schemes.get(name, {})
        if scheme.get("type") == "apiKey":
            ways.append(f"header <code>{_e(scheme.get('name'))}</code>")
        else:
            ways.append("<code>Authorization: Bearer &lt;key&gt;</code>")
    return f"<p>API key: {' or '.join(ways)}.</p>"


def _parameters(op: Mapping[str, Any]) -> Iterator[str]:
    parameters = op.get("parameters", [])
    if not parameters:
        return
    yield "<h4>Parameters</h4><table><tr><th>Name</th><th>In</th><th>Required</th><th>Schema</th>"
    yield "</tr>"
    for p in parameters:
        yield (
            f"<tr><td><code>{_e(p.get('name'))}</code></td><td>{_e(p.get('in'))}</td>"
            f"<td>{'yes' if p.get('required') else 'no'}</td>"
            f"<td>{_schema_link(p.get('schema', {}))}</td></tr>"
        )
    yield "</table>"


def _request(op: Mapping[str, Any]) -> Iterator[str]:
    body = op.get("requestBody")
    if not body:
        return
    required = "required" if body.get("required") else "optional"
    for media, content in body.get("content", {}).items():
        yield f"<h4>Request body ({_e(media)}, {required})</h4>"
        yield _schema_link(content.get("schema", {}))
        if "example" in content:
            yield "<p>Example:</p>" + _pre(content["example"])


def _responses(op: Mapping[str, Any]) -> Iterator[str]:
    yield "<h4>Responses</h4><table><tr><th>Status</th><th>Meaning</th><th>Headers</th>"
    yield "<th>Body</th></tr>"
    for status, response in op.get("responses", {}).items():
        headers = ", ".join(f"<code>{_e(name)}</code>" for name in response.get("headers", {}))
        bodies = []
        for media, content in response.get("content", {}).items():
            schema = content.get("schema", {})
            variants = schema.get("oneOf")
            shown = (
                " or ".join(_schema_link(v) for v in variants) if variants else _schema_link(schema)
            )
            bodies.append(f"<code>{_e(media)}</code>: {shown}")
        yield (
            f"<tr><td>{_e(status)}</td><td>{_e(response.get('description', ''))}</td>"
            f"<td>{headers}</td><td>{'<br>'.join(bodies)}</td></tr>"
        )
    yield "</table>"


def _operations(document: Mapping[str, Any]) -> Iterator[str]:
    schemes = document.get("components", {}).get("securitySchemes", {})
    prefix = document.get("servers", [{}])[0].get("url", "")
    for path, item in document.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            yield (
                f'<h3><span class="method">{method}</span> <code>{_e(prefix + path)}</code>'
                f"</h3><p>{_e(op.get('summary', ''))}</p>"
            )
            yield _security(op, schemes)
            yield from _parameters(op)
            yield from _request(op)
            yield from _responses(op)


def _components(document: Mapping[str, Any]) -> Iterator[str]:
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        yield f'<h3 id="{_anchor(name)}">{_e(name)}</h3>'
        if isinstance(schema, Mapping) and "description" in schema:
            yield f"<p>{_e(schema['description'])}</p>"
        yield _pre(schema)


def render_html(document: Mapping[str, Any]) -> bytes:
    """The whole page; ``document`` is what ``GET /v1/openapi.json`` serves."""
    info = document.get("info", {})
    title = _e(info.get("title", "API"))
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{title} <small>v{_e(info.get('version', ''))}</small></h1>",
        f"<p>{_e(info.get('description', ''))}</p>",
        '<p>Machine-readable: <a href="v1/openapi.json">v1/openapi.json</a> '
        f"(OpenAPI {_e(document.get('openapi', ''))}).</p>",
        "<h2>Routes</h2>",
        *_operations(document),
        "<h2>Schemas</h2>",
        *_components(document),
        "</body></html>",
    ]
    return "\n".join(parts).encode("utf-8")
