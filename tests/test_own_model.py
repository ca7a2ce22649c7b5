"""Open your own model in the app: the upload endpoint, per-session models, the limits, and a character-level
nanoGPT model through every endpoint that takes a model (gradio_client)."""
import time

import pytest
import torch

import gpt2core as g
from explorer import own_model
from explorer.inputs import InputError
from explorer.session import OwnModels, Ticket, ModelEntry
from gpt2core import WeightsError
from gpt2core.text import tokenizer
from tests import upstream_gpt as up

CHARS = sorted(set("First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n"
                   "You are all resolved rather to die than to famish?\nWHAT'S;-!&$3?bgjkqvxzBCDGHJKLMNOPQRSUVXYZ"))
PROMPT = "First Citizen:\nBefore we proceed"


def nanogpt_char_checkpoint(folder, n_embd=48, n_head=3, n_layer=2, block_size=64, seed=0):
    """A character-level nanoGPT model saved as its shakespeare_char run saves one: ckpt.pt (torch.compile's
    prefix included) and meta.pkl, written by the upstream class and savers of tests/upstream_gpt.py."""
    args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=True,
                vocab_size=len(CHARS), dropout=0.0)
    torch.manual_seed(seed)
    model = up.NanoGPT(up.NanoGPTConfig(**args)).eval()
    up.save_nanogpt_ckpt(model, torch.optim.AdamW(model.parameters()), args, folder / "ckpt.pt", compiled_prefix=True)
    up.save_nanogpt_meta(folder / "meta.pkl", CHARS)
    return model, folder / "ckpt.pt", folder / "meta.pkl"


@pytest.fixture(scope="module")
def char_files(tmp_path_factory):
    return nanogpt_char_checkpoint(tmp_path_factory.mktemp("char"))


@pytest.fixture(scope="module")
def char_client(app_url, char_files):
    """A browser session of its own that opened the character model."""
    from gradio_client import Client, handle_file
    client = Client(app_url, verbose=False)
    _, ckpt, meta = char_files
    status, menu, emptied = client.predict([handle_file(str(ckpt)), handle_file(str(meta))], None, api_name="/open_model")
    assert emptied is None          # the upload box offers no link to the deleted files
    return client, status, menu


def test_the_upload_is_recognised_and_joins_this_session_only(char_client, client):
    own, status, menu = char_client
    name = f"ckpt.pt{own_model.SUFFIX}"
    assert f"**{name}** is open in every tab" in status
    assert "nanoGPT checkpoint: 2 layers, 3 heads, width 48, context 64" in status
    assert f"vocabulary: {len(CHARS)} characters" in status and "exact GELU" in status
    assert menu["value"] == name and [name, name] in menu["choices"]
    source, *_ = own.predict(name, api_name="/model_info")
    assert "your upload" in source
    with pytest.raises(Exception, match="Unknown model"):          # another session never sees it
        client.predict(name, api_name="/model_info")


# The API's defaults are GPT-2's; these fit the character model (one character per token, context 64).
CHAR_ARGS = {"/embeddings_neighbours": {"token_v": "e"}, "/embeddings_projection": {"words_v": "a, e, i, o, u"},
             "/circuits_patch": {"clean_v": "All:\nSpeak", "corrupt_v": "All:\nSpeck", "answer_v": ",", "wrong_v": "."}}
FAST = {"New tokens": 4, "New tokens (beam search)": 4, "Number of draws": 50, "Query token (position)": -1,
        "Token to follow (position)": -1, "Heads to knock out (layer.head, e.g. 0.1, 3.2)": "0.0"}


MODEL_LABELS = ("Model", "Model A", "Model B", "Model name")


def model_endpoints(app):
    info = app.get_api_info()["named_endpoints"]
    return {api: e["parameters"] for api, e in info.items()
            if any(p["label"] in MODEL_LABELS for p in e["parameters"])}


def test_a_character_model_through_every_endpoint(app, char_client, char_files):
    """Every endpoint that takes a model answers for the character model, and what it shows in tokens is
    characters of its vocabulary (no GPT-2 token ever reaches it: an id past 45 would fail its embedding)."""
    own, *_ = char_client
    name = f"ckpt.pt{own_model.SUFFIX}"
    failures, shown = {}, {}
    for api, params in model_endpoints(app).items():
        args = []
        for p in params:
            value = CHAR_ARGS.get(api, {}).get(p["parameter_name"])
            if value is None:
                value = name if p["label"] in MODEL_LABELS else PROMPT if p["label"] == "Prompt" \
                    else FAST.get(p["label"], p["parameter_default"])
            args.append(value)
        try:
            shown[api] = own.predict(*args, api_name=api)
        except Exception as e:  # noqa: BLE001 - collected, asserted below
            failures[api] = str(e)[:300]
    assert not failures, failures
    assert len(shown) >= 27, sorted(shown)
    chips = shown["/tokenizer_breakdown"][0]
    assert "Citizen" not in chips and all(f">{c}<" in chips for c in "Citzn")   # one chip per character
    merges_md = shown["/tokenizer_merges"][1]
    assert "has no merges to show" in merges_md and f"{len(CHARS)} characters" in merges_md
    html, info = shown["/generate"][1], shown["/generate"][-1]    # the text so far, the run in numbers
    assert "Before we proceed" in html and f"**{FAST['New tokens']}** new tokens" in info


