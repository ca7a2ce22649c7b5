"""Train tab: train a tiny GPT-2 on your own text, watch the loss fall, then explore the result."""
from __future__ import annotations

import copy
import json
import time

import gradio as gr

from ..components import File, Slider
from ..compute import training
from ..context import AppContext
from ..errors import handle
from ..scheduling import step_aside
from ..figures.training import answers_html, loss_curve, masked_tokens_html
from ..inputs import InputError, check_number
from ..session import BUNDLED_DIR, ROOT, USER_PREFIX, ModelEntry

TITLE = "Train"
DEMO_TEXT = (ROOT / "assets" / "train_demo.txt").read_text(encoding="utf-8")
YIELD_SECONDS = 0.5      # refresh the view at most this often (and at every evaluation)
MAX_USER_MODELS = 3      # trained models kept per browser session; the oldest is dropped
EXPLANATION = f"""
Training means adjusting the model's numbers so that it predicts the **next token** of your text
better. At every **step** the model reads a few short windows of the text, guesses each next token,
and measures how wrong it was: the **loss** (cross-entropy). A model that knows nothing gives all
{training.VOCAB_SIZE:,} tokens the same chance, which costs ln({training.VOCAB_SIZE:,}) =
{training.uniform_loss():.2f} per token. The gradient then nudges every weight a little in the
direction that lowers the loss.

The **validation loss** is measured on the last tenth of the text, which the model never trains on.
If training loss keeps falling but validation loss stops, the model is memorising rather than learning.
At each evaluation the model writes a short **sample** starting from the first words of your text.

These models are tiny and train for seconds, so expect word-like fragments rather than sentences.
Press **Use this model** afterwards to look inside *your* model in the other tabs (only you see it).
"""


INSTRUCT_EXPLANATION = f"""
### Instruction tuning
The same training, on question-and-answer records instead of plain text. Each record is written in the
**Alpaca template** (an instruction, an input, then `### Response:`), and the loss counts **only the
response tokens**: the prompt and the padding that makes the records of a batch equally long get the
label -100, which the loss skips. Below, one training example: greyed tokens are ignored, highlighted
ones are trained. The records are generated with answers a program can check (reverse the words,
capital letters, count the items, the next number, sort, add): {len(training.instruct_data()[0]):,} to train
on, and held-out ones the model never sees, answered greedily before and after training
(exact match: the answer must equal the expected one).
"""


def _example_html() -> str:
    """The first training record, padded as it is in a batch of the first records."""
    train = training.instruct_data()[0]
    longest = max(len(training.masked_example(r)) for r in train[:training.INSTRUCT_BATCH])
    return masked_tokens_html(training.masked_example(train[0], pad_to=longest))


def _samples_text(evals: list[dict]) -> str:
    return "\n\n".join(f"step {e['step']}: {e['sample']}" for e in evals)


def _status(line: str, notices: list[str], last: dict | None, loss_name: str = "validation loss") -> str:
    parts = [line]
    if last is not None:
        parts.append(f"{loss_name} {last['val_loss']:.3f} at step {last['step']}")
    return " · ".join(parts) + "".join(f"\n\nⓘ {n}" for n in notices)


def bundled_run_curve():
    """The bundled checkpoint's own training log as a loss curve (None if it has no log)."""
    log_path = BUNDLED_DIR / "log.json"
    if not log_path.is_file():
        return None
    log = json.loads(log_path.read_text())
    return loss_curve(**training.history(log), baseline=training.uniform_loss(),
                      title="How the bundled model was trained (press Train to train your own)")


