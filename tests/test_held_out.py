"""zoo.held_out: the last models of the zoo are held out of everything that is fitted, and measured against."""

import json

import jax
import numpy as np
import pytest
from tiny_runs import refused, tiny_config, train_iris_models

from dwf_jax import conditioned, pipeline, report, stages, torch_layout, weight_files
from dwf_jax.checkpoints import restore_tree
from dwf_jax.config import base_config
from dwf_jax.data import load_configured
from dwf_jax.evaluate import generalization_gap
from dwf_jax.session import copy_stages
from dwf_jax.settings import differences, stage_settings
from dwf_jax.workdir import Workdir
from dwf_jax.zoo_store import Flattener, MemoryZoo

HELD_OUT = 2  # of 6 models: zoo.held_out = 1/3


def _write_zoo(folder, models):
    """Safetensors files net0.., one per model of a list of variables, for zoo.source."""
    folder.mkdir()
    for index, variables in enumerate(models):
        state_dict = torch_layout.to_state_dict(tiny_config().model, variables)
        weight_files.write_safetensors(folder / f"net{index}.safetensors", state_dict, {})


def _split_config(source):
    config = tiny_config()
    config.zoo.update(num_models=6, held_out=HELD_OUT / 6, source=str(source))
    config.pca.method = "dual"
    config.baselines.update(noise_stds=(0.01,), mixtures=0, average_of=0, gaussian=0)
    return config


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two runs whose zoos differ only in their held-out models (the last 2 of 6: other nets in the second)."""
    root = tmp_path_factory.mktemp("held_out")
    trained, _ = train_iris_models(range(8))
    models = [jax.tree.map(lambda leaf, i=i: np.asarray(leaf[i]), trained) for i in range(8)]
    _write_zoo(root / "zoo_a", models[:6])
    _write_zoo(root / "zoo_b", models[:4] + models[6:])
    results = [
        pipeline.run(_split_config(root / f"zoo_{name}"), root / f"work_{name}", progress=False) for name in "ab"
    ]
    return [root / "work_a", root / "work_b"], results


def _matrix(workdir, name, dim=131):
    return np.fromfile(workdir / name, np.float32).reshape(-1, dim)


def test_nothing_is_fitted_on_a_held_out_model(two_runs):
    """Other held-out nets leave the PCA, the flow and the samples bitwise equal."""
    (first, second), _ = two_runs
    zoo_a, zoo_b = _matrix(first, "zoo.f32"), _matrix(second, "zoo.f32")
    np.testing.assert_array_equal(zoo_a[:-HELD_OUT], zoo_b[:-HELD_OUT])
    assert not np.any(np.all(zoo_a[-HELD_OUT:] == zoo_b[-HELD_OUT:], axis=1))  # every held-out net differs
    canonical_a, canonical_b = _matrix(first, "canonical.f32"), _matrix(second, "canonical.f32")
    np.testing.assert_array_equal(canonical_a[:-HELD_OUT], canonical_b[:-HELD_OUT])
    assert (first / "pca_components.f32").read_bytes() == (second / "pca_components.f32").read_bytes()
    pca_a, pca_b = restore_tree(first / "pca"), restore_tree(second / "pca")
    assert pca_a["coefficients"].shape == (6 - HELD_OUT, 6 - HELD_OUT - 1)  # fitted on the 4 training models only
    for name in ("mean", "explained_variance", "coefficients"):
        np.testing.assert_array_equal(pca_a[name], pca_b[name])
    flow_a, flow_b = restore_tree(first / "flow"), restore_tree(second / "flow")
    jax.tree.map(np.testing.assert_array_equal, flow_a["params"], flow_b["params"])
    np.testing.assert_array_equal(flow_a["losses"], flow_b["losses"])
    assert (first / "generated.f32").read_bytes() == (second / "generated.f32").read_bytes()


def test_the_report_measures_generated_nets_against_training_and_held_out_originals(two_runs):
    (workdir, _), (result, _) = two_runs
    written = json.loads((workdir / "report.json").read_text())
    section = written["held_out"]
    assert (section["num_training"], section["num_held_out"]) == (4, 2)
    canonical, generated = _matrix(workdir, "canonical.f32"), _matrix(workdir, "generated.f32")
    training, held_out = canonical[:4], canonical[4:]

    def distances(a, b):
        return np.linalg.norm(a[:, None] - b[None], axis=-1)

    expected = {
        "generated_to_training": distances(generated, training).min(1),
        "generated_to_held_out": distances(generated, held_out).min(1),
        "held_out_to_training": distances(held_out, training).min(1),
    }
    for direction, values in expected.items():
        np.testing.assert_allclose(section["nearest_l2"][direction]["per_model"], values, rtol=1e-5)
        assert set(section["max_iou_of_errors"][direction]) >= {"mean", "per_model"}
        assert -1 <= section["max_cosine"][direction]["mean"] <= 1
    gap = 1 - expected["generated_to_training"].mean() / expected["held_out_to_training"].mean()
    assert section["generalization_gap"] == pytest.approx(gap, rel=1e-5)
    assert "1 - mean nearest L2" in section["generalization_gap_definition"]
    line = report.format_summary(result).splitlines()[-2]
    assert line.startswith("  held out (2 of 6 originals)") and f"generalization gap {gap:.3f}" in line


def test_a_full_weight_flow_sees_the_training_models_only():
    """pca.method none: the flow's data are the canonical zoo's first rows, the held-out ones left out."""
    config = tiny_config()
    config.zoo.update(num_models=6, held_out=HELD_OUT / 6)
    canonical = np.arange(6 * 131, dtype=np.float32).reshape(6, 131)
    space = pipeline.weight_space(config, MemoryZoo(canonical), None, None)
    np.testing.assert_array_equal(space.data, canonical[:-HELD_OUT])


def test_a_full_weight_flow_holds_the_held_out_rows_for_early_stopping():
    config = tiny_config()
    config.zoo.update(num_models=6, held_out=HELD_OUT / 6)
    canonical = np.arange(6 * 131, dtype=np.float32).reshape(6, 131)
    space = pipeline.weight_space(config, MemoryZoo(canonical), None, None)
    np.testing.assert_array_equal(space.held_out(), canonical[-HELD_OUT:])


def test_early_stopping_stops_on_the_held_out_nets_in_pca_space(two_runs, tmp_path):
    """The flow is validated on the held-out nets' PCA coefficients; the report names the step kept."""
    (first, _), _ = two_runs
    config = _split_config(first.parent / "zoo_a")
    config.flow.update(early_stopping=True, validate_every=20)
    work = pipeline.workdir_for(config, load_configured(config.data), tmp_path)
    copy_stages(Workdir(first), work, ("zoo", "canonical", "pca", "zoo_diversity", "baselines"))
    result = pipeline.run(config, tmp_path, progress=False)
    stopping = result["flow"]["early_stopping"]
    assert stopping["steps"] == [20, 40, 60] and len(stopping["held_out_loss"]) == 3
    assert stopping["best_step"] == stopping["steps"][int(np.argmin(stopping["held_out_loss"]))]
    assert f"early stopping: kept step {stopping['best_step']} of 60" in report.format_summary(result)
    assert result["held_out"]["held_out_chose_stopping_step"] is True
    assert "the held-out nets chose the flow's stopping step" in report.format_summary(result)

    canonical = _matrix(first, "canonical.f32")
    fitted, components = restore_tree(first / "pca"), _matrix(first, "pca_components.f32")
    flattener = Flattener(stages.model_template(config, load_configured(config.data)))
    space = pipeline.weight_space(config, MemoryZoo(canonical), flattener, work)
    expected = (canonical[-HELD_OUT:] - fitted["mean"]) @ components.T
    np.testing.assert_allclose(space.held_out(), expected, rtol=1e-4, atol=1e-5)


