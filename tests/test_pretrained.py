"""Hugging Face BERT checkpoints in our Flax BERT: the same hidden states, and zoos that start from them."""

import jax
import numpy as np
import pytest

from dwf_jax import pretrained, torch_layout, weight_files
from dwf_jax.config import model_config
from dwf_jax.models import build_model, model_initializer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SIZES = {"vocab_size": 60, "hidden": 32, "layers": 2, "heads": 4, "intermediate": 48}


def hugging_face_config(positions: int = 40, **more) -> "transformers.BertConfig":
    return transformers.BertConfig(
        vocab_size=SIZES["vocab_size"],
        hidden_size=SIZES["hidden"],
        num_hidden_layers=SIZES["layers"],
        num_attention_heads=SIZES["heads"],
        intermediate_size=SIZES["intermediate"],
        max_position_embeddings=positions,
        **more,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialized transformers BertModel saved by save_pretrained (40 positions, 2 token types)."""
    torch.manual_seed(0)
    model = transformers.BertModel(hugging_face_config()).eval()
    with torch.no_grad():  # token-type rows and LayerNorms away from their init, so a dropped one shows
        for name, parameter in model.named_parameters():
            if "token_type" in name or "LayerNorm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("bert")
    model.save_pretrained(folder)
    return folder, model


def ours(path, max_length: int = 16):
    config = model_config("bert", **SIZES, max_length=max_length, pretrained=str(path))
    model = build_model(config)
    tokens = np.random.default_rng(0).integers(1, SIZES["vocab_size"], (3, max_length)).astype(np.int32)
    variables = model_initializer(config)(jax.random.key(0), 0, tokens)
    return config, model, variables, tokens


def test_a_transformers_bert_gives_the_same_hidden_states(checkpoint):
    folder, reference = checkpoint
    _, model, variables, tokens = ours(folder)
    _, state = model.apply(variables, tokens, capture_intermediates=True, mutable=["intermediates"])
    with torch.no_grad():
        expected = reference(torch.tensor(tokens, dtype=torch.long), output_hidden_states=True)
    for layer in range(SIZES["layers"]):
        hidden = np.asarray(state["intermediates"][f"layer_{layer}"]["__call__"][0])
        np.testing.assert_allclose(hidden, expected.hidden_states[layer + 1].numpy(), atol=1e-5)
    pooled = np.tanh(np.asarray(state["intermediates"]["pooler"]["__call__"][0]))
    np.testing.assert_allclose(pooled, expected.pooler_output.numpy(), atol=1e-5)


def test_old_layer_norm_names_and_a_task_head_prefix_are_read(checkpoint, tmp_path):
    """bert-base-uncased's own file: keys under `bert.`, LayerNorm gamma/beta, pretraining heads beside."""
    folder, _ = checkpoint
    state_dict = weight_files.read_state_dict(folder / "model.safetensors")
    renamed = {
        "bert." + key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): value
        for key, value in state_dict.items()
    }
    renamed["cls.predictions.bias"] = np.zeros(SIZES["vocab_size"], np.float32)
    weight_files.write_safetensors(tmp_path / "bert.safetensors", renamed, {})
    from_folder, from_file = ours(folder)[2], ours(tmp_path / "bert.safetensors")[2]
    jax.tree.map(np.testing.assert_array_equal, from_file, from_folder)


def test_every_zoo_model_starts_from_the_checkpoint_with_its_own_head(checkpoint):
    folder, _ = checkpoint
    config, _, first, tokens = ours(folder)
    second = model_initializer(config)(jax.random.key(1), 1, tokens)
    jax.tree.map(np.testing.assert_array_equal, first["params"]["layer_1"], second["params"]["layer_1"])
    assert not np.array_equal(first["params"]["regressor"]["kernel"], second["params"]["regressor"]["kernel"])


def test_a_checkpoint_of_another_size_is_refused_by_key(checkpoint):
    folder, _ = checkpoint
    config = model_config("bert", **{**SIZES, "vocab_size": 61}, max_length=16, pretrained=str(folder))
    with pytest.raises(torch_layout.LayoutMismatch, match=r"'embeddings.word_embeddings.weight' has shape \(60, 32\)"):
        model_initializer(config)
    with pytest.raises(weight_files.WeightFileError, match="holds no model.safetensors"):
        pretrained.checkpoint_file(folder.parent)


def test_an_exported_bert_loads_into_transformers_with_the_same_outputs(checkpoint):
    folder, _ = checkpoint
    config, model, variables, tokens = ours(folder)
    state_dict = torch_layout.to_state_dict(config, variables)
    hugging_face = transformers.BertForSequenceClassification(hugging_face_config(16, num_labels=1)).eval()
    hugging_face.load_state_dict({key: torch.tensor(value) for key, value in state_dict.items()}, strict=True)
    with torch.no_grad():
        logits = hugging_face(torch.tensor(tokens, dtype=torch.long)).logits[:, 0].numpy()
    np.testing.assert_allclose(logits, np.asarray(model.apply(variables, tokens)), atol=1e-5)
