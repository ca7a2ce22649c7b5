"""Open your own model: the checkpoint a student trained (LLMs-from-scratch, nanoGPT, minGPT, Hugging Face),
uploaded in the header, in this browser session's model menu.

An upload is hostile until proven not: it is read by gpt2core.reference.formats (torch.load with
weights_only=True, a plain-data unpickler for meta.pkl), it has a size limit, and its files are deleted as
soon as the model is loaded. The model is held here, by session, never on disk and never in another
session's menu: the session's gr.State keeps only a ticket (the session and the name). Bounded three ways:
``PER_SESSION`` models a session, ``session.OWN_TOTAL`` on the server (a new upload is refused beyond it, nobody's
model is dropped for it), and a model unused for ``session.OWN_IDLE_S`` seconds, or whose page was closed, is freed.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import gradio as gr

from gpt2core import WeightsError
from gpt2core.reference import formats, weights

from .components import File, OptionalNumber
from .errors import handle
from .inputs import InputError, check_number
from .session import ModelEntry, Ticket, unique_name

MAX_UPLOAD_MB = float(os.environ.get("GPT2_EXPLORER_MAX_UPLOAD_MB", "1600"))   # nanoGPT's 124M ckpt.pt is ~1.5 GB
MAX_PARAMS = 400_000_000       # a model held in memory per session: GPT-2 medium (355M) fits, large does not
PER_SESSION = 2                # models a browser session may have open; the oldest is closed for a new one
SUFFIX = " · yours"            # the menu names an uploaded model "<file> · yours"
CHECKPOINTS = formats.TORCH_SUFFIXES + (".safetensors",)
EXPLANATION = """Load the GPT-2 you trained and see inside it in every tab. Upload its checkpoint:
**LLMs-from-scratch** (`torch.save(model.state_dict(), "model.pth")`, or with `model_state_dict`),
**nanoGPT** (`out/ckpt.pt`), **minGPT** (its state dict), or a **Hugging Face** folder's `config.json` +
`model.safetensors`. Add what the file can't tell: the config it was built with as JSON (the notebook's
`GPT_CONFIG_124M`), or the number of heads below; for a character-level model, nanoGPT's `meta.pkl` (or the
training text). Files are read safely (no code in them runs), held for this browser session only and
never stored."""


def _sorted_files(paths: list[Path]) -> tuple[Path, Path | None, Path | None]:
    """(checkpoint, config JSON, vocabulary) among the uploaded files, by their names."""
    checkpoints = [p for p in paths if p.suffix.lower() in CHECKPOINTS]
    if len(checkpoints) != 1:
        raise InputError("Upload one checkpoint (.pth, .pt, .bin, .ckpt, or a Hugging Face model.safetensors with "
                         f"its config.json); got {len(checkpoints) or 'none'}"
                         f"{': ' + ', '.join(p.name for p in checkpoints) if checkpoints else ''}.")
    configs = [p for p in paths if p.suffix.lower() == ".json"]
    vocabs = [p for p in paths if p.suffix.lower() in (".pkl", ".txt")]
    others = [p.name for p in paths if p not in checkpoints + configs + vocabs]
    if others or len(configs) > 1 or len(vocabs) > 1:
        raise InputError("Upload one checkpoint, at most one config (.json) and at most one vocabulary (meta.pkl "
                         f"or the training .txt); got {', '.join(p.name for p in paths)}.")
    return checkpoints[0], (configs or [None])[0], (vocabs or [None])[0]


def load_upload(paths: list[Path], n_head=None, max_bytes: int | None = None) -> formats.Loaded:
    """The model in the uploaded files; a WeightsError or InputError says plainly what is wrong."""
    if not paths:
        raise InputError("Choose your checkpoint file first (and its config or meta.pkl where it needs one).")
    max_bytes = int(MAX_UPLOAD_MB * 1e6) if max_bytes is None else max_bytes
    for p in paths:
        if p.stat().st_size > max_bytes:
            raise InputError(f"{p.name}: {p.stat().st_size / 1e6:,.0f} MB is over this server's upload limit of "
                             f"{max_bytes / 1e6:,.0f} MB.")
    # An empty box arrives as 0 from the page, as None from the API: both mean "read it from the file".
    if n_head is not None:
        n_head = check_number(n_head, "Number of heads", 0, formats.LIMITS["n_head"], integer=True) or None
    checkpoint, config, vocab = _sorted_files(paths)
    if checkpoint.suffix.lower() == ".safetensors":        # a HF or gpt2core folder: both files, side by side
        if config is None:
            raise InputError("A .safetensors checkpoint needs its config.json: upload both.")
        with tempfile.TemporaryDirectory(prefix="gpt2-upload-") as folder:
            shutil.copy(checkpoint, Path(folder) / weights.WEIGHTS_FILE)
            shutil.copy(config, Path(folder) / weights.CONFIG_FILE)
            model = weights.load(folder)
            kind = "ours" if weights.read_metadata(folder).get("format") == weights.OWN_FORMAT else "hf"
        loaded = formats.Loaded(model, kind, [])
    else:
        loaded = formats.load_checkpoint(checkpoint, config=config, n_head=n_head, vocab=vocab, max_bytes=max_bytes)
    if loaded.model.num_params() > MAX_PARAMS:
        raise InputError(f"{checkpoint.name}: {loaded.model.num_params():,} parameters is more than this server "
                         f"holds per session ({MAX_PARAMS:,}).")
    return loaded


def _paths(files) -> list[Path]:
    return [Path(f) for f in files or []]          # the File component gives file paths (type="filepath")


def _shown(message: str, paths: list[Path]) -> str:
    """A message about an upload names the file, not the server's temporary folder."""
    for p in paths:
        message = message.replace(str(p), p.name)
    return message