def test_gpt2_tokens_come_back_after_a_character_request(char_client, client):
    """The tokenizer is the request's: a character model's request leaves the next GPT-2 request's tokens as
    GPT-2's (both sessions, the same server threads)."""
    own, *_ = char_client
    name = f"ckpt.pt{own_model.SUFFIX}"
    own.predict("Hello world", name, api_name="/tokenizer_breakdown")
    chips = client.predict("Hello world", None, api_name="/tokenizer_breakdown")[0]
    assert "Hello" in chips and "world" in chips
    assert tokenizer.active() is None


def test_characters_outside_the_vocabulary_are_left_out_with_a_notice(char_client):
    own, *_ = char_client
    notice = own.predict("Speak 7 times, @all", f"ckpt.pt{own_model.SUFFIX}", api_name="/tokenizer_breakdown")[-1]
    assert "2 characters not in this model's vocabulary" in notice and "'7'" in notice and "'@'" in notice


def test_an_upload_that_is_not_a_model_is_a_plain_error_and_leaves_no_file(app_url, tmp_path):
    from gradio_client import Client, handle_file
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(Exception, match="not a (readable )?PyTorch checkpoint") as info:
        Client(app_url, verbose=False).predict([handle_file(str(bad))], None, api_name="/open_model")
    assert str(tmp_path) not in str(info.value) and "model.pth" in str(info.value)


def test_load_upload_limits(tmp_path, char_files):
    _, ckpt, meta = char_files
    with pytest.raises(InputError, match="over this server's upload limit"):
        own_model.load_upload([ckpt], max_bytes=1000)
    with pytest.raises(InputError, match="one checkpoint"):
        own_model.load_upload([meta])
    with pytest.raises(InputError, match="Number of heads must be"):
        own_model.load_upload([ckpt, meta], n_head=-1)
    with pytest.raises(WeightsError, match="5 heads do not divide the width 48"):
        own_model.load_upload([ckpt, meta], n_head=5)
    with pytest.raises(InputError, match="Choose your checkpoint"):
        own_model.load_upload([])
    loaded = own_model.load_upload([ckpt, meta])
    assert loaded.model.tokenizer.n_vocab == len(CHARS)


def test_own_models_are_bounded_by_count_and_idle_time():
    store = OwnModels(total=2, idle_s=60)
    entry = ModelEntry("m", g.GPT2(g.get_config("tiny")), "test")
    a, b, c = Ticket("s1", "a"), Ticket("s1", "b"), Ticket("s2", "c")
    store.put(a, entry)
    store.put(b, entry)
    with pytest.raises(InputError, match="holds 2 uploaded models"):
        store.put(c, entry)
    assert store.drop_session("s1") == 2 and len(store) == 0
    store.put(c, entry)
    store.expire(now=time.monotonic() + 61)
    with pytest.raises(InputError, match="was freed"):
        store.get(c)


def test_a_session_keeps_two_uploads_the_oldest_closes(app_url, char_files, client):
    from gradio_client import Client, handle_file
    own = Client(app_url, verbose=False)
    _, ckpt, meta = char_files
    names = [own.predict([handle_file(str(ckpt)), handle_file(str(meta))], None, api_name="/open_model")[1]["value"]
             for _ in range(3)]
    assert names == [f"ckpt.pt{own_model.SUFFIX}", f"ckpt.pt{own_model.SUFFIX} #2", f"ckpt.pt{own_model.SUFFIX} #3"]
    with pytest.raises(Exception, match="Unknown model"):
        own.predict(names[0], api_name="/model_info")
    assert "your upload" in own.predict(names[2], api_name="/model_info")[0]


def test_the_gelu_tab_says_a_nanogpt_model_uses_the_exact_gelu(char_client):
    own, *_ = char_client
    summary = own.predict(PROMPT, 0, False, f"ckpt.pt{own_model.SUFFIX}", api_name="/gelu_view")[2]
    assert "exact GELU" in summary


def test_an_app_serving_a_char_model_by_default_builds(char_files):
    """python app.py --weights ckpt.pt (meta.pkl beside it): the tabs' build reads the default model (slider
    ranges) and must not make its characters the build's tokenizer (the Train tab's data is GPT-2's BPE)."""
    from explorer.app import build_app
    from explorer.session import build_registry
    _, ckpt, _ = char_files
    registry = build_registry(weights_arg=str(ckpt))
    assert registry.default == "ckpt.pt" and registry.get("ckpt.pt").model.tokenizer.n_vocab == len(CHARS)
    build_app(registry)
    assert tokenizer.active() is None
