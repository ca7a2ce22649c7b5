"""Reliability (issue 6): 20 users at once get exactly what each would get alone.

A module fixture serves the app with two shared models (the default one and a second tiny model with
other weights), then
1. runs each user's 10 requests alone, one user after the other (the expected results), and
2. runs all 20 users at once (each its own gradio_client.Client, released together by a barrier),
   while one more client checks that a tiny request still gets an answer.
Each user has its own prompt, settings, seeds and model; some users also send a request naming a model
that does not exist (a clean error is the expected result). Everything is compared exactly: the plots,
the generated text and the draws, so cross-talk of captures, random state or model choice shows up.
Loopback only; no timing is asserted except the liveness bound (60 s) and the overall timeout.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
import torch

from explorer.app import build_app
from explorer.session import ModelEntry, build_registry
from gpt2core import GPT2, get_config
from tests.reliability_util import make_client, message_problem, visible_text

pytestmark = pytest.mark.slow

N_USERS = 20
SECOND = "second (tiny preset, seed 1)"
BAD_MODEL = "no-such-model (concurrency test)"
REQUEST_TIMEOUT = 90          # s, one request (a hang fails the request, not the whole run)
ALONE_TIMEOUT = 300           # s, the whole single-user phase
LOAD_TIMEOUT = 240            # s, the whole concurrent phase
LIVENESS_BOUND = 60           # s, the tiny request made during the load
WORDS = ["apple", "river", "castle", "lantern", "violin", "harbour", "meadow", "copper", "falcon", "garden",
         "thunder", "pebble", "orchard", "saddle", "comet", "willow", "anchor", "biscuit", "glacier", "puzzle"]


@dataclass(frozen=True)
class Request:
    kind: str             # what the request is, for messages ("generate", "draws", ...)
    api_name: str
    args: tuple
    expect_error: bool = False


@dataclass
class Outcome:
    status: str           # "ok", "error" (a message from the app) or "failure" (timeout, crash, client error)
    value: object
    seconds: float = 0.0


@dataclass
class LoadRun:
    plans: dict[int, list[Request]]
    alone: dict[int, list[Outcome]]
    together: dict[int, list[Outcome]] = field(default_factory=dict)
    alone_seconds: float = 0.0
    together_seconds: float = 0.0
    finished: bool = False
    liveness: Outcome | None = None
    in_flight_at_liveness: int = 0


def user_plan(i: int, registry) -> list[Request]:
    """User i's 10 requests: own prompt, own settings and seeds; every third user uses the second model."""
    model = SECOND if i % 3 == 1 else registry.default
    cfg = registry.get(model).model.config
    prompt = f"The {WORDS[i]} and the {WORDS[(7 * i + 3) % N_USERS]} met near the {WORDS[(3 * i + 1) % N_USERS]}"
    temp = round(0.5 + 0.05 * i, 2)
    top_k = (0, 5, 20, 50)[i % 4]
    top_p = (1.0, 0.9, 0.8)[i % 3]
    seed = 1000 + 17 * i
    n_new = 3 + i % 3
    layer, head = i % cfg.n_layer, (i // 2) % cfg.n_head
    sampling = (prompt, temp, top_k, top_p, 10)
    plan = [
        Request("attention", "/attention_view", (prompt, layer, head, -1, False, model)),
        Request("distribution", "/sampling_distribution", (*sampling, model)),
        Request("draws", "/sampling_draws", (*sampling, 100, seed, model)),
        Request("generate", "/generate", (prompt, temp, top_k, top_p, n_new, seed, model)),
        Request("attention-scores", "/attention_view", (prompt, (layer + 1) % cfg.n_layer, head, 2, True, model)),
        Request("draws-other-seed", "/sampling_draws", (*sampling, 100, seed + 1, model)),
        Request("generate-other-seed", "/generate", (prompt, temp, top_k, top_p, n_new, seed + 1, model)),
        Request("distribution-greedy", "/sampling_distribution", (prompt, 0, 0, 1.0, 10, model)),
        Request("generate-again", "/generate", (prompt, temp, top_k, top_p, n_new, seed, model)),
    ]
    if i % 4 == 3:   # five users also ask for a model that does not exist
        api = ("/attention_view", "/sampling_draws", "/generate", "/sampling_distribution", "/attention_view")[i // 4]
        args = {"/attention_view": (prompt, 0, 0, -1, False, BAD_MODEL),
                "/sampling_draws": (*sampling, 100, seed, BAD_MODEL),
                "/generate": (prompt, temp, top_k, top_p, n_new, seed, BAD_MODEL),
                "/sampling_distribution": (*sampling, BAD_MODEL)}[api]
        plan.insert(5, Request("unknown-model", api, args, expect_error=True))
    else:
        plan.insert(5, Request("attention-first-token", "/attention_view", (prompt, 0, head, 0, False, model)))
    assert len(plan) == 10
    return plan


def run_request(client, request: Request) -> Outcome:
    from gradio_client.exceptions import AppError

    start = time.monotonic()
    try:
        value = client.submit(*request.args, api_name=request.api_name).result(timeout=REQUEST_TIMEOUT)
        return Outcome("ok", value, time.monotonic() - start)
    except AppError as e:
        return Outcome("error", str(e), time.monotonic() - start)
    except Exception as e:  # noqa: BLE001 - a timeout or a broken connection is a failed request
        return Outcome("failure", f"{type(e).__name__}: {e}", time.monotonic() - start)


@pytest.fixture(scope="module")
def two_model_app():
    registry = build_registry()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        second = GPT2(get_config("tiny"))
    registry.add(ModelEntry(SECOND, second, "test: the tiny preset with seed 1"))
    demo = build_app(registry)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield registry, demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def load_run(two_model_app) -> LoadRun:
    registry, url = two_model_app
    plans = {i: user_plan(i, registry) for i in range(N_USERS)}

    # 1. Alone: one user after the other, each with its own client (its own session).
    start = time.monotonic()
    alone = {}
    for i, plan in plans.items():
        client = make_client(url)
        alone[i] = [run_request(client, r) if time.monotonic() - start < ALONE_TIMEOUT
                    else Outcome("failure", f"not sent: the single-user phase passed {ALONE_TIMEOUT} s")
                    for r in plan]
    run = LoadRun(plans, alone, alone_seconds=time.monotonic() - start)

    # 2. Together: fresh clients (fresh sessions), all released at once by a barrier.
    clients = {i: make_client(url) for i in plans}
    probe = make_client(url)
    barrier = threading.Barrier(N_USERS + 1)
    in_flight = [0]
    lock = threading.Lock()

    def user(i):
        results = run.together[i]                     # filled as it goes: a hung user still shows its part
        barrier.wait(timeout=60)
        for r in plans[i]:
            with lock:
                in_flight[0] += 1
            results.append(run_request(clients[i], r))
            with lock:
                in_flight[0] -= 1

    for i in plans:
        run.together[i] = []
    threads = [threading.Thread(target=user, args=(i,), daemon=True, name=f"user-{i}") for i in plans]
    for t in threads:
        t.start()
    barrier.wait(timeout=60)
    start = time.monotonic()
    time.sleep(1.0)                                    # well inside the load
    with lock:
        run.in_flight_at_liveness = in_flight[0]
    run.liveness = run_request(probe, Request("liveness", "/gelu_curves", (False,)))
    for t in threads:
        t.join(timeout=max(0.0, LOAD_TIMEOUT - (time.monotonic() - start)))
    run.together_seconds = time.monotonic() - start
    run.finished = not any(t.is_alive() for t in threads)
    print(f"\n[concurrency] {N_USERS} users x 10 requests: alone {run.alone_seconds:.1f} s, "
          f"together {run.together_seconds:.1f} s; liveness request {run.liveness.seconds:.2f} s "
          f"with {run.in_flight_at_liveness} requests in flight")
    per_kind = {}
    for i, outcomes in alone.items():
        for r, o in zip(plans[i], outcomes):
            per_kind.setdefault(r.kind, []).append(o.seconds)
    print("[concurrency] mean seconds alone: " + ", ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in per_kind.items()))
    return run


def describe(run: LoadRun, i: int, j: int) -> str:
    r = run.plans[i][j]
    return f"user {i} request {j} ({r.kind}, {r.api_name})"


# ---- tests ---------------------------------------------------------------------------------------

def test_load_finishes_within_the_timeout(load_run):
    assert load_run.finished, f"the concurrent phase did not finish within {LOAD_TIMEOUT} s"
    assert all(len(load_run.together[i]) == 10 for i in range(N_USERS))


def test_every_request_succeeds_alone_and_under_load(load_run):
    problems = []
    for phase, results in (("alone", load_run.alone), ("together", load_run.together)):
        for i, outcomes in results.items():
            for j, outcome in enumerate(outcomes):
                request = load_run.plans[i][j]
                wanted = "error" if request.expect_error else "ok"
                if outcome.status != wanted:
                    problems.append(f"{phase}: {describe(load_run, i, j)} gave {outcome.status}: "
                                    f"{str(outcome.value)[:200]}")
    assert not problems, "\n".join(problems)


def test_results_under_load_equal_single_user_results(load_run):
    """No cross-talk: every plot, text and draw under load is exactly the user's own result alone."""
    mismatches = [describe(load_run, i, j) for i in range(N_USERS) for j, (a, b) in
                  enumerate(zip(load_run.alone[i], load_run.together.get(i, [])))
                  if (a.status, a.value) != (b.status, b.value)]
    assert not mismatches, "results differ from the same user's results alone:\n" + "\n".join(mismatches)


def test_same_seed_same_generation_alone_and_under_load(load_run):
    """Determinism: a seed and settings give the same text (and draws) alone, under load, and twice in a row."""
    checked = 0
    for i in range(N_USERS):
        plan, alone, together = load_run.plans[i], load_run.alone[i], load_run.together[i]
        by_kind = {r.kind: j for j, r in enumerate(plan)}
        for kind in ("generate", "generate-other-seed", "generate-again", "draws", "draws-other-seed"):
            j = by_kind[kind]
            assert alone[j].status == together[j].status == "ok", describe(load_run, i, j)
            assert alone[j].value == together[j].value, f"{describe(load_run, i, j)} changed under load"
            checked += 1
        first, again = together[by_kind["generate"]].value, together[by_kind["generate-again"]].value
        assert first == again, f"user {i}: the same seed gave two different generations under load"
    assert checked == 5 * N_USERS


def test_different_seeds_give_different_generations(load_run):
    """The determinism check can fail: another seed changes the text for (nearly) every user."""
    differ = 0
    for i in range(N_USERS):
        by_kind = {r.kind: j for j, r in enumerate(load_run.plans[i])}
        a = load_run.alone[i][by_kind["generate"]].value
        b = load_run.alone[i][by_kind["generate-other-seed"]].value
        differ += visible_text(a[1]) != visible_text(b[1])
    assert differ >= N_USERS - 2


def test_the_model_argument_matters(load_run, two_model_app):
    """The users of the second model really got it: the same request on the default model differs."""

    registry, url = two_model_app
    client = make_client(url)
    users = [i for i in range(N_USERS) if load_run.plans[i][0].args[-1] == SECOND]
    assert len(users) >= 5
    for i in users[:2]:
        for j in (0, 3):                          # attention and generate
            request = load_run.plans[i][j]
            swapped = Request(request.kind, request.api_name, (*request.args[:-1], registry.default))
            other = run_request(client, swapped)
            assert other.status == "ok" and other.value != load_run.alone[i][j].value, describe(load_run, i, j)


def test_unknown_model_is_a_clean_error_under_load(load_run):
    found = 0
    for i in range(N_USERS):
        for j, request in enumerate(load_run.plans[i]):
            if not request.expect_error:
                continue
            found += 1
            for outcome in (load_run.alone[i][j], load_run.together[i][j]):
                assert outcome.status == "error", describe(load_run, i, j)
                assert message_problem(outcome.value) is None, (message_problem(outcome.value), outcome.value)
                assert f"Unknown model {BAD_MODEL!r}" in outcome.value
    assert found == 5


def test_app_stays_responsive_under_load(load_run):
    """Liveness, not speed: a tiny request made during the load gets its answer within 60 s."""
    live = load_run.liveness
    assert live is not None and live.status == "ok", live
    assert live.seconds < LIVENESS_BOUND, f"the tiny request took {live.seconds:.1f} s under load"
    assert load_run.in_flight_at_liveness > 0, "the liveness request was not made during the load"