def build(ctx) -> None:
    """The header's **Open your own model**: files, heads, a button, a status line; the model joins this
    session's menu (ctx.model_choice) and every tab uses it."""
    store = ctx.registry.own_models
    with gr.Accordion("Open your own model", open=False, elem_id="own-model"):
        gr.Markdown(EXPLANATION)
        with gr.Row():
            files = File(label="Checkpoint, and its config / meta.pkl where needed", file_count="multiple", type="filepath",
                            file_types=[*CHECKPOINTS, ".json", ".pkl", ".txt"], elem_id="own-files", scale=3)
            with gr.Column(scale=1):
                n_head = OptionalNumber(None, label="Number of heads (leave empty or 0 when the file or config says)",
                                   precision=0, minimum=0, maximum=formats.LIMITS["n_head"], elem_id="own-n-head")
                open_btn = gr.Button("Open", variant="primary", elem_id="own-open")
        status = gr.Markdown(elem_id="own-status")

    @handle
    def open_model(uploaded, heads, user_models, request: gr.Request):
        paths = _paths(uploaded)
        try:
            loaded = load_upload(paths, heads)
        except (WeightsError, InputError) as e:
            raise InputError(_shown(str(e), paths)) from None
        finally:
            for p in paths:        # read into memory, or refused: either way the upload leaves the disk now
                p.unlink(missing_ok=True)
        session = getattr(request, "session_hash", None) or "api"
        models = dict(user_models or {})
        name = unique_name(f"{_checkpoint_name(paths)}{SUFFIX}", {*models, *ctx.registry.names()})
        entry = ModelEntry(name, ctx.registry.prepare(loaded.model), f"your upload ({loaded.summary()})")
        ticket = Ticket(session, name)
        store.put(ticket, entry)
        models[name] = ticket
        closed = [n for n, v in models.items() if isinstance(v, Ticket)][:-PER_SESSION]
        for old in closed:
            store.drop(models.pop(old))
        notes = "; ".join(loaded.notes)
        note = f" To open it, {', '.join(closed)} was closed (at most {PER_SESSION} at once)." if closed else ""
        text = (f"✅ **{name}** is open in every tab (only in this browser session). Recognised: "
                f"{loaded.summary()}.{f' ({notes}.)' if notes else ''}{note}")
        # The files are gone from the server: the box is emptied, so it offers no dead download links.
        return models, text, gr.update(choices=ctx.registry.names() + list(models), value=name), None

    open_btn.click(open_model, [files, n_head, ctx.user_models], [ctx.user_models, status, ctx.model_choice, files],
                   api_name="open_model")

    def close_session(request: gr.Request):
        store.drop_session(getattr(request, "session_hash", None) or "")

    ctx.demo.unload(close_session)


def _checkpoint_name(paths: list[Path]) -> str:
    return next((p.name for p in paths if p.suffix.lower() in CHECKPOINTS), paths[0].name)
