"""Helpers shared by the reliability tests (issue 6): message checks, raw HTTP calls, a socket guard."""
from __future__ import annotations

import html
import json
import re
import socket
import time

# ---- what a clean error looks like ---------------------------------------------------------------

# Markers of an error that was not turned into a message for people.
UNCLEAN_MARKERS = (
    "upstream Gradio app has raised an exception",   # gradio's text for any non-gr.Error exception
    "Traceback (most recent call last)",
    "Something went wrong on the server",            # explorer.errors.handle's catch-all: an unexpected exception
    "validation error for",                          # a pydantic ValidationError dump
    "errors.pydantic.dev",
)
EXCEPTION_REPR = re.compile(r"<class '|\b\w*(?:Error|Exception)\(|^\s*\w+(?:Error|Exception)\s*:")
MAX_MESSAGE_CHARS = 600


def message_problem(message) -> str | None:
    """None when ``message`` is a short human sentence; else what is wrong with it."""
    if not isinstance(message, str) or not message.strip():
        return f"no message ({message!r})"
    for marker in UNCLEAN_MARKERS:
        if marker in message:
            return f"contains {marker!r}"
    if EXCEPTION_REPR.search(message):
        return "looks like a Python exception repr"
    if len(message) > MAX_MESSAGE_CHARS:
        return f"is {len(message):,} characters long (echoes the input?)"
    if not re.search(r"[A-Za-z]{2,}\s+[A-Za-z]{2,}", message):
        return "is not a sentence"
    return None


def visible_text(markup: str) -> str:
    """What a browser shows of an HTML string: tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def strings_in(value) -> list[str]:
    """Every string inside a (nested) gradio_client result."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in strings_in(v)]
    return []


def make_client(url: str):
    """A gradio_client.Client for a loopback app. ssl_verify=False: the app is plain http, and gradio_client
    would otherwise build an SSL context (loading every CA certificate) for each request, which costs
    more CPU than most requests themselves."""
    from gradio_client import Client
    return Client(url, verbose=False, ssl_verify=False)


# ---- raw HTTP: for what gradio_client can't send (NaN literals, lone surrogates) -------------------

def raw_call(base_url: str, api_name: str, body: str, timeout: float = 60.0) -> tuple[str, object]:
    """POST ``body`` (JSON text, sent as is) to /gradio_api/call/<api_name> and read the result stream.

    Returns ("complete", data), ("error", message) or ("http", "<status> <text>") for a refused request.
    """
    import httpx

    base = base_url.rstrip("/")
    name = api_name.lstrip("/")
    with httpx.Client(timeout=timeout, verify=False) as http:   # plain http on loopback; skips loading CA certs
        posted = http.post(f"{base}/gradio_api/call/{name}", content=body.encode("utf-8"),
                           headers={"content-type": "application/json"})
        if posted.status_code != 200:
            return "http", f"{posted.status_code} {posted.text[:300]}"
        event_id = posted.json()["event_id"]
        event, last = None, ("error", None)
        with http.stream("GET", f"{base}/gradio_api/call/{name}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    data = json.loads(line.split(":", 1)[1])
                    if event == "complete":
                        return "complete", data
                    message = data.get("error") if isinstance(data, dict) else data
                    return "error", message
    return last


def raw_body(values: list) -> str:
    """A /call/ request body; NaN/Infinity become JSON literals, lone surrogates \\uXXXX escapes."""
    return json.dumps({"data": values}, ensure_ascii=True, allow_nan=True)


# ---- sockets -------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float, proc=None) -> float | None:
    """Poll ``url`` until it answers 200; seconds waited, or None at the timeout (or if proc exits)."""
    import urllib.error
    import urllib.request

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.25)
    return None


# The guard, as source: the in-process fixture execs it, and the subprocess test writes it into a
# sitecustomize.py so that it is installed before the app imports anything.
SOCKET_GUARD_SOURCE = r'''
import ipaddress
import socket

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def is_loopback_host(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).split("%")[0].strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def is_local_address(address) -> bool:
    """A loopback (host, port[, ...]) tuple, or a unix-socket path (local IPC, not the network)."""
    if isinstance(address, (str, bytes)):
        return True
    return isinstance(address, tuple) and bool(address) and is_loopback_host(address[0])


def make_guard(record):
    """Replacements for socket functions that refuse (and record) every non-loopback connection."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_create_connection = socket.create_connection
    real_getaddrinfo = socket.getaddrinfo

    def refuse(kind, address):
        record(f"{kind} {address!r}")
        return ConnectionRefusedError(f"network blocked by the test: {kind} {address!r}")

    def connect(self, address):
        if not is_local_address(address):
            raise refuse("connect", address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if not is_local_address(address):
            refuse("connect_ex", address)
            return 111  # ECONNREFUSED
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        if not is_local_address(address):
            raise refuse("create_connection", address)
        return real_create_connection(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not is_loopback_host(host) and host not in ("", "0.0.0.0", "::"):
            raise socket.gaierror(socket.EAI_NONAME, str(refuse("getaddrinfo", host)))
        return real_getaddrinfo(host, *args, **kwargs)

    return {"connect": connect, "connect_ex": connect_ex, "create_connection": create_connection,
            "getaddrinfo": getaddrinfo}


def install(record):
    """Patch the socket module for the rest of this process."""
    guard = make_guard(record)
    socket.socket.connect = guard["connect"]
    socket.socket.connect_ex = guard["connect_ex"]
    socket.create_connection = guard["create_connection"]
    socket.getaddrinfo = guard["getaddrinfo"]
'''

SITECUSTOMIZE_TEMPLATE = SOCKET_GUARD_SOURCE + r'''

def _record_to_file(line, _path=__RECORD_PATH__):
    with open(_path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


install(_record_to_file)
'''


def sitecustomize_source(record_path) -> str:
    """A sitecustomize.py that installs the guard and appends each refused attempt to record_path."""
    return SITECUSTOMIZE_TEMPLATE.replace("__RECORD_PATH__", repr(str(record_path)))


def guard_namespace() -> dict:
    namespace: dict = {}
    exec(compile(SOCKET_GUARD_SOURCE, "<socket guard>", "exec"), namespace)
    return namespace
