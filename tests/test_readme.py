"""The README's embedding example runs as written and does what it says."""

import pathlib
import re

import jax.numpy as jnp
import numpy as np

README = pathlib.Path(__file__).parents[1] / "README.md"


def test_permutation_example_runs_and_preserves_the_function():
    section = README.read_text().split("## Permutations in your own JAX project")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    x = jnp.linspace(-1, 1, 784 * 3).reshape(3, 784)
    net = namespace["net"]
    np.testing.assert_allclose(net.apply(namespace["a"], x), net.apply(namespace["a_permuted"], x), atol=1e-5)
    np.testing.assert_allclose(net.apply(namespace["b"], x), net.apply(namespace["b_aligned"], x), atol=1e-5)
    assert namespace["match"].converged


def test_zoo_store_example_runs_and_aligns_the_zoo(tmp_path, monkeypatch):
    import jax

    from dwf_jax.models import MLP
    from dwf_jax.permutations.builders import mlp_permutation_spec

    monkeypatch.chdir(tmp_path)
    section = README.read_text().split("## Zoos larger than memory")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    models = [MLP((16, 3)).init(jax.random.key(index), jnp.zeros((1, 4))) for index in range(5)]
    namespace = {"first_model": models[0], "models": models, "key": jax.random.key(0), "spec": mlp_permutation_spec(2)}
    exec(compile(code, "README.md", "exec"), namespace)
    zoo, canonical = namespace["zoo"], namespace["canonical"]
    reference = zoo.read(0)
    assert all(
        np.linalg.norm(canonical.read(index) - reference) <= np.linalg.norm(zoo.read(index) - reference) + 1e-5
        for index in range(5)
    )
    assert namespace["coefficients"].shape == (5, 4) and namespace["state"].components.shape == (4, 131)


def test_pytorch_example_loads_an_exported_net_and_computes_our_logits(tmp_path, monkeypatch):
    import jax
    import pytest

    torch = pytest.importorskip("torch")
    from dwf_jax import torch_layout, weight_files
    from dwf_jax.config import model_config
    from dwf_jax.models import build_model

    monkeypatch.chdir(tmp_path)
    config = model_config("mlp", features=(32, 32, 10))
    images = np.random.default_rng(0).uniform(size=(5, 28, 28, 1)).astype(np.float32)
    variables = build_model(config).init(jax.random.key(3), images)
    (tmp_path / "exported").mkdir()
    state_dict = torch_layout.to_state_dict(config, variables)
    weight_files.write_safetensors(
        tmp_path / "exported" / "generated_00000.safetensors", state_dict, {"accuracy": 97.5}
    )
    section = README.read_text().split("## Bring your own zoo, take the nets out")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {"images": torch.from_numpy(images.transpose(0, 3, 1, 2))}
    exec(compile(code, "README.md", "exec"), namespace)
    expected = np.asarray(build_model(config).apply(variables, images))
    np.testing.assert_allclose(namespace["logits"].detach().numpy(), expected, atol=1e-5)
