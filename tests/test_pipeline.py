"""A tiny end-to-end run on Iris: report schema, stage skipping, workdir ownership."""

import json
import pathlib

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.spatial.distance import jensenshannon
from scipy.special import softmax
from scipy.stats import wasserstein_distance
from tiny_runs import tiny_config

import configs.iris_mlp as iris_config
from dwf_jax import pipeline, report
from dwf_jax.checkpoints import restore_tree
from dwf_jax.data import load_configured, load_dataset
from dwf_jax.models import MLP
from dwf_jax.session import copy_stages
from dwf_jax.workdir import Workdir, WorkdirConfigMismatch


def _tiny_config():
    config = iris_config.get_config()
    config.zoo.update(num_models=6, epochs=20, models_per_chunk=4)
    config.flow.update(iterations=300, hidden=32, steps_per_dispatch=100, checkpoint_every=150, batch_size=4)
    config.sample.update(num_samples=5, steps=10)
    config.baselines.update(noise_stds=(0.0, 0.1), mixtures=4, average_of=3, gaussian=5)
    return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("iris")
    result = pipeline.run(_tiny_config(), workdir, progress=False)
    return workdir, result


def test_report_schema(finished_run):
    workdir, result = finished_run
    written = json.loads((workdir / "report.json").read_text())
    assert written == json.loads(json.dumps(result))
    for group in ("original", "generated"):
        assert set(written[group]["accuracy"]) >= {"mean", "std", "min", "max"}
        assert 0.0 <= written[group]["accuracy"]["min"] <= written[group]["accuracy"]["max"] <= 100.0
    assert written["original"]["num_models"] == 6 and len(written["generated"]["per_model"]) == 5
    assert written["generated"]["nfe"] == 40
    assert set(written["generated"]["novelty"]) == {
        "generated_to_nearest_original",
        "original_to_nearest_other_original",
    }
    assert set(written["timings"]) == {
        "zoo",
        "canonical",
        "flow",
        "samples",
        "eval_generated",
        "diversity",
        "zoo_diversity",
        "baselines",
    }
    assert (workdir / "accuracy.png").stat().st_size > 0 and (workdir / "diversity.png").stat().st_size > 0


def test_baselines_are_the_originals_moved_by_noise_or_mixed(finished_run):
    """Noise of size 0 gives back every original (its own copy is its nearest original, sharing all errors)."""
    _, result = finished_run
    assert list(result["baselines"]) == ["noise_std_0", "noise_std_0.1", "mixtures_of_2", "average_of_3", "gaussian"]
    assert [len(result["baselines"][name]["per_model"]) for name in ("average_of_3", "gaussian")] == [6, 5]
    averages = result["baselines"]["average_of_3"]["diversity"]["nearest_l2"]["baseline_to_original"]
    assert 0 < averages["min"] < result["diversity"]["nearest_l2"]["original_to_original"]["mean"]
    copies = result["baselines"]["noise_std_0"]
    assert copies["per_model"] == result["original"]["per_model"]
    assert copies["diversity"]["nearest_l2"]["baseline_to_original"]["max"] == 0.0
    assert copies["diversity"]["max_iou_of_errors"]["baseline_to_original"]["min"] == 1.0
    noisy = result["baselines"]["noise_std_0.1"]["diversity"]["nearest_l2"]["baseline_to_original"]
    assert noisy["mean"] == pytest.approx(0.1 * np.sqrt(131), rel=0.2)  # |N(0, 0.1^2 I_131)|
    assert len(result["baselines"]["mixtures_of_2"]["per_model"]) == 4


