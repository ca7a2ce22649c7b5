import pytest

from explorer.compute.model_info import architecture_markdown, config_rows, grouped_param_counts
from explorer.figures.model_info import param_count_bars
from gpt2core import GPT2, get_config
from tests.conftest import plot_json


def test_grouped_counts_add_up():
    model = GPT2(get_config("tiny"))
    groups = grouped_param_counts(model)
    assert sum(groups.values()) == model.num_params()
    assert "output head (untied)" not in groups
    untied = GPT2(get_config("tiny", tie_weights=False))
    assert grouped_param_counts(untied)["output head (untied)"] == 50257 * 64


def test_config_rows_and_architecture_name_the_config():
    model = GPT2(get_config("tiny"))
    rows = {r[0]: r[1] for r in config_rows(model)}
    assert rows["layers (n_layer)"] == "2" and rows["parameters"] == f"{model.num_params():,}"
    assert "2 × block" in architecture_markdown(model)


def test_param_count_bars():
    fig = param_count_bars({"a": 30, "b": 70})
    bar = fig.data[0]
    assert bar.type == "bar" and list(bar.y) == ["a", "b"] and list(bar.x) == [30, 70]
    assert "70 (70.0%)" in bar.text[1]
    assert "total 100" in fig.layout.title.text


def test_model_info_endpoint(client, registry):
    source, arch, config, params, card = client.predict(registry.default, api_name="/model_info")
    entry = registry.get(registry.default)
    assert entry.name in source
    assert f"{entry.model.config.n_layer} × block" in arch
    fig = plot_json(params)
    assert sum(fig["data"][0]["x"]) == entry.model.num_params()


def test_unknown_model_is_a_clean_error(client):
    with pytest.raises(Exception, match="Unknown model"):
        client.predict("no-such-model", api_name="/model_info")