def test_held_out_originals_measured_as_if_generated_have_no_gap():
    """The gap's yardstick is the held-out nets themselves: as if generated, the gap is exactly 0; copies give 1."""
    rng = np.random.default_rng(0)
    training, held_out = rng.normal(size=(5, 7)), rng.normal(size=(3, 7))
    to_training = np.linalg.norm(held_out[:, None] - training[None], axis=-1)
    assert generalization_gap(to_training, to_training) == 0.0
    assert generalization_gap(to_training[::-1], to_training) == 0.0
    copies = np.linalg.norm(training[:2, None] - training[None], axis=-1)
    assert generalization_gap(copies, to_training) == 1.0
    assert generalization_gap(2 * to_training, to_training) == pytest.approx(-1.0)


def test_without_held_out_models_the_report_has_no_held_out_keys(finished):
    written = json.loads((finished / "report.json").read_text())
    assert "held_out" not in written and "held out" not in report.format_summary(written)


def test_a_zoo_and_its_canonical_form_are_reused_across_splits():
    """zoo.held_out is a setting of the stages fitted on the training part, not of the zoo or its alignment."""
    without, config = stage_settings(base_config(), "fingerprint"), base_config()
    config.zoo.held_out = 0.2
    held_out = stage_settings(config, "fingerprint")
    for stage in ("zoo", "canonical", "baselines"):
        assert differences(without[stage], held_out[stage]) == [], stage
    for stage in ("pca", "flow", "samples", "eval_generated", "diversity"):
        assert differences(without[stage], held_out[stage]) == ["zoo.held_out: 0.0 -> 0.2"], stage


