"""Train tab: train a tiny GPT-2 on your own text, watch the loss fall, then explore the result."""
from __future__ import annotations

import copy
import html
import json
import time

import gradio as gr

from ..components import File, Slider
from ..compute import classify, training
from ..context import AppContext
from ..errors import handle
from ..scheduling import step_aside
from ..figures.classify import class_probabilities, last_token_attention, training_curve
from ..figures.training import answers_html, loss_curve, masked_tokens_html
from ..inputs import InputError, check_number
from ..session import BUNDLED_DIR, ROOT, USER_PREFIX, ModelEntry, unique_name

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


CLASSIFY_EXPLANATION = """
Here GPT-2 becomes a classifier: the final LayerNorm's output at a line's **last token**, the one position
that has seen the whole line, goes through a small linear **head** that scores comedy, history and tragedy,
and only the head trains while the model stays frozen. Watch the held-out accuracy against the
**majority-class baseline** (what always answering one genre would score), then type a line and see which
words its last token attends to: that token's state is all the head ever reads.
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
    # Until a run of its own, the curve shows how the bundled model was trained: never an empty frame. Drawn
    # when the tab first opens (draw_first below), not while the app starts.
    curve = gr.Plot(label="Loss", elem_id="train-curve")
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
        for event, _ in _shown(training.train_events(trainer), trainer, n_steps, notices):
            state["steps"] = trainer.step
            evals = trainer.log["eval"]
            fig = loss_curve(**training.history(trainer.log), total_steps=n_steps, baseline=baseline)
            line = training.progress_line(trainer.step, n_steps, event["elapsed"], tokens_per_step)
            yield fig, _samples_text(evals), _status(line, notices, evals[-1] if evals else None), state

    gr.Markdown(INSTRUCT_EXPLANATION)
    with gr.Row():
        with gr.Column(scale=3):
            example = gr.HTML(_example_html(), label="One training example", elem_id="train-instruct-example")
        with gr.Column(scale=2):
            base, tune_steps, tune, tune_stop, tune_status = _run_controls(
                "train-instruct", training.instruct_base_choices(), "base", (training.MIN_STEPS, training.MAX_STEPS, 100),
                "Fine-tuning steps", "Instruction-tune")
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
        before = None
        for event, final in _shown(training.train_events(tuner), tuner, n_steps, notices):
            if before is None and "eval" in event:
                before = event["eval"]
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
        name = unique_name(base, models)
        models[name] = ModelEntry(name=name, model=model, trained=True,
                                  source=f"trained in this browser session on {trained['tokens']:,} tokens")
        dropped = [n for n, held in models.items() if isinstance(held, ModelEntry)][:-MAX_USER_MODELS]
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

    # ---- classification: a head on the last token ---------------------------------------------------
    c_body = classify.body()[0].config
    c_examples = classify.example_lines()
    with gr.Accordion("Classify lines by genre", open=True, elem_id="classify"):
        gr.Markdown(CLASSIFY_EXPLANATION, elem_id="classify-explanation")
        c_state = gr.State(None)   # this session's head: {"weight", "bias", "labels", "start", "steps"}
        with gr.Row():
            with gr.Column(scale=2):
                c_start, c_steps, c_run, c_stop, c_status = _run_controls(
                    "classify", classify.start_choices(), "start", (classify.MIN_STEPS, classify.MAX_STEPS, 200),
                    "Head training steps", "Train the head", status=_classify_intro())
            with gr.Column(scale=3):
                c_curve = gr.Plot(label="Training the head", elem_id="classify-curve", visible=False)
        with gr.Row():
            with gr.Column(scale=2):
                c_text = gr.Textbox(c_examples[0], label="A line to classify", lines=2, max_lines=6,
                                    elem_id="classify-text")
                gr.Examples([[t] for t in c_examples], inputs=[c_text], label="Held-out lines (one of each genre)")
                with gr.Row():
                    c_layer = Slider(0, max(c_body.n_layer - 1, 1), value=c_body.n_layer - 1, step=1, label="Layer",
                                     elem_id="classify-layer")
                    c_head = Slider(0, max(c_body.n_head - 1, 1), value=0, step=1, label="Head",
                                    elem_id="classify-head")
                c_go = gr.Button("Classify", elem_id="classify-go")
                c_note = gr.Markdown(elem_id="classify-note")
            with gr.Column(scale=3):
                # The example line's figures: drawn when the tab first opens (draw_first below).
                c_probs = gr.Plot(label="Class probabilities", elem_id="classify-probs")
                c_attn = gr.Plot(label="The last token's attention", elem_id="classify-attention")
    # Pressed by the page the first time the tab opens (ctx.url_state's redraw), and by a link to the tab.
    first_draw = gr.Button("draw", elem_id="train-first-draw", elem_classes="url-hidden")

    @handle
    def classify_train(start, n_steps, state):
        """Train a head (fresh, or from the bundled one) on the bundled lines; stream the loss and accuracy."""
        n_steps = check_number(n_steps, "Head training steps", classify.MIN_STEPS, classify.MAX_STEPS, integer=True)
        trainer = classify.new_trainer(start, n_steps)
        base = classify.baseline()
        labels, train_set, held_set, _ = classify.data()
        notices = [f"{len(train_set)} training lines, {len(held_set)} held out (whole scenes the head never sees), "
                   f"batch {trainer.effective_batch}; {trainer.model.head.weight.numel() + trainer.model.head.bias.numel()} "
                   f"numbers train, the {sum(p.numel() for p in trainer.model.body.parameters()):,} of the model stay "
                   f"fixed."]
        yield gr.update(value=None, visible=True), "Training…", state
        for event, _ in _shown(training.train_events(trainer, time_limit=classify.TIME_LIMIT), trainer, n_steps,
                               notices):
            state = classify.head_state(trainer, start)
            evals = trainer.log["eval"]
            fig = training_curve(**classify.curve(trainer.log), baseline=base["accuracy"], total_steps=n_steps,
                                 chance_loss=classify.uniform_loss())
            acc = (f"held-out accuracy **{evals[-1]['accuracy']:.1%}** at step {evals[-1]['step']} "
                   f"(majority-class baseline {base['accuracy']:.1%}: {_constant_answer(base)})") if evals else ""
            line = classify.progress_line(trainer.step, n_steps, event["elapsed"])
            yield fig, " · ".join(p for p in (line, acc) if p) + \
                "".join(f"\n\nⓘ {n}" for n in notices), state

    @handle
    def classify_predict(text, layer_v, head_v, state):
        """Class probabilities of a line from this session's head (else the bundled one), and where the
        last token looks in one head."""
        probs, attn, note = _classify_figures(state, text, layer_v, head_v)
        return probs, attn, note

    @handle
    def draw_first(trained_state, text, layer_v, head_v, state):
        """The tab's first opening: the bundled run's loss curve (unless this session trained already) and
        the line's genre figures, without the held-out accuracy (as the line's own Classify gives it)."""
        fig = bundled_run_curve() if trained_state is None else gr.update()
        probs, attn, _ = _classify_figures(state, text, layer_v, head_v, with_note=False)
        return fig, probs, attn

    first_draw.click(draw_first, [trained, c_text, c_layer, c_head, c_state], [curve, c_probs, c_attn],
                     api_visibility="private", show_progress="hidden")
    ctx.url_state(redraw=first_draw)

    c_training = c_run.click(classify_train, [c_start, c_steps, c_state], [c_curve, c_status, c_state],
                             api_name="classify_train")
    c_stop.click(None, None, None, cancels=[c_training], api_visibility="private")
    gr.on([c_go.click, c_text.submit, c_layer.release, c_head.release], classify_predict,
          [c_text, c_layer, c_head, c_state], [c_probs, c_attn, c_note], api_name="classify_predict")
    # The new head classifies the line at once.
    c_training.success(classify_predict, [c_text, c_layer, c_head, c_state], [c_probs, c_attn, c_note],
                       api_visibility="private")


def _shown(events, trainer, n_steps: int, notices: list):
    """(event, final) for the training events worth drawing: every evaluation, the last step, and
    otherwise one every YIELD_SECONDS. The views go first between steps; a stop's reason joins
    ``notices``."""
    last_yield = 0.0
    for event in events:
        step_aside()
        if event.get("stopped"):
            notices.append(event["stopped"])
        now = time.monotonic()
        final = bool(event.get("stopped")) or trainer.step == n_steps
        if "eval" not in event and not final and now - last_yield < YIELD_SECONDS:
            continue
        last_yield = now
        yield event, final


def _run_controls(prefix: str, starts: list, start_id: str, steps: tuple[int, int, int], steps_label: str,
                  run_label: str, status: str = ""):
    """Start-from menu, steps slider, run and stop buttons, status: the controls of a training run.
    ``steps`` is (min, max, value); elem_ids are prefix-start_id, -steps, -run, -stop, -status."""
    # The handler checks the menu's value itself, with a message naming the choices.
    start = gr.Dropdown(starts, value=starts[0][1], label="Start from", allow_custom_value=True,
                        elem_id=f"{prefix}-{start_id}")
    n_steps = Slider(steps[0], steps[1], value=steps[2], step=10, label=steps_label, elem_id=f"{prefix}-steps")
    with gr.Row():
        run = gr.Button(run_label, variant="primary", elem_id=f"{prefix}-run")
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop")
    return start, n_steps, run, stop, gr.Markdown(status, elem_id=f"{prefix}-status")


def _constant_answer(base: dict) -> str:
    """What scores the baseline: one genre, or any, where the held-out classes are balanced."""
    return "any one genre, the classes being balanced" if base["tied"] else f"always {base['majority']}"


def _classify_intro() -> str:
    base = classify.baseline()
    bundled, why = classify.bundled_head()
    counts = ", ".join(f"{k} {v}" for k, v in base["heldout_counts"].items())
    text = (f"The lines: {len(classify.data()[1])} to train on and {len(classify.data()[2])} held out ({counts}), "
            f"speeches from the plays labelled by the First Folio's genres, split by scene. ")
    if bundled is None:
        return text + f"Until you train a head, the line below is scored by an untrained one ({why})."
    acc = bundled["meta"].get("accuracy")
    whole = json.loads(acc) if acc else None
    return text + ("The line below is scored by the bundled head until you train one" +
                   (f": trained with `python -m gpt2core.training.classify` on the whole data set, where it scored "
                    f"{whole['after']:.1%} on {whole['examples']:,} held-out speeches (majority-class baseline "
                    f"{whole['baseline']:.1%})." if whole else "."))


def _classify_figures(state, text, layer, head, with_note: bool = True):
    """(probabilities, attention, note) for a line: this session's head, else the bundled one (else a fresh
    one). Without ``with_note`` (the page's first draw) the held-out accuracy is not measured."""
    used = state or classify.bundled_head()[0]
    pred = classify.predict(used, text, layer, head)
    if state:
        who = (f"your head ({'from the bundled one, ' if state['start'] == 'bundled' else 'fresh, '}"
               f"{state['steps']} steps)")
    else:
        who = "the bundled head" if used else "an untrained head (random weights)"
    probs = class_probabilities(pred.labels, pred.probs, f"Genre probabilities ({who})")
    attention = last_token_attention(pred.tokens, pred.attention, pred.layer, pred.head)
    if not with_note:
        return probs, attention, ""
    m = classify.heldout_metrics(used)
    top, looked = int(pred.probs.argmax()), int(pred.attention.argmax())
    token = html.escape(pred.tokens[looked].replace("`", "'"))
    note = (f"Scored by {who}: held-out accuracy {m['accuracy']:.1%} on {m['n_eval']} lines. "
            f"Most likely: **{pred.labels[top]}** ({pred.probs[top]:.0%}). In layer {pred.layer}, head {pred.head}, "
            f"the last token looks most at `{token}` (position {looked}, weight {pred.attention[looked]:.2f}).")
    return probs, attention, note + "".join(f"\n\nⓘ {n}" for n in pred.notices)
