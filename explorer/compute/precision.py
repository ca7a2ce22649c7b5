"""What the Precision tab shows: one prompt in fp32, bf16, fp16 and int8, side by side.

Plain python / numpy: no gradio, no plotly. The runs themselves are gpt2core.analysis.precision.compare; this
module names the tokens as text and writes the summary. ``status_markdown`` is the app's status line
when it serves in a lower precision (``python app.py --dtype bf16``).
"""
from __future__ import annotations

from dataclasses import dataclass

from gpt2core.analysis import precision as core
from gpt2core.kernels import backend
from gpt2core.text.tokenizer import printable, token_bytes

from ..inputs import Prompt

FORMATS = {   # what each precision stores, in words
    "fp32": "32-bit floats: the reference",
    "bf16": "bfloat16: fp32's 8-bit exponent, 8 significant bits",
    "fp16": "float16: 5-bit exponent, 11 significant bits",
    "int8": "linear weights as 8-bit integers with one scale per matrix, inputs quantised per call",
}


def token_text(i: int) -> str:
    return printable(token_bytes(int(i)))


def _code(text: str) -> str:
    """A token as inline code in a Markdown table cell (a | would end the cell)."""
    return "`` " + text.replace("|", "\\|") + " ``"


@dataclass
class PrecisionView:
    prompt: Prompt
    rows: list[core.PrecisionRun]      # fp32 first

    @property
    def tokens(self) -> list[str]:
        return self.prompt.tokens

    @property
    def names(self) -> list[str]:
        return [r.precision for r in self.rows]

    def top_tokens(self, row: core.PrecisionRun) -> list[str]:
        return [token_text(i) for i in row.top_ids]

    def where_text(self, row: core.PrecisionRun, markdown: bool = True) -> str:
        """Where the largest attention change is, with the query and key tokens as text."""
        layer, head, q, k = row.attention_where
        name = _code if markdown else (lambda t: f"'{t}'")
        return f"layer {layer}, head {head}: query {q} {name(self.tokens[q])} → key {k} {name(self.tokens[k])}"


def precision_view(model, prompt: Prompt, precisions=None, top_k: int = 5, between=None) -> PrecisionView:
    return PrecisionView(prompt, core.compare(model, prompt.ids, precisions, top_k=top_k, between=between))


def megabytes(n_bytes: int) -> float:
    return n_bytes / 1e6


def _same_top(view: PrecisionView, row) -> str:
    ref = view.rows[0]
    if int(row.top_ids[0]) == int(ref.top_ids[0]):
        return "same as fp32"
    return "**differs from fp32**"


def summary_markdown(view: PrecisionView) -> str:
    ref = view.rows[0]
    T = len(view.prompt.ids)
    lines = [f"The prompt's {T} token{'s' if T != 1 else ''}, run once in each precision; every difference is "
             "against the fp32 run.", "",
             "| precision | stores | next token | max \\|Δ logit\\| | top-1 agreement | max \\|Δ attention weight\\| "
             "| where | weights | run time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in view.rows:
        top = view.top_tokens(row)[0]
        next_token = f"{_code(top)} {row.top_probs[0]:.1%}" + ("" if row is ref else f" ({_same_top(view, row)})")
        if len(row.top_probs) > 1 and row.top_probs[1] == row.top_probs[0]:
            next_token += f", exactly tied with {_code(view.top_tokens(row)[1])}"
        agree = round(row.top1_agreement * T)
        where = "—" if row is ref else view.where_text(row)
        lines.append(f"| **{row.precision}** | {FORMATS.get(row.precision, '')} | {next_token} | "
                     f"{row.max_logit_delta:.4g} | {row.top1_agreement:.1%} ({agree}/{T}) | "
                     f"{row.max_attention_delta:.3g} | {where} | {megabytes(row.weight_bytes):,.1f} MB "
                     f"({row.weight_bytes / ref.weight_bytes:.0%}) | {row.seconds * 1000:,.1f} ms |")
    worst = max(view.rows, key=lambda r: r.max_logit_delta)
    changed = [r.precision for r in view.rows if int(r.top_ids[0]) != int(ref.top_ids[0])]
    lines.append("")
    if worst is ref:
        lines.append("Every precision gave exactly fp32's logits on this prompt.")
    else:
        lines.append(f"The largest logit change is **{worst.precision}**'s ({worst.max_logit_delta:.3g}). "
                     + (f"The most likely next token changes under {', '.join(changed)}."
                        if changed else "The most likely next token is the same under every precision."))
    for row in view.rows:
        if row.precision == "int8" and row.weight_bytes > ref.weight_bytes:
            lines.append("int8 needs *more* memory than fp32 here: the output head shares its matrix with the "
                         "token embedding, which dynamic quantisation keeps in fp32 for the lookups, so the "
                         "head's int8 copy comes on top (the embedding is most of this model's weights).")
    if any(len(r.top_probs) > 1 and r.top_probs[1] == r.top_probs[0] for r in view.rows):
        lines.append("An exact tie means the two logits rounded to the same number (bf16 keeps about 3 "
                     "significant digits): which of them counts as the top is then a coin toss of the order.")
    lines.append("Run times are one forward pass each, while other requests may be running; a precision's "
                 "first run also prepares its copy of the weights.")
    return "\n".join(lines)


def status_markdown(report: core.ErrorReport, precision: str, what: str, units: tuple[bool, str] | None) -> str:
    """The status line of a model served in ``precision``: its error against fp32 on ``what`` (a phrase
    naming the prompt), and, in bf16 on the CPU (``units``: gpt2core.kernels.backend.bf16_units()), how
    the products are computed there: by bf16 units, or, without them, with the operands rounded to bf16
    and multiplied in fp32 (GPT2_BF16 can force either)."""
    text = (f"**Precision:** {precision} matrix products (LayerNorm, softmax, GELU and the residual stream "
            f"stay fp32). Against fp32 on {what} ({report.n_tokens} tokens): max |Δ logit| "
            f"**{report.max_logit_delta:#.3g}**, top-1 agreement **{report.top1_agreement:.1%}**, "
            f"max |Δ attention weight| **{report.max_attention_delta:#.3g}**.")
    if units is not None and precision == "bf16":
        has_units, reason = units
        emulated = backend.bf16_emulated_with(has_units)
        if emulated:
            how = ("No bf16 units: operands rounded to bf16, multiplied in fp32" if not has_units else
                   "GPT2_BF16=emulate: operands rounded to bf16, multiplied in fp32")
            text += f" ⚙️ **{how}**: {reason}."
        elif has_units:
            text += f" ⚡ {reason}."
        else:
            text += (" ⚠️ **No bf16 units: torch emulates them, slower than fp32** (GPT2_BF16=native): "
                     f"{reason}.")
    return text