def test_baseline_ensembles_of_a_set_size_move_the_first_originals(finished_run, tmp_path):
    """baselines.num_models=2 of 6: noise of size 0 gives back the first two originals; averages and the Gaussian
    (-1) have two models, the mixtures their own count."""
    workdir, result = finished_run
    config = _tiny_config()
    config.baselines.update(num_models=2, gaussian=-1)
    shared = ("zoo", "canonical", "flow", "samples", "eval_generated", "diversity", "zoo_diversity")
    copy_stages(Workdir(workdir), pipeline.workdir_for(config, load_configured(config.data), tmp_path), shared)
    trimmed = pipeline.run(config, tmp_path, progress=False)["baselines"]
    assert [len(trimmed[name]["per_model"]) for name in trimmed] == [2, 2, 4, 2, 2]
    assert trimmed["noise_std_0"]["per_model"] == result["original"]["per_model"][:2]
    assert trimmed["noise_std_0"]["diversity"]["nearest_l2"]["baseline_to_original"]["max"] == 0.0


def test_canonicalization_preserves_function_and_moves_towards_reference(finished_run):
    _, result = finished_run
    canonical = result["canonicalization"]
    assert canonical["max_accuracy_change"] < 1e-6
    assert canonical["distance_to_reference_after"]["mean"] <= canonical["distance_to_reference_before"]["mean"]


def test_second_run_skips_done_stages(finished_run):
    workdir, first = finished_run
    stamps = {
        name: (workdir / name).stat().st_mtime_ns for name in ("zoo", "canonical", "flow", "samples", "eval_generated")
    }
    second = pipeline.run(_tiny_config(), workdir, progress=False)
    assert {name: (workdir / name).stat().st_mtime_ns for name in stamps} == stamps
    assert second["generated"]["per_model"] == first["generated"]["per_model"]
    assert second["timings"] == first["timings"]


def test_workdir_of_another_config_is_refused(finished_run):
    workdir, _ = finished_run
    before = sorted((p.name, p.stat().st_mtime_ns) for p in pathlib.Path(workdir).iterdir())
    config = _tiny_config()
    config.flow.hidden = 64
    with pytest.raises(WorkdirConfigMismatch, match=r"flow\.hidden: 32 -> 64"):
        pipeline.run(config, workdir, progress=False)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in pathlib.Path(workdir).iterdir()) == before


def _independent_logits(workdir, matrix_file, num_models):
    """Test-split logits of every model of a matrix file, computed here without the pipeline's helpers."""
    data = load_dataset("iris")
    rows = np.fromfile(workdir / matrix_file, np.float32).reshape(num_models, -1)
    model = MLP((16, 3))
    unravel = ravel_pytree(model.init(jax.random.key(0), data.x_test[:1]))[1]
    return np.stack([np.asarray(model.apply(unravel(row), data.x_test)) for row in rows])


def _independent_accuracy(workdir, matrix_file, num_models):
    logits = _independent_logits(workdir, matrix_file, num_models)
    return 100.0 * np.mean(np.argmax(logits, -1) == load_dataset("iris").y_test[None], axis=1)


def _nearest(matrix, same_set, largest):
    matrix = np.array(matrix, float)
    if same_set:
        np.fill_diagonal(matrix, -np.inf if largest else np.inf)
    return (matrix.max(axis=1) if largest else matrix.min(axis=1)).mean()


