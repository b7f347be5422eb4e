"""Nets exported in PyTorch layout load into the torch twins and compute our logits.

`load_state_dict(strict=True)` fails on any key the twin lacks or adds, so the names of `dwf_jax.torch_layout`
and `dwf_jax.torch_models` are checked together with the arrays.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwf_jax import torch_layout, weight_files
from dwf_jax.config import model_config
from dwf_jax.models import registry

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402  (needs torch)

from dwf_jax import torch_models  # noqa: E402  (needs torch)

SMALL_VIT = {"dim": 48, "depth": 2, "heads": 3}


def _random_variables(flax_model, images: np.ndarray, seed: int) -> dict:
    """Variables of our model's shapes, drawn in numpy (no Flax init to compile) with nothing left at an init value.

    Kernels are scaled by their fan-in so deep nets' logits stay small enough for an absolute 1e-5; biases,
    scales and embeddings are jittered and BN statistics drawn away from (0, 1), so no mistake hides behind them.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(flax_model.init, jax.random.key(0), jnp.asarray(images))

    def draw(path, leaf):
        names = [entry.key for entry in path]
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if names[-1] == "kernel":
            fan_in = leaf.shape[0] if names[-2] in ("query", "key", "value") else np.prod(leaf.shape[:-1])
            return noise / np.sqrt(fan_in)
        if names[-1] == "var":
            return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        return (names[-1] == "scale") + 0.1 * noise

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _assert_same_logits(config, module, images: np.ndarray, tmp_path: pathlib.Path, seed: int = 0) -> None:
    """Our variables exported to a safetensors file in PyTorch layout, loaded strictly into `module`: the same
    logits on NHWC vs NCHW images."""
    flax_model = registry.build_model(config)
    variables = _random_variables(flax_model, images, seed)
    expected = np.asarray(flax_model.apply(variables, jnp.asarray(images)))
    weight_files.write_safetensors(tmp_path / "net.safetensors", torch_layout.to_state_dict(config, variables), {})
    module.load_state_dict(load_file(tmp_path / "net.safetensors"), strict=True)
    with torch.no_grad():
        actual = module.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2) if images.ndim == 4 else images))
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-5, rtol=0)


def _images(shape: tuple[int, ...], seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("features, example", [((16, 3), (16, 4)), ((32, 32, 10), (16, 28, 28, 1))])
def test_an_exported_mlp_computes_our_logits_in_torch(features, example, tmp_path):
    config = model_config("mlp", features=features)
    module = torch_models.build(config, in_features=int(np.prod(example[1:])))
    _assert_same_logits(config, module, _images(example), tmp_path)


@pytest.mark.parametrize("name", ["smallcnn", "resnet20", "resnet18"])
def test_an_exported_cnn_computes_our_logits_in_torch(name, tmp_path):
    """SmallCNN (its dense rows reordered from HWC to CHW), ResNet-20 (reference names), ResNet-18 (torchvision's)."""
    config = model_config(name)
    _assert_same_logits(config, torch_models.build(config), _images((4, 32, 32, 3)), tmp_path)


def test_an_exported_vit_computes_our_logits_in_torch(tmp_path):
    config = model_config("vit_small", **SMALL_VIT)
    _assert_same_logits(config, torch_models.build(config), _images((4, 32, 32, 3)), tmp_path)


@pytest.mark.parametrize("name", ["smallcnn", "resnet20", "resnet18", "vit_small"])
def test_build_gives_an_eval_mode_twin_of_our_size(name):
    """Full-size twins hold exactly our parameters and BN statistics, and come in eval mode."""
    config = model_config(name)
    variables = jax.eval_shape(lambda: registry.build_model(config).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    module = torch_models.build(config)
    sizes = [value.numel() for key, value in module.state_dict().items() if not key.endswith("num_batches_tracked")]
    assert not module.training
    assert sum(sizes) == sum(leaf.size for leaf in jax.tree.leaves(variables))


def test_bert_is_hugging_faces_with_our_parameters_plus_token_types():
    config = model_config("bert", vocab_size=50, hidden=16, layers=2, heads=2, intermediate=32, max_length=12)
    variables = jax.eval_shape(lambda: registry.build_model(config).init(jax.random.key(0), jnp.ones((1, 12), int)))
    module = torch_models.build(config)
    assert type(module).__name__ == "BertForSequenceClassification" and not module.training
    token_types = 2 * config.hidden
    assert sum(p.numel() for p in module.parameters()) == sum(x.size for x in jax.tree.leaves(variables)) + token_types


def test_an_mlp_needs_its_input_width():
    with pytest.raises(ValueError, match="in_features"):
        torch_models.build(model_config("mlp"))
