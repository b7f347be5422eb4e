"""Zoos in PyTorch layout: the layout tables both ways, refused state_dicts, and a zoo imported into the pipeline."""

import jax
import numpy as np
import pytest
from tiny_runs import snapshot, tiny_config

from dwf_jax import pipeline, torch_layout, weight_files
from dwf_jax.config import model_config
from dwf_jax.models import build_model
from dwf_jax.settings import SOURCE_FILES
from dwf_jax.workdir import MATRIX_FILES, Workdir, WorkdirConfigMismatch
from dwf_jax.zoo_store import Flattener

ARCHITECTURES = {
    "mlp": (model_config("mlp", features=(32, 32, 10)), np.zeros((1, 28, 28, 1), np.float32)),
    "smallcnn": (model_config("smallcnn"), np.zeros((1, 32, 32, 3), np.float32)),
    "resnet20": (model_config("resnet20"), np.zeros((1, 32, 32, 3), np.float32)),
    "vit_small": (model_config("vit_small", dim=48, depth=2), np.zeros((1, 32, 32, 3), np.float32)),
    "bert": (
        model_config("bert", vocab_size=50, hidden=16, layers=2, heads=2, intermediate=32, max_length=8),
        np.ones((1, 8), np.int32),
    ),
}


def random_variables(name: str, seed: int = 0):
    """Variables of one architecture with every leaf random (BN variances positive), so no mapping hides a swap."""
    config, example = ARCHITECTURES[name]
    variables = build_model(config).init(jax.random.key(seed), example, train=False)
    leaves, tree = jax.tree.flatten(variables)
    rng = np.random.default_rng(seed)
    return config, jax.tree.unflatten(tree, [rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32) for leaf in leaves])


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_state_dict_round_trip_is_exact(name):
    config, variables = random_variables(name)
    state_dict = torch_layout.to_state_dict(config, variables)
    back = torch_layout.from_state_dict(config, state_dict, jax.eval_shape(lambda: variables))
    assert jax.tree.structure(back) == jax.tree.structure(variables)
    jax.tree.map(np.testing.assert_array_equal, back, variables)


def test_keys_follow_the_reference_code_names():
    """The DeepWeightFlow reference code's MLP and ResNet-20 keys, torchvision's ResNet-18's, Hugging Face's BERT."""
    mlp, variables = random_variables("mlp")
    assert list(torch_layout.to_state_dict(mlp, variables)) == [
        f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")
    ]
    resnet20 = torch_layout.expected_shapes(*ARCHITECTURES["resnet20"][:1], random_variables("resnet20")[1])
    assert resnet20["layer2.0.shortcut.0.weight"] == (32, 16, 1, 1)
    assert resnet20["layer3.2.bn2.running_var"] == (64,) and resnet20["linear.weight"] == (10, 64)
    bert, variables = random_variables("bert")
    shapes = torch_layout.expected_shapes(bert, variables)
    assert shapes["bert.encoder.layer.1.attention.self.query.weight"] == (16, 16)
    assert shapes["bert.embeddings.token_type_embeddings.weight"] == (2, 16) and shapes["classifier.weight"] == (1, 16)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sd: sd.pop("layer1.0.conv2.weight"), "no 'layer1.0.conv2.weight'"),
        (
            lambda sd: sd.update({"layer2.0.bn1.weight": np.ones(31, np.float32)}),
            r"'layer2.0.bn1.weight' has shape \(31,\)",
        ),
        (
            lambda sd: sd.update({"layer4.0.conv1.weight": np.ones(3, np.float32)}),
            "'layer4.0.conv1.weight' is not part",
        ),
    ],
)
def test_a_state_dict_that_does_not_fit_is_refused_by_key(change, message):
    config, variables = random_variables("resnet20")
    state_dict = torch_layout.to_state_dict(config, variables)
    change(state_dict)
    with pytest.raises(torch_layout.LayoutMismatch, match=message):
        torch_layout.from_state_dict(config, state_dict, variables)


def test_num_batches_tracked_is_written_and_may_be_absent():
    config, variables = random_variables("smallcnn")
    state_dict = torch_layout.to_state_dict(config, variables)
    assert state_dict["bn2.num_batches_tracked"].dtype == np.int64
    del state_dict["bn2.num_batches_tracked"]
    torch_layout.from_state_dict(config, state_dict, variables)


def test_the_same_net_and_metadata_give_the_same_bytes(tmp_path):
    config, variables = random_variables("mlp")
    state_dict = torch_layout.to_state_dict(config, variables)
    metadata = {f"key{index}": index for index in range(8)}  # many keys: a random order is all but sure to show
    paths = [tmp_path / f"net{index}.safetensors" for index in range(3)]
    for path in paths:
        weight_files.write_safetensors(path, state_dict, metadata)
    assert len({path.read_bytes() for path in paths}) == 1
    assert weight_files.read_metadata(paths[0]) == {"format": "pt", **metadata}
    for key, value in weight_files.read_state_dict(paths[0]).items():
        np.testing.assert_array_equal(value, state_dict[key])