def test_diversity_fields_equal_an_independent_computation(finished_run):
    """Every Table 17 cell of the report, recomputed with numpy and scipy from the matrix files."""
    workdir, result = finished_run
    labels = load_dataset("iris").y_test
    logits = {
        "original": _independent_logits(workdir, "zoo.f32", 6),
        "generated": _independent_logits(workdir, "generated.f32", 5),
    }
    wrong = {name: (np.argmax(values, -1) != labels[None]).astype(float) for name, values in logits.items()}
    probabilities = {name: softmax(values, axis=-1) for name, values in logits.items()}
    classes = {name: np.mean(values, axis=1) for name, values in probabilities.items()}
    files = {"original": "canonical.f32", "generated": "generated.f32"}
    weights = {name: np.fromfile(workdir / file, np.float32).reshape(-1, 131) for name, file in files.items()}
    unit = {name: rows / np.linalg.norm(rows, axis=1, keepdims=True) for name, rows in weights.items()}

    def pairwise(function, first, second):
        return [[function(p, q) for q in second] for p in first]

    directions = {
        "original_to_original": ("original", "original"),
        "original_to_generated": ("original", "generated"),
        "generated_to_original": ("generated", "original"),
        "generated_to_generated": ("generated", "generated"),
    }
    for direction, (source, target) in directions.items():
        same = source == target
        both = wrong[source] @ wrong[target].T
        either = wrong[source].sum(1)[:, None] + wrong[target].sum(1)[None] - both
        iou = np.where(either > 0, both / np.maximum(either, 1), 0.0)
        divergence = pairwise(lambda p, q: jensenshannon(p, q, base=2) ** 2, classes[source], classes[target])
        per_example = pairwise(
            lambda p, q: np.mean(jensenshannon(p, q, base=2, axis=-1) ** 2),
            probabilities[source],
            probabilities[target],
        )
        distance = np.linalg.norm(weights[source][:, None] - weights[target][None], axis=-1)
        expected = {
            "max_iou_of_errors": _nearest(iou, same, True),
            "min_jensen_shannon_per_example": _nearest(per_example, same, False),
            "min_jensen_shannon_of_marginals": _nearest(divergence, same, False),
            "min_wasserstein": _nearest(pairwise(wasserstein_distance, weights[source], weights[target]), same, False),
            "nearest_l2": _nearest(distance, same, False),
            "max_cosine": _nearest(unit[source] @ unit[target].T, same, True),
        }
        for metric, value in expected.items():
            reported = result["diversity"][metric][direction]["mean"]
            assert reported == pytest.approx(value, rel=1e-4, abs=1e-6), (metric, direction)


def test_report_fields_equal_the_stage_contents_they_summarize(finished_run):
    workdir, result = finished_run
    original = _independent_accuracy(workdir, "zoo.f32", 6)
    canonical = _independent_accuracy(workdir, "canonical.f32", 6)
    generated = _independent_accuracy(workdir, "generated.f32", 5)
    np.testing.assert_allclose(result["original"]["per_model"], original, atol=1e-4)
    np.testing.assert_allclose(result["generated"]["per_model"], generated, atol=1e-4)
    np.testing.assert_allclose(restore_tree(workdir / "eval_generated")["accuracy"], generated, atol=1e-4)
    assert result["original"]["accuracy"]["mean"] == pytest.approx(np.mean(original), abs=1e-4)
    assert result["generated"]["accuracy"]["std"] == pytest.approx(np.std(generated), abs=1e-4)
    assert result["canonicalization"]["max_accuracy_change"] == pytest.approx(
        np.max(np.abs(canonical - original)), abs=1e-4
    )
    zoo, canon, gen = (
        np.fromfile(workdir / name, np.float32).reshape(-1, 131)
        for name in ("zoo.f32", "canonical.f32", "generated.f32")
    )
    before = np.linalg.norm(zoo - zoo[0], axis=1)
    assert result["canonicalization"]["distance_to_reference_before"]["mean"] == pytest.approx(
        before.mean(),
        rel=1e-5,  # every model, the reference itself at 0
    )
    to_originals = np.linalg.norm(gen[:, None] - canon[None], axis=-1)
    among = np.linalg.norm(canon[:, None] - canon[None], axis=-1) + np.diag(np.full(6, np.inf))
    novelty = result["generated"]["novelty"]
    assert novelty["generated_to_nearest_original"]["mean"] == pytest.approx(to_originals.min(1).mean(), rel=1e-5)
    assert novelty["original_to_nearest_other_original"]["min"] == pytest.approx(among.min(1).min(), rel=1e-5)
    assert result["generated"]["nfe"] == 4 * result["generated"]["ode_steps"] == 40


