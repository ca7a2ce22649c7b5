"""Which model a request uses.

Shared models (bundled checkpoint, ``--weights``, Hub downloads) are loaded once into the
ModelRegistry and only ever read. A user's own model (from the Train tab) lives in that user's
gr.State, so it is theirs alone. Every handler gets the model name from the request (the header
dropdown, or an API argument), never from module state, so one user's choice never moves another's.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt2core import GPT2, WeightsError, get_config, load
from gpt2core.reference import weights
from gpt2core.analysis.trace import DEFAULT_WEIGHTS

from .inputs import InputError

# ROOT holds assets/: the repo root in a checkout (or `pip install -e .`); a wheel has no repo root and
# carries assets/ as explorer/_bundled/assets (pyproject.toml). The model ships with gpt2core, which
# defaults to it too (python -m gpt2core.analysis.trace).
_HERE = Path(__file__).resolve().parent
ROOT = _HERE / "_bundled" if (_HERE / "_bundled").is_dir() else _HERE.parent
BUNDLED_DIR = DEFAULT_WEIGHTS
HUB_REPO = "openai-community/gpt2"
HUB_NAME = "gpt2 (OpenAI, from the Hub)"
RANDOM_NAME = "untrained (random tiny GPT-2)"
USER_PREFIX = "my trained model"


@dataclass
class ModelEntry:
    name: str
    model: GPT2
    source: str                # where the weights came from, in words
    trained: bool = True       # False: random weights, show the banner
    card: dict = field(default_factory=dict)


@dataclass
class HubDownload:
    """A GPT-2 download running in the background while the page already serves (cold start)."""
    fraction: float = 0.0
    message: str = "starting the download"
    state: str = "downloading"      # "downloading", then "ready" or "failed"
    error: str = ""


OWN_TOTAL = 8                 # uploaded models on the whole server at once (explorer.own_model)
OWN_IDLE_S = 3600.0           # an uploaded model nobody used for an hour is freed


@dataclass(frozen=True)
class Ticket:
    """What a session's gr.State holds for an uploaded model: the model itself lives in OwnModels."""
    session: str
    name: str


class OwnModels:
    """Uploaded models by (session, name), bounded (OWN_TOTAL on the server, OWN_IDLE_S unused). Thread-safe."""

    def __init__(self, total: int = OWN_TOTAL, idle_s: float = OWN_IDLE_S):
        self.total, self.idle_s = total, idle_s
        self._models: dict[Ticket, tuple[ModelEntry, float]] = {}   # ticket -> (entry, last used)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._models)

    def expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for ticket in [t for t, (_, used) in self._models.items() if now - used > self.idle_s]:
                del self._models[ticket]

    def put(self, ticket: Ticket, entry: ModelEntry) -> None:
        self.expire()
        with self._lock:
            if ticket not in self._models and len(self._models) >= self.total:
                raise InputError(f"The server holds {self.total} uploaded models now, its limit. Try again in a "
                                 f"while (a model is freed when its page closes or after an hour unused).")
            self._models[ticket] = (entry, time.monotonic())

    def get(self, ticket: Ticket) -> ModelEntry:
        with self._lock:
            held = self._models.get(ticket)
            if held is None:
                raise InputError(f"{ticket.name} was freed (its page was closed, or it went unused for an hour). "
                                 f"Open it again with **Open your own model**.")
            self._models[ticket] = (held[0], time.monotonic())
            return held[0]

    def drop(self, ticket: Ticket) -> None:
        with self._lock:
            self._models.pop(ticket, None)

    def drop_session(self, session: str) -> int:
        with self._lock:
            gone = [t for t in self._models if t.session == session]
            for t in gone:
                del self._models[t]
            return len(gone)


