"""The report page: one self-contained HTML file with the Vega JavaScript inlined (no network).

The JavaScript bundle (Vega, Vega-Lite, vega-embed) comes from vl-convert, which builds it in a
few seconds; it is cached per vl-convert and Vega-Lite version under ~/.cache/bnsweep.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import altair as alt
import vl_convert as vlc

VL_VERSION = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])  # the Vega-Lite that Altair writes, e.g. 6.4

Column = tuple[str, Callable[[dict], object]]  # header, cell from a row


@lru_cache(maxsize=1)
def bundle() -> str:
    """vega-embed, Vega-Lite and Vega as one script that sets window.vegaEmbed (safe inside a <script> element)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bnsweep"
    path = cache / f"vega-bundle-vlc{vlc.__version__}-vl{VL_VERSION}.js"
    if path.exists():
        return path.read_text()
    js = vlc.javascript_bundle(vl_version=VL_VERSION).replace("</script", "<\\/script")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(js)
        tmp.replace(path)
    except OSError:  # a read-only home: build it again next time
        pass
    return js


def esc(x: object) -> str:
    return html.escape("" if x is None else str(x))


def table(rows: list[dict], columns: list[Column], cls: str = "") -> str:
    """An HTML table; each column is (header, function of the row)."""
    if not rows:
        return "<p class='note'>(no rows)</p>"
    head = "".join(f"<th>{esc(h)}</th>" for h, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(f(r))}</td>" for _, f in columns) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


SCRIPT_SAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}  # JSON's own escapes


def script_json(obj: object) -> str:
    """JSON that is safe inside a <script> element: no <, > or & at all (a value holding `</script>`, `<!--` or
    `<script>` cannot end the element or switch the HTML parser's script states); JSON.parse reads it back unchanged."""
    text = json.dumps(obj, allow_nan=False)
    for char, escape in SCRIPT_SAFE.items():  # str.replace: str.translate goes character by character (seconds for MBs)
        text = text.replace(char, escape)
    return text


EMBED = """
window.reportErrors = [];
window.addEventListener("error", e => window.reportErrors.push(String(e.message)));
const specs = JSON.parse(document.getElementById("specs").textContent);
Promise.allSettled(Object.entries(specs).map(([name, spec]) =>
  vegaEmbed(document.getElementById("vis-" + name), spec, {renderer: "svg", actions: false})
    .catch(err => { window.reportErrors.push(name + ": " + err); console.error(name, err); throw err; })
)).then(results => {
  document.body.dataset.chartsDrawn = results.filter(r => r.status === "fulfilled").length;
});
"""

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } .note { color: #666; } .figure { margin: 1em 0 2.5em; overflow-x: auto; }
.supported { color: #11772d; font-weight: 600; } .contradicted { color: #b3261e; font-weight: 600; }
.inconclusive { color: #9a6700; font-weight: 600; } pre { white-space: pre-wrap; font-size: 12px; }
.not-measured-in-this-output { color: #777; font-weight: 600; }
"""


def page(title: str, body: str, specs: dict[str, dict]) -> str:
    """The whole document: body sections, then the inlined library and the chart specs."""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}"
            f"<script>{bundle()}</script>"
            f"<script type='application/json' id='specs'>{script_json(specs)}</script>"
            f"<script>{EMBED}</script></body></html>")