def test_printed_summary_puts_each_number_on_its_row(finished_run):
    _, result = finished_run
    lines = report.format_summary(result).splitlines()
    original, generated = result["original"]["accuracy"], result["generated"]["accuracy"]
    assert (
        lines[1].startswith("  original  (   6 models)")
        and f"{original['mean']:.2f} ± {original['std']:.2f} %" in lines[1]
    )
    assert (
        lines[2].startswith("  generated (   5 models)")
        and f"{generated['mean']:.2f} ± {generated['std']:.2f} %" in lines[2]
    )
    assert "rk4 x 10 steps = 40 flow evaluations" in lines[3]
    assert f"{result['generated']['novelty']['generated_to_nearest_original']['mean']:.3f}" in lines[4]
    divergence = result["diversity"]["min_jensen_shannon_per_example"]["generated_to_original"]["mean"]
    assert "per-example JS" in lines[6] and f"{divergence:.3f}" in lines[6]


@pytest.mark.parametrize("series", [([80.0, 93.3, 96.7], [90.0, 100.0]), ([90.0, 90.0], [90.0])])
def test_the_figure_bins_hold_every_model(series):
    bins = report.histogram_bins(*series)
    assert np.all(np.diff(bins) > 0)
    for values in series:
        assert np.histogram(values, bins=bins)[0].sum() == len(values)


def test_the_figure_draws_each_ensemble_under_its_own_label(finished_run):
    _, result = finished_run
    axis = report.accuracy_figure(result).axes[0]
    originals, generated = axis.containers
    assert axis.get_legend_handles_labels()[1] == ["original", "generated"]  # in the order of the containers
    bins = report.histogram_bins(result["original"]["per_model"], result["generated"]["per_model"])
    for bars, values in ((originals, result["original"]["per_model"]), (generated, result["generated"]["per_model"])):
        np.testing.assert_array_equal([bar.get_height() for bar in bars], np.histogram(values, bins=bins)[0])


def test_final_loss_is_the_mean_of_the_last_100_flow_steps(finished_run):
    workdir, result = finished_run
    losses = restore_tree(workdir / "flow")["losses"]
    assert len(losses) == 300
    assert result["flow"]["final_loss_mean_last_100"] == float(np.mean(losses[-100:]))


def _refuse_constant(name: str):
    raise ValueError(f"not standard JSON: {name}")


def test_a_one_sample_run_writes_standard_json_with_undefined_metrics_null(tmp_path):
    """A set of one model has no nearest other model: null and why, never Infinity or NaN."""
    config = tiny_config()
    config.sample.num_samples = 1
    config.baselines.update(noise_stds=(0.1,), mixtures=1)
    pipeline.run(config, tmp_path, progress=False)
    written = json.loads((tmp_path / "report.json").read_text(), parse_constant=_refuse_constant)
    alone = written["diversity"]["nearest_l2"]["generated_to_generated"]
    assert alone["mean"] is None and alone["per_model"] == [None] and "at least 2 models" in alone["undefined"]
    mixtures = written["baselines"]["mixtures_of_2"]["diversity"]["min_jensen_shannon_per_example"]
    assert mixtures["baseline_to_baseline"]["mean"] is None
    assert written["diversity"]["max_cosine"]["generated_to_original"]["mean"] is not None
    assert written["generated"]["novelty"]["generated_to_nearest_original"]["mean"] is not None
    for path in tmp_path.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=_refuse_constant)


def test_each_generated_ensemble_is_evaluated_once(tmp_path, monkeypatch):
    """The generated models' accuracy comes from the diversity evidence (one pass over the test set), not from
    a second evaluation; the canonical zoo's check is the run's only accuracy evaluation of a whole store."""
    evaluated = []
    store_accuracy = pipeline.stages.store_accuracy
    monkeypatch.setattr(
        pipeline.stages,
        "store_accuracy",
        lambda evaluate, store, *args: evaluated.append(store.num_models) or store_accuracy(evaluate, store, *args),
    )
    config = tiny_config()
    config.sample.num_samples = 5  # tells the generated store from the canonical zoo of 4
    result = pipeline.run(config, tmp_path / "work", progress=False)
    assert evaluated == [config.zoo.num_models]
    evidence = restore_tree(tmp_path / "work" / "diversity")["generated"]["wrong"]
    np.testing.assert_allclose(result["generated"]["per_model"], 100.0 * (1 - evidence.mean(axis=1)), atol=1e-4)
