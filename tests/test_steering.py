"""gpt2core.features.steering: c = 0 is plain generation; a direction moves the distribution the way it
points; "prompt" steers the prompt's positions only; two threads steering at once never see each other's."""
import threading

import pytest
import torch

import gpt2core as g
from gpt2core.features import steering


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return g.GPT2(g.get_config("tiny", n_layer=3)).eval()


PROMPT = [5, 17, 42, 9, 300, 11]


def test_zero_coefficient_is_plain_generation(model):
    direction = torch.randn(model.config.n_embd)
    plain = list(g.stream(model, PROMPT, 8, temperature=0.9, seed=3))
    for where in steering.WHERE:
        steered = steering.generate_steered(model, PROMPT, 8, 1, direction, 0.0, where, temperature=0.9, seed=3)
        assert [s.token_id for s in steered] == [s.token_id for s in plain]
        assert [s.prob for s in steered] == pytest.approx([s.prob for s in plain], abs=1e-6)


def test_the_direction_pushes_its_token_up(model):
    """Steer at the last layer along the unembedding row of a token: its probability at the next position
    rises from its plain value, and greedy decoding picks it."""
    target = 1234
    direction = model.lm_head.weight[target].detach() / model.lm_head.weight[target].norm()
    with torch.no_grad():
        plain = float(torch.softmax(model(torch.tensor([PROMPT]))[0, -1], -1)[target])
    step, = steering.generate_steered(model, PROMPT, 1, model.config.n_layer - 1, direction, 8.0, temperature=0.0)
    assert step.token_id == target and step.prob > 3 * plain


def test_prompt_positions_only(model):
    """"prompt" edits the prompt's forward and leaves a single generated token's alone: the first step is the
    same as "all", later steps differ."""
    direction = torch.randn(model.config.n_embd)
    first_all, *rest_all = steering.generate_steered(model, PROMPT, 4, 0, direction, 4.0, "all", temperature=0.0)
    first_prompt, *rest_prompt = steering.generate_steered(model, PROMPT, 4, 0, direction, 4.0, "prompt",
                                                           temperature=0.0)
    assert first_prompt.prob == pytest.approx(first_all.prob, abs=1e-6)
    assert [s.prob for s in rest_prompt] != pytest.approx([s.prob for s in rest_all], abs=1e-6)


def test_two_threads_steering_at_once_never_mix(model):
    """Each thread's hooks live in its own context: run both at once many times, each gets what it gets alone."""
    directions = {+1: torch.randn(model.config.n_embd), -1: torch.randn(model.config.n_embd)}
    alone = {c: [s.token_id for s in steering.generate_steered(model, PROMPT, 6, 1, directions[c], 6.0 * c,
                                                                 temperature=0.0)] for c in directions}
    assert alone[+1] != alone[-1]
    got, barrier = {c: [] for c in directions}, threading.Barrier(2)

    def run(c):
        barrier.wait()
        for _ in range(5):
            got[c].append([s.token_id for s in steering.generate_steered(model, PROMPT, 6, 1, directions[c], 6.0 * c,
                                                                           temperature=0.0)])

    threads = [threading.Thread(target=run, args=(c,)) for c in directions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(run == alone[c] for c in directions for run in got[c])


def test_prompt_difference_and_plain_messages(model):
    diff = steering.prompt_difference(model, [10, 11, 12], [20, 21], 1)
    assert diff.shape == (model.config.n_embd,)
    with torch.no_grad():
        _, a = model.run_with_cache([10, 11, 12], names=["blocks.1.hook_resid_pre"])
        _, b = model.run_with_cache([20, 21], names=["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(diff, a["blocks.1.hook_resid_pre"].mean(0) - b["blocks.1.hook_resid_pre"].mean(0))
    d = model.config.n_embd
    with pytest.raises(ValueError, match="layer must be a whole number from 0 to 2"):
        steering.steering_hooks(model, 3, torch.zeros(d), 1.0)
    with pytest.raises(ValueError, match="finite number"):
        steering.steering_hooks(model, 0, torch.zeros(d), float("nan"))
    with pytest.raises(ValueError, match="model's width"):
        steering.steering_hooks(model, 0, torch.zeros(d + 1), 1.0)