def test_files_are_taken_in_natural_order(tmp_path):
    for seed in (10, 2, 1):
        (tmp_path / f"mlp_seed{seed}.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a weight file")
    assert [path.name for path in weight_files.zoo_files(tmp_path)] == [
        "mlp_seed1.safetensors",
        "mlp_seed2.safetensors",
        "mlp_seed10.safetensors",
    ]
    with pytest.raises(weight_files.WeightFileError, match="is not a folder"):
        weight_files.zoo_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(weight_files.WeightFileError, match="holds no"):
        weight_files.zoo_files(tmp_path / "empty")


def write_zoo_as_safetensors(workdir, folder):
    """The finished tiny run's zoo as one safetensors file per model, in PyTorch layout."""
    config = tiny_config()
    flattener = Flattener(jax.eval_shape(lambda: build_model(config.model).init(jax.random.key(0), np.zeros((1, 4)))))
    zoo = np.fromfile(workdir / MATRIX_FILES["zoo"], np.float32).reshape(config.zoo.num_models, -1)
    folder.mkdir()
    for index, row in enumerate(zoo):
        state_dict = torch_layout.to_state_dict(config.model, flattener.unflatten(row))
        weight_files.write_safetensors(folder / f"iris_seed{index}.safetensors", state_dict, {"seed": index})
    return zoo


def test_an_imported_zoo_replaces_training_bitwise(finished, workdir, tmp_path):
    zoo = write_zoo_as_safetensors(finished, tmp_path / "zoo")
    assert weight_files.read_metadata(tmp_path / "zoo" / "iris_seed3.safetensors") == {"format": "pt", "seed": 3}
    config = tiny_config()
    config.zoo.source = str(tmp_path / "zoo")
    config.zoo.epochs = 1  # unused: nothing is trained
    imported = pipeline.run(config, tmp_path / "imported", progress=False)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "imported" / MATRIX_FILES["zoo"], np.float32), zoo.ravel())
    trained = pipeline.run(tiny_config(), workdir, progress=False)  # a copy: the session's run is only read
    for section in ("original", "generated", "diversity"):  # the same zoo, so the same flow and samples
        assert imported[section] == trained[section]
    recorded = Workdir(tmp_path / "imported").verify("zoo")[SOURCE_FILES]
    assert sorted(recorded) == [f"iris_seed{i}.safetensors" for i in range(4)]
    # Other files under the same name are another zoo: the finished stages are refused, nothing is written.
    first = tmp_path / "zoo" / "iris_seed0.safetensors"
    state_dict = weight_files.read_state_dict(first)
    state_dict["fc1.bias"] = state_dict["fc1.bias"] + 1
    weight_files.write_safetensors(first, state_dict, {})
    before = snapshot(tmp_path / "imported")
    with pytest.raises(WorkdirConfigMismatch, match="zoo.source_files"):
        pipeline.run(config, tmp_path / "imported", progress=False)
    assert snapshot(tmp_path / "imported") == before


def test_an_import_that_does_not_fit_names_the_file_and_key(finished, tmp_path):
    write_zoo_as_safetensors(finished, tmp_path / "zoo")
    broken = tmp_path / "zoo" / "iris_seed2.safetensors"
    state_dict = weight_files.read_state_dict(broken)
    state_dict["fc2.weight"] = state_dict["fc2.weight"][:, :5]
    weight_files.write_safetensors(broken, state_dict, {})
    config = tiny_config()
    config.zoo.source = str(tmp_path / "zoo")
    with pytest.raises(torch_layout.LayoutMismatch, match=r"iris_seed2.safetensors: .*'fc2.weight' has shape \(3, 5\)"):
        pipeline.run(config, tmp_path / "work", progress=False)
    config.zoo.num_models = 5
    with pytest.raises(weight_files.WeightFileError, match="holds 4 weight files; zoo.num_models=5"):
        pipeline.run(config, tmp_path / "work", progress=False)


def test_pytorch_files_load_without_running_code(tmp_path):
    torch = pytest.importorskip("torch")
    config, variables = random_variables("smallcnn")
    state_dict = torch_layout.to_state_dict(config, variables)
    torch.save({"state_dict": {key: torch.tensor(value) for key, value in state_dict.items()}}, tmp_path / "a.pt")
    loaded = weight_files.read_state_dict(tmp_path / "a.pt")
    assert list(loaded) == list(state_dict)
    jax.tree.map(np.testing.assert_array_equal, loaded, state_dict)
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")  # a pickled module: refused, not run
    with pytest.raises(weight_files.WeightFileError, match="cannot read .*module.pt"):
        weight_files.read_state_dict(tmp_path / "module.pt")
