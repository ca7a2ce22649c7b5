"""For lectures and the Space: a link that reopens a view, figures for slides, a presentation mode.

**The link.** Each tab declares which of its controls belong in the URL with ``ctx.url_state(key=component)``
while it builds. The page's query string then holds ``tab``, ``prompt``, ``model``, ``present`` and the open
tab's keys, e.g. ``?tab=attention&prompt=...&model=...&layer=3&head=5``. The browser keeps the address
bar current (JavaScript on each control's change, no server round trip); "Copy link" copies it. On page
load ``restore`` reads the query string on the server, checks every value as the controls do (an
out-of-range value gets the same plain message and is left out; the rest still applies), sets the
controls, and only then do the tabs draw (``AppContext.refresh_triggers`` fires after it).

**Figures.** gradio's gr.Plot hands plotly.js a figure with no config, so one script, run once per page,
wraps ``Plotly.react``: each figure's modebar downloads a PNG at 2x (Plotly's own toImage button,
configured), an SVG, and the figure's numbers as JSON, all named for what they show
(``attention_heatmap_L3_H5.png``: the plot's elem_id, then layer, head and token from its title, or
``layout.meta.filename`` when a figure names itself). The same wrapper enlarges every font of a figure
in presentation mode.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable

import gradio as gr

from .inputs import MAX_PROMPT_CHARS, InputError, check_number

RESERVED_KEYS = ("tab", "prompt", "model", "present")
MAX_TEXT_CHARS = 2_000          # a text control's value read from a URL
PRESENTATION_SCALE = 1.7        # fonts in presentation mode, times their usual size
PNG_SCALE = 2                   # PNG downloads at twice the figure's size on screen: sharp on a projector
CSS = """
.url-hidden { display: none !important; }
body.presentation .gradio-container { font-size: 150% !important; }
body.presentation .prose, body.presentation .prose * { font-size: 1.45rem !important; line-height: 1.5 !important; }
body.presentation textarea, body.presentation input { font-size: 1.4rem !important; }
body.presentation label span, body.presentation button { font-size: 1.25rem !important; }
"""


@dataclass
class UrlField:
    tab: str
    key: str
    component: gr.components.Component


@dataclass
class UrlState:
    """Every tab's controls that a link carries, in one list (the order of the page's JS arguments)."""
    fields: list[UrlField] = field(default_factory=list)
    # tab -> fn(model_entry, prompt_text) -> {key: (lo, hi)}: ranges that depend on the model or prompt
    limits: dict[str, Callable] = field(default_factory=dict)
    # tab -> elem_ids of the buttons its first opening (or a link to it) presses, in order: the tabs, or
    # the parts of a tab, that draw on demand only, not on page load
    redraw: dict[str, list[str]] = field(default_factory=dict)

    def add(self, tab: str, components: dict, limits: Callable | None = None, redraw=None) -> None:
        for key, component in components.items():
            if key in RESERVED_KEYS or any(f.tab == tab and f.key == key for f in self.fields):
                raise ValueError(f"URL key {key!r} of tab {tab!r} is taken")
            self.fields.append(UrlField(tab, key, component))
        if limits is not None:
            self.limits[tab] = limits
        if redraw is not None:
            buttons = redraw if isinstance(redraw, (list, tuple)) else [redraw]
            self.redraw[tab] = [b.elem_id for b in buttons]


def _integer(component) -> bool:
    if isinstance(component, gr.Number):
        return component.precision == 0
    step = getattr(component, "step", 1) or 1
    return float(step).is_integer() and float(component.minimum or 0).is_integer()


def parse_flag(raw: str, label: str) -> bool:
    if raw.lower() not in ("1", "0", "true", "false"):
        raise InputError(f"{label} must be 1 or 0 (on or off), got {raw[:40]!r}.")
    return raw.lower() in ("1", "true")


def parse_value(component, raw: str, bounds: tuple | None = None):
    """A URL's text for ``component``, checked as the control checks it; (value, update) or InputError."""
    label = component.label or "This value"
    if isinstance(component, (gr.Slider, gr.Number)):
        lo, hi = bounds or (component.minimum, component.maximum)
        value = check_number(raw, label, lo, hi, integer=_integer(component))
        if isinstance(component, gr.Slider) and bounds is not None:
            # the slider was built for the default model: widen it to this model's range
            return value, gr.update(value=value, minimum=lo, maximum=max(hi, lo + 1))
        return value, gr.update(value=value)
    if isinstance(component, gr.Checkbox):
        value = parse_flag(raw, label)
        return value, gr.update(value=value)
    if isinstance(component, (gr.Radio, gr.Dropdown)):
        choices = [c[1] if isinstance(c, (tuple, list)) else c for c in (component.choices or [])]
        if isinstance(component, gr.Dropdown) and component.multiselect:
            raise InputError(f"{label} can't be set from a link.")
        if raw in [str(c) for c in choices]:
            value = choices[[str(c) for c in choices].index(raw)]
        elif isinstance(component, gr.Dropdown) and component.allow_custom_value and len(raw) <= MAX_TEXT_CHARS:
            value = raw
        else:
            raise InputError(f"{label} must be one of {', '.join(map(str, choices))}, got {raw[:40]!r}.")
        return value, gr.update(value=value)
    if isinstance(component, gr.Textbox):
        if len(raw) > MAX_TEXT_CHARS:
            raise InputError(f"{label} from a link may have at most {MAX_TEXT_CHARS:,} characters.")
        return raw, gr.update(value=raw)
    raise InputError(f"{label} can't be set from a link.")


