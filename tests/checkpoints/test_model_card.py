"""The model card `prune` writes: a Hugging Face model card (metadata block and text) that says what was removed and
replaced, by which criterion and version, what was measured, and how to load it (its code runs)."""

import re

import pytest
from conftest import HAS_ONNX, ROOT, tiny_model, tiny_tokenizer
from huggingface_hub import ModelCard

from optimum_gatenorm import GateNormConfig
from optimum_gatenorm.checkpoints.card import model_card
from optimum_gatenorm.outputs import foreign_entries
from optimum_gatenorm.pipeline import prune_and_save
from optimum_gatenorm.version import __version__


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("card") / "model"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("replacement", ["linear", "none"])
def test_prune_writes_a_model_card_that_explains_the_checkpoint(model_dir, tmp_path, replacement):
    config = GateNormConfig(num_layers=2, criterion="gate_norm", protect_first=0, replacement=replacement)
    export = "onnx" if HAS_ONNX else None
    result = prune_and_save(model_dir, tmp_path / "out", config, export=export)
    card = ModelCard.load(tmp_path / "out" / "README.md")  # huggingface_hub parses the metadata block
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "optimum-gatenorm" in card.data.tags and card.data.base_model is None  # a local model: no hub id
    report = result.report
    text = card.text
    assert f"{len(report.removed_layers)} of 4 attention sublayers removed" in text
    first, second = report.removed_layers
    assert f"layers {first} and {second} removed" in text and f"`{report.criterion}`" in text
    assert f"optimum-gatenorm {__version__}" in text and f"{report.num_parameters_after:,} after" in text
    if replacement == "linear":
        recovery = report.replacement["recovery"]
        assert "linear map" in text and f"{recovery['kl_with']:.4f} with the replacement" in text
    else:
        assert "plain removal" in text and "KL divergence of the next-token" not in text
    # "How to load it" runs as written
    blocks = _blocks(text)
    assert len(blocks) == (2 if HAS_ONNX else 1)
    for block in blocks:
        namespace: dict = {}
        exec(block.replace("path/to/this/checkpoint", str(tmp_path / "out")), namespace)
        assert namespace["model"].config.num_hidden_layers == 4
    # the card is ours: in the manifest, so --overwrite replaces the directory again
    assert foreign_entries(tmp_path / "out") == []
    prune_and_save(model_dir, tmp_path / "out", config, overwrite=True)
    assert (tmp_path / "out" / "README.md").is_file()


def test_a_built_in_model_names_its_hub_origin_and_licence(model_dir, tmp_path):
    result = prune_and_save(
        model_dir, tmp_path / "out", GateNormConfig(num_layers=1, criterion="gate_norm", replacement="none")
    )
    for alias, base, licence in (
        ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
        ("gemma3-270m", "google/gemma-3-270m", "gemma"),
    ):
        card = ModelCard(model_card(result.report, source=alias))
        assert card.data.base_model == base and card.data.license == licence
        assert f"--reference {alias}" in card.text


def test_the_install_line_is_one_that_works(model_dir, tmp_path):
    # No package index serves optimum-gatenorm: the card says to install it from its source, as README does.

    root = ROOT
    prune_and_save(
        model_dir, tmp_path / "out", GateNormConfig(num_layers=1, criterion="gate_norm", replacement="none")
    )
    text = (tmp_path / "out" / "README.md").read_text()
    assert "`pip install -e .`" in text and f"version {__version__} or later" in text
    assert not re.search(r"pip install [\"']?optimum-gatenorm(?![\w@ ]*@)", text), "an install line no index serves"
    pyproject = (root / "pyproject.toml").read_text()
    assert re.search(r'^name = "optimum-gatenorm"$', pyproject, flags=re.M)  # what `pip install -e .` installs
    assert 'pip install -e ".[onnx,onnxruntime]"' in (root / "README.md").read_text()  # README's own install
