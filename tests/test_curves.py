"""Training curves: one point per zoo epoch or dispatched flow chunk, holding the losses training computed and the
optax schedule's rates, never repeated by a resumed run, written by the writer process alone."""

import itertools
import shutil

import numpy as np
import optax
import pytest
from tiny_runs import tiny_config, train_iris_models

from dwf_jax import curves, flow, pipeline, processes, session, stages
from dwf_jax.data import load_dataset
from dwf_jax.flow_stage import train_flow_stage
from dwf_jax.session import WorkdirLink
from dwf_jax.workdir import FORMAT_FILE, Workdir

ZOO_TAGS = {"zoo/loss_mean", "zoo/loss_max", "zoo/learning_rate"}
FLOW_TAGS = {"flow/loss", "flow/learning_rate"}


def _steps(scalars: curves.Scalars, tags: set[str]) -> list[int]:
    """The steps of the curves, which must be the same for every tag of `tags` (and no other tag)."""
    steps = {tag: [step for step, _ in scalars[tag]] for tag in tags}
    assert set(scalars) == tags and all(found == steps[min(tags)] for found in steps.values()), steps
    return steps[min(tags)]


def _values(scalars: curves.Scalars, tag: str) -> np.ndarray:
    return np.asarray([value for _, value in scalars[tag]])


def test_a_run_and_its_resumption_write_one_point_per_epoch_and_flow_chunk(tmp_path, monkeypatch):
    """A zoo of two chunks; the flow stopped at step 40 (its last checkpoint: 30) and resumed without logging step
    40 again. The rates are the optax schedules' at each point's last step; the flow's losses the chunks' means."""
    config = tiny_config()
    config.zoo.update(num_models=4, models_per_chunk=2, epochs=3, schedule="cosine", checkpoint_every=3)
    config.flow.update(steps_per_dispatch=10)  # 60 steps, a checkpoint every 30
    workdir, make_train_chunk = tmp_path / "work", flow.make_train_chunk

    def stopping_at_step_40(*args, **kwargs):
        train_chunk, calls = make_train_chunk(*args, **kwargs), itertools.count()

        def run(*chunk_args):
            if next(calls) == 4:
                raise KeyboardInterrupt
            return train_chunk(*chunk_args)

        return run

    with monkeypatch.context() as patch:
        patch.setattr(flow, "make_train_chunk", stopping_at_step_40)
        with pytest.raises(pipeline.Interrupted, match="during stage flow"):
            pipeline.run(config, workdir, progress=False)
    assert _steps(curves.read_scalars(workdir / "tensorboard" / "flow"), FLOW_TAGS) == [10, 20, 30, 40]

    class Stopped(Exception):
        pass

    trained = {}

    def train_then_stop(*args, **kwargs):
        trained.update(train_flow_stage(*args, **kwargs))
        raise Stopped

    monkeypatch.setattr(pipeline, "train_flow_stage", train_then_stop)
    with pytest.raises(Stopped):
        pipeline.run(config, workdir, progress=False)

    steps = stages.steps_per_epoch(config, load_dataset("iris"))
    zoo_rate = optax.cosine_decay_schedule(config.zoo.learning_rate, decay_steps=3 * steps)
    assert sorted(path.name for path in (workdir / "tensorboard" / "zoo").iterdir()) == [
        "models_0000-0001",
        "models_0002-0003",
    ]
    for chunk in ("models_0000-0001", "models_0002-0003"):
        scalars = curves.read_scalars(workdir / "tensorboard" / "zoo" / chunk)
        assert _steps(scalars, ZOO_TAGS) == [1, 2, 3]
        expected = [zoo_rate(epoch * steps - 1) for epoch in (1, 2, 3)]
        np.testing.assert_allclose(_values(scalars, "zoo/learning_rate"), expected, rtol=1e-6)

    flow_steps = [10, 20, 30, 40, 50, 60]
    folder = workdir / "tensorboard" / "flow"
    assert len(list(folder.iterdir())) == 2  # the resumed run's file beside the first's
    scalars = curves.read_scalars(folder)
    assert _steps(scalars, FLOW_TAGS) == flow_steps
    means = [np.mean(trained["losses"][step - 10 : step]) for step in flow_steps]
    np.testing.assert_allclose(_values(scalars, "flow/loss"), means, rtol=1e-6)
    flow_rate = optax.cosine_decay_schedule(config.flow.learning_rate, decay_steps=config.flow.iterations)
    np.testing.assert_allclose(_values(scalars, "flow/learning_rate"), [flow_rate(step - 1) for step in flow_steps])