class ModelRegistry:
    """Shared, read-only models by name. Thread-safe; Hub models load on first request."""

    def __init__(self, device: torch.device | str = "cpu", precision: str = "fp32"):
        self._entries: dict[str, ModelEntry] = {}
        self.precision = precision   # the served models' matrix products (--dtype; gpt2core.kernels.backend)
        self._lock = threading.Lock()
        self._download_lock = threading.Lock()
        self.default: str | None = None
        self.hub_enabled = True
        self.startup_notice = ""
        self.device = torch.device(device)
        self.hub_download: HubDownload | None = None   # set while GPT-2 downloads in the background
        self.hub_thread: threading.Thread | None = None
        self.own_models = OwnModels()   # the models users uploaded, by browser session (explorer.own_model)

    def prepare(self, model: GPT2) -> GPT2:
        """A model as this server serves it: on its device, in eval mode, at its precision, read-only."""
        model.to(self.device).eval()
        model.precision = self.precision
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def add(self, entry: ModelEntry, default: bool = False) -> ModelEntry:
        self.prepare(entry.model)
        with self._lock:
            self._entries[entry.name] = entry
            if default or self.default is None:
                self.default = entry.name
        return entry

    def names(self) -> list[str]:
        names = list(self._entries)
        if self.hub_enabled and HUB_NAME not in names:
            names.append(HUB_NAME)
        return names

    def choices(self) -> list[tuple[str, str]]:
        """(label, name) for the model menu: GPT-2's label says whether it is on this machine."""
        return [(self.hub_label() if name == HUB_NAME else name, name) for name in self.names()]

    def hub_label(self) -> str:
        if HUB_NAME in self._entries:
            return f"{HUB_NAME} · loaded"
        download = self.hub_download
        if download is not None and download.state == "downloading":
            return f"{HUB_NAME} · downloading, {download.fraction:.0%}"
        if weights.cached_hf(HUB_REPO) is not None:
            return f"{HUB_NAME} · cached on this machine"
        return f"{HUB_NAME} · not on this machine: downloads from the Hub"

    def get(self, name: str | None, user_models: dict | None = None, progress=None) -> ModelEntry:
        name = name or self.default
        if not isinstance(name, str):
            raise InputError(f"The model must be given by its name (text), got {type(name).__name__}. "
                             f"Choose one of: {', '.join(self.names())}.")
        if user_models and name in user_models:
            held = user_models[name]
            # An uploaded model: the session holds a ticket, the model is in own_models (explorer.own_model).
            return held if isinstance(held, ModelEntry) else self.own_models.get(held)
        if name in self._entries:
            return self._entries[name]
        if name == HUB_NAME and self.hub_enabled:
            return self.load_hub(progress)
        shown = repr(name) if len(name) <= 80 else repr(name[:60]) + f"… ({len(name):,} characters)"
        raise InputError(f"Unknown model {shown}. Choose one of: {', '.join(self.names())}.")

    def load_hub(self, progress=None) -> ModelEntry:
        """OpenAI's GPT-2 (124M) on request: from the local HF cache when it is there (no network),
        else downloaded from the Hub; a plain InputError when neither works."""
        download = self.hub_download
        if download is not None and download.state == "downloading" and HUB_NAME not in self._entries:
            # Don't hold a request for minutes behind the background download: say where it is.
            raise InputError(f"GPT-2 is still downloading ({download.fraction:.0%}: {download.message}). "
                             f"The other models work meanwhile; choose GPT-2 again when the notice says it is ready.")
        # One download at a time: a second request waits for the first instead of fetching again.
        with self._download_lock:
            with self._lock:
                if HUB_NAME in self._entries:
                    return self._entries[HUB_NAME]
            cached = weights.cached_hf(HUB_REPO)
            if cached and progress:
                progress(1.0, f"{HUB_REPO} found in the local Hugging Face cache ({cached}); loading it")
            try:
                folder = cached or weights.download_hf(HUB_REPO, progress=progress)
                model = weights.load_hf(folder)
            except WeightsError as e:
                raise InputError(f"Could not load GPT-2 from the Hugging Face Hub: {e}. "
                                 f"This machine may be offline; the other models still work.") from None
            source = (f"the local Hugging Face cache ({folder}), no network used" if cached else
                      f"Hugging Face Hub: {HUB_REPO}, downloaded into the local cache")
            return self.add(ModelEntry(HUB_NAME, model, f"{source} (OpenAI's GPT-2 124M)"))

    def start_hub_download(self, progress=None) -> threading.Thread:
        """Cold start: fetch GPT-2 in a background thread while the page serves the other models; when it
        is ready it becomes the default. Progress and failure are in ``self.hub_download``; ``progress``
        (fraction, message) hears the outcome (the bytes go to the client's own progress bar)."""
        download = self.hub_download = HubDownload()

        def report(fraction, message):
            download.fraction, download.message = float(fraction), message

        def run():
            try:
                with self._download_lock:
                    model = weights.load_hf(weights.download_hf(HUB_REPO, progress=report))
                    self.add(ModelEntry(HUB_NAME, model, f"Hugging Face Hub: {HUB_REPO}, downloaded into the "
                                                         "local cache at start-up (OpenAI's GPT-2 124M)"),
                             default=True)
                download.state, download.fraction, download.message = "ready", 1.0, "GPT-2 is ready"
            except WeightsError as e:
                download.state, download.error = "failed", str(e)
            except Exception as e:  # noqa: BLE001 - a thread's error would otherwise vanish unseen
                download.state, download.error = "failed", f"{type(e).__name__}: {e}"
            if progress:
                progress(download.fraction, "GPT-2 is ready and is now the default model" if download.state == "ready"
                         else f"GPT-2 could not be downloaded: {download.error}; serving {self.default}")

        thread = self.hub_thread = threading.Thread(target=run, name="gpt2-download", daemon=True)
        thread.start()
        return thread