def restore_updates(query: dict, ctx, tab_ids: list[str]) -> tuple[list, list[str]]:
    """What a page's query string sets: updates for [prompt, model, tabs, presentation, *fields] and the
    plain messages for the values left out. Pure but for the registry look-up: tested without a browser."""
    messages: list[str] = []
    prompt_u = model_u = tabs_u = present_u = gr.update()
    prompt_text = ctx.prompt.value
    if "prompt" in query:
        prompt_text = query["prompt"][:MAX_PROMPT_CHARS]
        prompt_u = gr.update(value=prompt_text)
    entry = ctx.model(None)
    if "model" in query:
        try:
            entry = ctx.model(query["model"])
            model_u = gr.update(value=entry.name)
        except InputError as e:
            messages.append(f"From the link: {e}")
    tab = query.get("tab")
    if tab is not None:
        if tab in tab_ids:
            tabs_u = gr.Tabs(selected=tab)
        else:
            messages.append(f"From the link: there is no tab {tab[:40]!r}; the tabs are {', '.join(tab_ids)}.")
            tab = None
    if "present" in query:
        try:
            present_u = gr.update(value=parse_flag(query["present"], "Presentation mode"))
        except InputError as e:
            messages.append(f"From the link: {e}")
    bounds = {}
    if tab in ctx.url.limits:
        try:
            bounds = ctx.url.limits[tab](entry, prompt_text)
        except InputError as e:          # e.g. an empty prompt in the link: the tab itself will say so
            messages.append(f"From the link: {e}")
    field_updates = []
    for f in ctx.url.fields:
        if f.tab != tab or f.key not in query:
            field_updates.append(gr.update())
            continue
        try:
            field_updates.append(parse_value(f.component, query[f.key], bounds.get(f.key))[1])
        except InputError as e:
            messages.append(f"From the link: {e}")
            field_updates.append(gr.update())
    return [prompt_u, model_u, tabs_u, present_u, *field_updates], messages


def after_restore_js(state: UrlState) -> str:
    """Run once a link's settings are set, with the link's inputs: the tabs' first draw, the run button of a
    linked tab that draws on demand only, and from now on the address bar follows the controls."""
    return ("(prompt, model, present, ...values) => { document.querySelector('#page-ready')?.click(); "
            "const tab = new URLSearchParams(location.search).get('tab'); "
            "if (tab) window.explorer.firstOpen(tab); "
            "setTimeout(() => { window.explorer.restored = true; "
            "window.explorer.link(prompt, model, present, values); }, 100); }")