@pytest.mark.parametrize(
    ("held_out", "reference", "match"),
    [
        (
            0.99,
            0,
            r"zoo.held_out=0.99 must be in \[0, 1\) and leave at least 2 training models: it holds out the last "
            r"4 of zoo.num_models=4, leaving 0",
        ),
        (1.0, 0, r"zoo.held_out=1.0 must be in \[0, 1\)"),
        (-0.1, 0, r"zoo.held_out=-0.1 must be in \[0, 1\)"),
        (0.25, 3, r"canonical.reference=3 must index a training model \(0..2; zoo.held_out=0.25"),
    ],
)
def test_a_bad_split_is_one_clear_error(tmp_path, held_out, reference, match):
    config = tiny_config()
    config.zoo.held_out, config.canonical.reference = held_out, reference
    refused(tmp_path / "work", ValueError, match, lambda: pipeline.run(config, tmp_path / "work", progress=False))


def test_a_conditioned_flow_refuses_a_split():
    """The conditioned flow trains on every model of its zoos: a held-out split there is refused, not ignored."""
    split, other = tiny_config(), tiny_config()
    split.zoo.held_out, other.data.name = 0.5, "mnist"
    with pytest.raises(ValueError, match=r"zoo.held_out must be 0 \(iris\)"):
        conditioned.check_compatible([split, other])


def test_scaling_zoos_are_prefixes_of_each_other(tmp_path):
    """A zoo grown from a smaller one (stages.train_zoo's `reused`: only the new models trained) is bitwise the zoo
    trained whole: model i of the larger zoo is bitwise model i of the smaller one (issue 26's scaling zoos).

    Bitwise only with the same chunks (the grown zoo's chunks start at the smaller zoo's size): XLA's vmapped
    programs for another number of models may differ in the last bit (seen: 9e-10 between chunks of 3 and 4)."""
    small, large = tiny_config(), tiny_config()
    for config, num_models in ((small, 2), (large, 4)):
        config.zoo.update(num_models=num_models, epochs=2, checkpoint_every=1, models_per_chunk=2)
    dataset = load_configured(small.data)
    flattener = Flattener(stages.model_template(small, dataset))
    evaluate = stages.evaluator(small, dataset)

    def zoo_stage(config, name, reused=None):
        (tmp_path / name).mkdir()  # as `session.opened` makes it before a run writes
        work = pipeline.workdir_for(config, dataset, tmp_path / name)
        stage = work.run("zoo", lambda: stages.train_zoo(config, dataset, flattener, evaluate, work, False, reused))
        return work, stage["test_accuracy"]

    small_work, small_accuracy = zoo_stage(small, "small")
    reused = (small_work.open_matrix("zoo", 2, flattener.dim, in_memory=False), small_accuracy)
    _, grown_accuracy = zoo_stage(large, "grown", reused)
    _, whole_accuracy = zoo_stage(large, "whole")  # trained from scratch, models 0-1 then 2-3
    grown, whole = _matrix(tmp_path / "grown", "zoo.f32"), _matrix(tmp_path / "whole", "zoo.f32")
    assert grown.tobytes() == whole.tobytes()
    assert grown[:2].tobytes() == _matrix(tmp_path / "small", "zoo.f32").tobytes()
    assert len({row.tobytes() for row in grown}) == 4  # four different models, not one copied
    np.testing.assert_array_equal(grown_accuracy, whole_accuracy)
    np.testing.assert_array_equal(grown_accuracy[:2], small_accuracy)