def resolve_device(name: str) -> torch.device:
    """--device auto|cpu|cuda as training reads it: auto takes CUDA when there is one; cuda where there is
    none is a ValueError with a plain message (the app stops at start-up with it)."""
    from gpt2core.training.train import resolve_device as train_resolve_device
    return train_resolve_device(name)


def device_label(device: torch.device) -> str:
    from gpt2core.training.train import device_label as train_device_label
    return train_device_label(device)


def random_model(seed: int = 0) -> GPT2:
    torch.manual_seed(seed)
    return GPT2(get_config("tiny", n_layer=4, n_embd=128, n_ctx=256))


def unique_name(base: str, taken) -> str:
    """``base``, or ``base #2``, ``base #3``... : the first not in ``taken``."""
    name, k = base, 2
    while name in taken:
        name, k = f"{base} #{k}", k + 1
    return name


def describe_source(path: Path, shown: str | None = None) -> str:
    """Where the weights came from, in words; ``shown`` replaces the path in the text."""
    doc = weights.read_metadata(path.parent if path.is_file() else path)
    if doc.get("format") == weights.OWN_FORMAT:
        steps = doc.get("step")
        return f"{shown or path} (gpt2core checkpoint{f', {steps} training steps' if steps else ''})"
    return f"{shown or path} (Hugging Face GPT-2 checkpoint)"


def build_registry(weights_arg: str | None = None, progress=None, device: torch.device | str = "cpu",
                   background_download: bool = False, precision: str = "fp32", config: str | None = None,
                   n_head: int | None = None) -> ModelRegistry:
    """The models this process serves: bundled (or random), plus ``--weights``; Hub on a Space.

    GPT-2 from the local HF cache loads at once. When it must be downloaded and ``background_download``
    is set (the app), the download runs in a thread and the bundled model serves until it is ready.
    ``precision`` (``--dtype``): the served models' matrix products, fp32 (exact, the default), bf16,
    fp16 or int8 (gpt2core.kernels.backend); each model gets it as ``model.precision``. ``config`` and
    ``n_head`` (--config, --n-head) tell what a ``.pth`` of a from-scratch course can't (gpt2core.reference.formats)."""
    from gpt2core.kernels import backend
    if precision not in backend.PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(backend.PRECISIONS)}, got {precision!r}")
    registry = ModelRegistry(device, precision)
    if (BUNDLED_DIR / weights.WEIGHTS_FILE).is_file():
        doc = weights.read_metadata(BUNDLED_DIR)
        registry.add(ModelEntry(doc.get("display_name", "shakespeare (bundled)"), load(BUNDLED_DIR),
                                describe_source(BUNDLED_DIR, "checkpoints/shakespeare, bundled with the app"),
                                card=doc))
    else:
        registry.add(ModelEntry(RANDOM_NAME, random_model(), "random initialisation (seed 0), untrained",
                                trained=False))
    if weights_arg in ("gpt2", HUB_REPO) or (weights_arg is None and os.environ.get("SPACE_ID")):
        if background_download and weights.cached_hf(HUB_REPO) is None:
            registry.start_hub_download(progress)
            return registry
        try:
            registry.default = registry.load_hub(progress).name
        except InputError as e:
            registry.startup_notice = str(e)
    elif weights_arg:
        path = Path(weights_arg)
        try:
            if path.is_file() and path.suffix in weights.TORCH_SUFFIXES:   # a course's model.pth / ckpt.pt
                from gpt2core.reference import formats
                loaded = formats.load_checkpoint(path, config=config, n_head=n_head)
                entry = ModelEntry(path.name, loaded.model, f"{path} ({loaded.summary()})")
            else:
                folder = path.parent if path.is_file() else path   # --weights may name a file of the folder
                entry = ModelEntry(folder.name or str(folder), load(path), describe_source(path))
            registry.add(entry, default=True)
        except WeightsError as e:
            registry.startup_notice = f"Could not load --weights {weights_arg}: {e}"
    return registry