def page_script(state: UrlState) -> str:
    """The page's JavaScript, run once on load: the link, the first draw of tabs that draw on demand, the
    figure downloads and presentation mode."""
    keys = json.dumps([[f.tab, f.key] for f in state.fields])
    return (PAGE_JS.replace("__FIELDS__", keys).replace("__REDRAW__", json.dumps(state.redraw))
            .replace("__SCALE__", str(PRESENTATION_SCALE))
            .replace("__PNG_SCALE__", str(PNG_SCALE)))


PAGE_JS = r"""
() => {
  if (window.explorer) return;
  const FIELDS = __FIELDS__, REDRAW = __REDRAW__, BIG = __SCALE__, PNG_SCALE = __PNG_SCALE__;
  const ex = window.explorer = {present: false};

  // ---- a tab that draws on demand presses its own button the first time this page opens it ----
  const drawn = new Set();
  ex.firstOpen = (tab) => {
    const runs = REDRAW[tab];
    if (!runs || drawn.has(tab)) return;
    drawn.add(tab);
    runs.forEach((id, i) => setTimeout(() => document.getElementById(id)?.click(), 50 + 50 * i));
  };

  // ---- the link: the open tab, the prompt, the model and the open tab's settings ----
  ex.openTab = () => {     // gradio names a tab's button <elem_id>-button; ours are tab-<short name>
    const button = document.querySelector('#tabs button[role="tab"][aria-selected="true"]');
    const m = button && button.id.match(/^tab-(.+)-button$/);
    return m ? m[1] : '';
  };
  ex.link = (prompt, model, present, values) => {
    const tab = ex.openTab(), q = new URLSearchParams();
    if (tab) q.set('tab', tab);
    q.set('prompt', prompt ?? '');
    if (model) q.set('model', model);
    if (present) q.set('present', '1');
    FIELDS.forEach(([t, k], i) => {
      const v = values[i];
      if (t === tab && v !== null && v !== undefined && !Array.isArray(v))
        q.set(k, typeof v === 'boolean' ? (v ? '1' : '0') : String(v));
    });
    const url = location.origin + location.pathname + '?' + q.toString();
    if (ex.restored) history.replaceState(null, '', url);   // not before the link's own values are set
    return url;
  };

  // ---- figures: file names, PNG at 2x, SVG, the numbers as JSON, presentation fonts ----
  const titleOf = (layout) => {
    const t = layout && layout.title;
    return ((typeof t === 'string' ? t : (t && t.text)) || '').replace(/<[^>]+>/g, ' ');
  };
  ex.figureName = (gd, layout) => {
    if (layout && layout.meta && layout.meta.filename) return String(layout.meta.filename);
    const holder = gd.parentElement && gd.parentElement.closest('[id]');
    const base = (holder ? holder.id : 'figure').replace(/[^A-Za-z0-9]+/g, '_');
    const title = titleOf(layout), tags = [];
    for (const [re, tag] of [[/\blayer\s*(\d+)/i, 'L'], [/\bhead\s*(\d+)/i, 'H'],
                             [/\b(?:token|position|query)\s*(\d+)/i, 'T']]) {
      const m = title.match(re);
      if (m) tags.push(tag + m[1]);
    }
    return [base, ...tags].join('_');
  };
  const DTYPES = {f8: Float64Array, f4: Float32Array, i1: Int8Array, i2: Int16Array, i4: Int32Array,
                  u1: Uint8Array, u2: Uint16Array, u4: Uint32Array};
  const plain = (v) => {           // plotly's typed arrays and {dtype, bdata} blocks -> JSON arrays
    if (v === null || v === undefined) return v;
    if (ArrayBuffer.isView(v)) return Array.from(v);
    if (Array.isArray(v)) return v.map(plain);
    if (typeof v === 'object' && v.bdata && v.dtype && DTYPES[v.dtype]) {
      const bytes = Uint8Array.from(atob(v.bdata), (c) => c.charCodeAt(0));
      const flat = Array.from(new DTYPES[v.dtype](bytes.buffer));
      const shape = typeof v.shape === 'string' ? v.shape.split(',').map(Number) : v.shape;
      if (!shape || shape.length < 2) return flat;
      const rows = [];
      for (let r = 0; r < shape[0]; r++) rows.push(flat.slice(r * shape[1], (r + 1) * shape[1]));
      return rows;
    }
    return v;
  };
  ex.figureData = (gd) => {
    const layout = (gd.explorerOriginal && gd.explorerOriginal.layout) || gd.layout || {};
    const traces = (gd.data || []).map((t) => {
      const out = {type: t.type || 'scatter'};
      for (const k of ['name', 'x', 'y', 'z', 'text', 'customdata', 'hovertext', 'orientation', 'xaxis', 'yaxis'])
        if (t[k] !== undefined) out[k] = plain(t[k]);
      return out;
    });
    const axes = {};
    for (const [k, v] of Object.entries(layout))
      if (/^[xy]axis\d*$/.test(k) && v && v.title) axes[k] = titleOf({title: v.title});
    return {figure: ex.figureName(gd, layout), title: titleOf(layout).trim(), axes, traces};
  };
  const save = (name, text, type) => {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([text], {type}));
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  };
  const scaleFonts = (obj) => {    // every explicit font size in a layout or trace, times BIG
    if (Array.isArray(obj)) { obj.forEach(scaleFonts); return; }
    if (!obj || typeof obj !== 'object' || ArrayBuffer.isView(obj)) return;
    for (const [k, v] of Object.entries(obj)) {
      if ((k === 'font' || k === 'textfont' || k === 'tickfont' || k === 'titlefont') && v && typeof v === 'object'
          && typeof v.size === 'number') v.size = Math.round(v.size * BIG);
      else if (typeof v === 'object') scaleFonts(v);
    }
  };
  const presented = (layout) => {
    const big = JSON.parse(JSON.stringify(layout || {}));
    scaleFonts(big);
    big.font = Object.assign({}, big.font, {size: Math.round(((layout.font && layout.font.size) || 12) * BIG)});
    if (big.height) big.height = Math.round(big.height * 1.25);
    return big;
  };
  const patch = (P) => {
    if (!P || P.explorerPatched || typeof P.react !== 'function') return;
    P.explorerPatched = true;
    const react = P.react;
    P.react = function (gd, data, layout, config) {
      if (!(gd instanceof HTMLElement) || !Array.isArray(data)) return react.apply(this, arguments);
      gd.explorerOriginal = {data, layout: JSON.parse(JSON.stringify(layout || {})), config};
      const name = ex.figureName(gd, layout);
      const cfg = Object.assign({}, config, {
        displaylogo: false,
        toImageButtonOptions: {format: 'png', scale: PNG_SCALE, filename: name},
        modeBarButtonsToAdd: [
          {name: 'Download plot as SVG', icon: P.Icons.camera,
           click: (g) => P.downloadImage(g, {format: 'svg', filename: ex.figureName(g, g.explorerOriginal.layout)})},
          {name: 'Download the numbers (JSON)', icon: P.Icons.disk,
           click: (g) => save(ex.figureName(g, g.explorerOriginal.layout) + '.json',
                              JSON.stringify(ex.figureData(g), null, 1), 'application/json')},
        ],
      });
      gd.explorerOriginal.config = cfg;
      return react.call(this, gd, data, ex.present ? presented(layout) : layout, cfg);
    };
  };
  ex.present_mode = (on) => {
    ex.present = !!on;
    document.body.classList.toggle('presentation', ex.present);
    for (const gd of document.querySelectorAll('.js-plotly-plot')) {
      const o = gd.explorerOriginal;
      if (o && window.Plotly) window.Plotly.react(gd, o.data, o.layout, o.config);
    }
  };
  // gradio loads plotly.js lazily, with the first figure, and sets window.Plotly: patch it then.
  let plotly = window.Plotly;
  patch(plotly);
  Object.defineProperty(window, 'Plotly', {configurable: true, get: () => plotly,
                                           set: (v) => { plotly = v; patch(v); }});
}
"""
