"""Checking what users (and API callers) send, with plain messages. No gradio import here.

Handlers raise InputError for bad input; ``explorer.errors.handle`` turns it into a gr.Error,
which the UI shows as a message and gradio_client raises as a clean exception.
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field

from gpt2core.text import tokenizer

MAX_PROMPT_CHARS = 20_000     # longer text is cut before tokenizing
MAX_PROMPT_TOKENS = 512       # the most tokens any request runs through the model
MAX_VIEW_TOKENS = 128         # analysis views (attention grids, LayerNorm tables) draw at most this many
MAX_NEW_TOKENS = 200          # generation length cap per request


class InputError(ValueError):
    """Bad input: the message is shown to the user as is."""


@dataclass
class Prompt:
    text: str                      # the cleaned text that was tokenized
    ids: list[int]                 # at most the limit given to prepare_prompt
    notices: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> list[str]:
        """Printable token strings, for axis labels and hover text."""
        return [tokenizer.printable(tokenizer.token_bytes(i)) for i in self.ids]

    def notice_markdown(self) -> str:
        return "\n".join(f"ⓘ {n}" for n in self.notices)


def _strip_controls(text: str) -> tuple[str, int]:
    """Drop control characters other than newline and tab (NUL, escape codes, ...)."""
    kept = [ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc"]
    return "".join(kept), len(text) - len(kept)


def prepare_prompt(text, max_tokens: int = MAX_PROMPT_TOKENS, keep: str = "end") -> Prompt:
    """Validate and tokenize a prompt. ``keep`` says which end survives cropping ("end" or "start")."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InputError(f"The prompt must be text, not {type(text).__name__}.")
    notices = []
    if len(text) > MAX_PROMPT_CHARS:
        text = text[:MAX_PROMPT_CHARS] if keep == "start" else text[-MAX_PROMPT_CHARS:]
        notices.append(f"The prompt was cut to {MAX_PROMPT_CHARS:,} characters.")
    cleaned = tokenizer.clean_text(text)
    if cleaned != text:
        notices.append("Unpaired UTF-16 surrogates were replaced with U+FFFD (they are not valid text).")
    cleaned, n_controls = _strip_controls(cleaned)
    if n_controls:
        notices.append(f"{n_controls} control character{'s' if n_controls > 1 else ''} "
                       f"(such as NUL or escape codes) {'were' if n_controls > 1 else 'was'} removed.")
    own = tokenizer.active()
    if own is not None:         # a character model: characters it has never seen can't be tokens
        missing = own.unknown(cleaned)
        if missing:
            cleaned = "".join(c for c in cleaned if c in own.stoi)
            shown = ", ".join(repr(c) for c in missing[:8]) + ("…" if len(missing) > 8 else "")
            notices.append(f"{len(missing)} character{'s' if len(missing) > 1 else ''} not in this model's vocabulary "
                           f"of {own.n_vocab} {'were' if len(missing) > 1 else 'was'} left out: {shown}.")
    if not cleaned.strip():
        raise InputError("The prompt is empty: type some text first." if own is None or not text.strip() else
                         f"None of the prompt's characters is in this model's vocabulary of {own.n_vocab} characters.")
    if own is None and tokenizer.EOT in cleaned:
        notices.append(f"`{tokenizer.EOT}` was read as plain text (several ordinary tokens), "
                       f"not as GPT-2's special end-of-text token {tokenizer.EOT_ID}.")
    ids = tokenizer.encode(cleaned)
    if len(ids) > max_tokens:
        n = len(ids)
        ids = ids[:max_tokens] if keep == "start" else ids[-max_tokens:]
        where = "first" if keep == "start" else "last"
        notices.append(f"The prompt has {n:,} tokens; only the {where} {max_tokens:,} are used here.")
        cleaned = tokenizer.decode(ids)
    return Prompt(cleaned, ids, notices)


def fmt_number(x) -> str:
    """Whole numbers in full (2147483648, not 2.14748e+09, which reads like the maximum); others with :g."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_number(value, name: str, lo: float | None, hi: float | None, integer: bool = False):
    """A number in [lo, hi] (ints when ``integer``; None: no bound), else InputError naming the control."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InputError(f"{name} must be a number, got {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number, got {'nothing' if value is None else type(value).__name__}.")
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}.")
    if integer:
        if value != int(value):
            raise InputError(f"{name} must be a whole number, got {value}.")
        value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        allowed = (f"between {fmt_number(lo)} and {fmt_number(hi)}" if lo is not None and hi is not None
                   else f"at least {fmt_number(lo)}" if lo is not None else f"at most {fmt_number(hi)}")
        raise InputError(f"{name} must be {allowed}, got {fmt_number(value)}.")
    return value


def check_position(value, T: int, name: str = "Position") -> int:
    """A prompt position in 0..T-1; -1 (or nothing) means the last token. ``name`` names the control."""
    if value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value == -1):
        return T - 1
    return check_number(value, f"{name} (this prompt has {T} tokens; -1 = last)", 0, T - 1, integer=True)