def build(ctx: AppContext) -> None:
    gr.Markdown(EXPLANATION)
    trained = gr.State(None)   # this session's last trained model: {"model", "preset", "steps", "tokens"}
    with gr.Row():
        with gr.Column(scale=3):
            text = gr.Textbox(DEMO_TEXT, label="Training text (paste your own)", lines=10, max_lines=14,
                              elem_id="train-text")
            upload = File(label="…or upload a .txt file (used instead of the box)", file_types=[".txt"],
                             type="filepath", elem_id="train-file")
        with gr.Column(scale=2):
            preset = gr.Dropdown(training.preset_choices(), value=training.DEFAULT_PRESET,
                                 label="Model size", elem_id="train-preset")
            steps = Slider(training.MIN_STEPS, training.MAX_STEPS, value=100, step=10,
                              label="Training steps", elem_id="train-steps")
            with gr.Row():
                run = gr.Button("Train", variant="primary", elem_id="train-run")
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
            status = gr.Markdown(elem_id="train-status")
            use = gr.Button("Use this model", elem_id="train-use")
            use_status = gr.Markdown(elem_id="train-use-status")
    # Until a run of its own, the curve shows how the bundled model was trained: never an empty frame.
    curve = gr.Plot(bundled_run_curve(), label="Loss", elem_id="train-curve")
    samples = gr.Textbox(label="Samples at each evaluation", lines=8, max_lines=20, interactive=False,
                         elem_id="train-samples")

    @handle
    def train(text, file, preset_key, n_steps):
        """Train a fresh tiny GPT-2 on the text; stream the loss curve, samples and progress."""
        preset = training.get_preset(preset_key)
        n_steps = check_number(n_steps, "Training steps", training.MIN_STEPS, training.MAX_STEPS, integer=True)
        notices = []
        if file:
            text = training.read_text_file(file)
            notices.append(f"Training on the uploaded file ({min(len(text), training.MAX_TEXT_CHARS):,} "
                           f"characters), not on the text box.")
        data = training.prepare_text(text, preset)
        notices += data.notices
        trainer = training.new_trainer(preset, data.ids, n_steps, training.sample_prompt(data.text))
        notices.append(f"{len(data.ids):,} tokens: {len(trainer.train_ids):,} to train on, "
                       f"{len(trainer.val_ids):,} held out for validation. "
                       f"{trainer.model.num_params():,} parameters.")
        tokens_per_step = preset.batch_size * preset.n_ctx
        baseline = training.uniform_loss(trainer.model.config.vocab_size)
        state = {"model": trainer.model, "preset": preset.key, "steps": 0, "tokens": len(data.ids)}
        last_yield = 0.0
        for event in training.train_events(trainer):
            step_aside()                   # the views go first between steps
            state["steps"] = trainer.step
            if event.get("stopped"):
                notices.append(event["stopped"])
            now = time.monotonic()
            final = event.get("stopped") or trainer.step == n_steps
            if "eval" not in event and not final and now - last_yield < YIELD_SECONDS:
                continue
            last_yield = now
            evals = trainer.log["eval"]
            fig = loss_curve(**training.history(trainer.log), total_steps=n_steps, baseline=baseline)
            line = training.progress_line(trainer.step, n_steps, event["elapsed"], tokens_per_step)
            yield fig, _samples_text(evals), _status(line, notices, evals[-1] if evals else None), state

    gr.Markdown(INSTRUCT_EXPLANATION)
    with gr.Row():
        with gr.Column(scale=3):
            example = gr.HTML(_example_html(), label="One training example", elem_id="train-instruct-example")
        with gr.Column(scale=2):
            bases = training.instruct_base_choices()
            # The handler checks the value itself, with a message naming the choices.
            base = gr.Dropdown(bases, value=bases[0][1], label="Start from", allow_custom_value=True,
                               elem_id="train-instruct-base")
            tune_steps = Slider(training.MIN_STEPS, training.MAX_STEPS, value=100, step=10,
                                label="Fine-tuning steps", elem_id="train-instruct-steps")
            with gr.Row():
                tune = gr.Button("Instruction-tune", variant="primary", elem_id="train-instruct-run")
                tune_stop = gr.Button("Stop", variant="stop", elem_id="train-instruct-stop")
            tune_status = gr.Markdown(elem_id="train-instruct-status")
    tune_curve = gr.Plot(label="Loss on the response tokens", elem_id="train-instruct-curve", visible=False)
    answers = gr.HTML(label="Held-out instructions, before and after", elem_id="train-instruct-answers")

    @handle
    def instruct(base_key, n_steps):
        """Instruction-tune a copy of the chosen model; stream the loss, then the answers after training."""
        n_steps = check_number(n_steps, "Fine-tuning steps", training.MIN_STEPS, training.MAX_STEPS, integer=True)
        tuner = training.new_finetuner(base_key, n_steps)
        mean_len = sum(len(e.ids) for e in tuner.examples) / len(tuner.examples)
        tokens_per_step = round(tuner.effective_batch * mean_len)
        notices = [f"{len(tuner.examples):,} training records, batch {tuner.effective_batch} "
                   f"(about {tokens_per_step:,} tokens a step), {tuner.model.num_params():,} parameters."]
        html_example = _example_html()
        yield (html_example, gr.update(value=None, visible=True), "", _status(f"Answering {tuner.n_eval_records} held-out instructions before "
                                                 "training…", notices, None))
        before, last_yield = None, 0.0
        for event in training.train_events(tuner):
            step_aside()
            if event.get("stopped"):
                notices.append(event["stopped"])
            if before is None and "eval" in event:
                before = event["eval"]
            now = time.monotonic()
            final = event.get("stopped") or tuner.step == n_steps
            if "eval" not in event and not final and now - last_yield < YIELD_SECONDS:
                continue
            last_yield = now
            evals = tuner.log["eval"]
            after = evals[-1] if final and len(evals) > 1 else None
            fig = loss_curve(**training.history(tuner.log), total_steps=n_steps,
                             val_name="held-out records (response tokens)", title="Instruction-tuning loss")
            rows = training.answer_rows(before, after)
            table = answers_html(rows, before["exact_match"], after["exact_match"] if after else None,
                                 before["n_eval"])
            line = training.progress_line(tuner.step, n_steps, event["elapsed"], tokens_per_step)
            yield html_example, fig, table, _status(line, notices, evals[-1], "held-out response loss")

    @handle
    def use_model(trained, user_models):
        """Make the last trained model this session's model in every tab."""
        if not trained:
            raise InputError("Train a model first (press Train), then press Use this model.")
        if trained["steps"] == 0:
            raise InputError("The model has not trained a single step yet: wait for the first steps.")
        model = copy.deepcopy(trained["model"]).eval()   # a snapshot: later training can't change it
        for p in model.parameters():
            p.requires_grad_(False)
        base = f"{USER_PREFIX} ({trained['preset']}, {trained['steps']} steps)"
        models = dict(user_models or {})
        name, k = base, 2
        while name in models:
            name, k = f"{base} #{k}", k + 1
        models[name] = ModelEntry(name=name, model=model, trained=True,
                                  source=f"trained in this browser session on {trained['tokens']:,} tokens")
        dropped = list(models)[:-MAX_USER_MODELS]
        for old in dropped:
            del models[old]
        note = f" (only the last {MAX_USER_MODELS} are kept: {', '.join(dropped)} was removed)" if dropped else ""
        return models, f"Now using **{name}** in every tab. Only you see it{note}."

    @handle
    def select_newest(user_models):
        """Point the header's model menu at the model just added (the newest key of the dict)."""
        names = list(user_models or {})
        return gr.update(choices=ctx.registry.names() + names, value=names[-1] if names else None)

    event = run.click(train, [text, upload, preset, steps], [curve, samples, status, trained],
                      api_name="train")
    stop.click(None, None, None, cancels=[event], api_visibility="private")
    # One run at a time, whichever kind: both share the "train" queue (explorer.scheduling).
    tuning = tune.click(instruct, [base, tune_steps], [example, tune_curve, answers, tune_status],
                        api_name="train_instruct")
    tune_stop.click(None, None, None, cancels=[tuning], api_visibility="private")
    # Two steps, so that an error (nothing trained yet) is shown here and not on the header's menu.
    use.click(use_model, [trained, ctx.user_models], [ctx.user_models, use_status], api_name="train_use") \
        .success(select_newest, [ctx.user_models], [ctx.model_choice], api_visibility="private")