def test_zoo_curves_hold_each_epochs_losses(tmp_path):
    """Epoch e's points are the mean and max over the models of what a training of e epochs returns."""

    def train(epochs: int, on_epoch: curves.ZooCurves | None = None) -> np.ndarray:
        return train_iris_models(np.arange(3), epochs, on_epoch=on_epoch)[1]

    with curves.ZooCurves(tmp_path, optax.constant_schedule(1e-2), steps_per_epoch=8) as on_epoch:
        returned = {3: train(3, on_epoch)}
    returned[2] = train(2)
    scalars = curves.read_scalars(tmp_path)
    assert _steps(scalars, ZOO_TAGS) == [1, 2, 3]
    for epoch in (2, 3):
        assert scalars["zoo/loss_mean"][epoch - 1][1] == pytest.approx(np.mean(returned[epoch]), rel=1e-6)
        assert scalars["zoo/loss_max"][epoch - 1][1] == pytest.approx(np.max(returned[epoch]), rel=1e-6)


def test_a_training_started_over_replaces_the_curves_of_the_one_before(tmp_path):
    """Its checkpoints are gone (it diverged, or had other settings): its curves describe no training that counts."""
    for values in ((1.0, 2.0, 3.0), (4.0, 5.0)):
        with curves.Curves(tmp_path, start=0) as writer:
            for step, value in enumerate(values, start=1):
                writer.log(step, {"flow/loss": value})
    assert curves.read_scalars(tmp_path) == {"flow/loss": [(1, 4.0), (2, 5.0)]}


def test_a_process_that_is_not_the_writer_writes_and_deletes_nothing(tmp_path, monkeypatch):
    kept = tmp_path / "kept"
    with curves.Curves(kept, start=0) as writer:
        writer.log(1, {"flow/loss": 1.0})
    before = sorted(kept.iterdir())
    monkeypatch.setattr(processes, "is_writer", lambda: False)
    with curves.Curves(kept, start=0) as writer:
        writer.log(2, {"flow/loss": 2.0})
    with curves.ZooCurves(tmp_path / "zoo", optax.constant_schedule(0.1), 4) as on_epoch:
        on_epoch(1, np.ones(3))
    assert sorted(kept.iterdir()) == before and curves.read_scalars(kept) == {"flow/loss": [(1, 1.0)]}
    assert not (tmp_path / "zoo").exists()


def test_damaged_or_cut_event_files_are_read_up_to_the_damage(tmp_path, caplog):
    with curves.Curves(tmp_path / "curves", start=0) as writer:
        for step in (1, 2, 3):
            writer.log(step, {"zoo/loss_mean": float(step)})
    [path] = (tmp_path / "curves").iterdir()
    raw = path.read_bytes()
    assert curves.read_scalars(tmp_path / "curves") == {"zoo/loss_mean": [(1, 1.0), (2, 2.0), (3, 3.0)]}
    path.write_bytes(raw[:-3])
    assert curves.read_scalars(tmp_path / "curves") == {"zoo/loss_mean": [(1, 1.0), (2, 2.0)]}
    assert "is damaged or cut short" in caplog.text
    damaged = bytearray(raw)
    damaged[-10] ^= 0xFF
    path.write_bytes(bytes(damaged))
    assert curves.read_scalars(tmp_path / "curves") == {"zoo/loss_mean": [(1, 1.0), (2, 2.0)]}
    assert curves.read_scalars(tmp_path / "none") == {}


@pytest.mark.parametrize("name", ["tensorboard", "tensorboard/flow", "tensorboard/zoo/models_0000-0003"])
def test_a_link_among_the_curves_is_refused(tmp_path, name):
    work = Workdir(tmp_path / "work")
    (work.path / "tensorboard" / "zoo").mkdir(parents=True)
    (work.path / FORMAT_FILE).write_text("{}")
    (tmp_path / "outside").mkdir()
    shutil.rmtree(work.path / name, ignore_errors=True)
    (work.path / name).symlink_to(tmp_path / "outside")
    with pytest.raises(WorkdirLink, match=f"{work.path / name} is a symbolic link"):
        session.refuse_links(work)
