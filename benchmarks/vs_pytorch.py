"""dwf_jax against a plain PyTorch version of the same work (benchmarks/torch_reference.py), row by row.

    python benchmarks/vs_pytorch.py --repeats=5 --data_dir=../shared/datasets
    python benchmarks/vs_pytorch.py --quick     # tiny sizes: a smoke test of every row

The JAX side of each row is dwf_jax itself, called as the pipeline calls it, with the settings of
configs/mnist_mlp.py and configs/resnet20.py. Each side runs once to warm up (JAX compiles), then
they alternate (jax, torch, jax, torch, ...) `--repeats` times and the table shows the medians.
Compute-bound rows also show FLOP/s as a fraction of the machine's float32 matmul peak (the better of
the two frameworks on a large matmul, measured in the same run); the FLOPs are XLA's cost analysis of
the JAX program, the same count for both sides. Needs PyTorch: `pip install ".[torch]"`.
"""

import datetime
import os
import pathlib
import platform
import sys
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

try:
    import torch
except ImportError:
    sys.exit("benchmarks/vs_pytorch.py compares with PyTorch, which is not installed: pip install '.[torch]'")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch_reference as tr  # noqa: E402  (beside this file)
from side_by_side import Row, count, gap, matmul_peak, measure, ms, xla_flops  # noqa: E402

from configs import mnist_mlp, resnet20  # noqa: E402
from dwf_jax import bn_recalibration, canonical, flow, permutations, zoo  # noqa: E402
from dwf_jax.augment import input_pipeline  # noqa: E402
from dwf_jax.data import load_dataset  # noqa: E402
from dwf_jax.flow_stage import build_flow  # noqa: E402
from dwf_jax.models import build_model, model_initializer, permutation_spec  # noqa: E402

flags.DEFINE_integer("repeats", 5, "Timed calls per side and row, alternating (the median is reported).")
flags.DEFINE_string("rows", "1,2,3,4,5,6,7,8", "Comma-separated rows to run.")
flags.DEFINE_bool("quick", False, "Tiny sizes: a smoke test of every row, not a measurement.")
flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: all cores); XLA:CPU always uses all cores.")
flags.DEFINE_string("data_dir", None, "Directory with mnist/ IDX files for row 6 (else random data of MNIST shape).")
flags.DEFINE_integer("match_models", 100, "ResNet-20s in row 7 (model 0 and the models aligned to it).")
flags.DEFINE_integer("bn_models", 10, "ResNet-20s whose BatchNorm statistics row 8 recalibrates.")
FLAGS = flags.FLAGS


class Sizes(NamedTuple):
    flow_hidden: int = 512  # configs/mnist_mlp.py
    pca_dim: int = 99  # N - 1 dual-PCA coefficients of a 100-model zoo
    weight_dim: int = 26_506  # the MNIST MLP [784, 32, 32, 10]
    flow_steps: int = 20  # train steps per timed call (the pipeline scans 1000 per dispatch)
    samples: int = 100
    sample_steps: int = 100
    resnet_batch: int = 128
    zoo_models: int = 100
    zoo_examples: int = 60_000
    bn_batches: int = 20  # configs: bn.num_batches x bn.batch_size
    bn_batch: int = 128
    matmul: int = 4096  # side of the square matmul that measures the peak


QUICK = Sizes(64, 99, 1_000, 2, 4, 3, 8, 4, 512, 2, 8, 256)  # the same fields, tiny


def note(row: int, text: str) -> None:
    print(f"row {row}: {text}", flush=True)


def flow_train_row(sizes: Sizes, row: int, dim: int, space: str) -> Row:
    """Flow training steps: flow.make_train_chunk as flow_stage.train_flow_stage builds it, against torch AdamW."""
    config = mnist_mlp.get_config()
    config.flow.hidden = sizes.flow_hidden
    f = config.flow
    model, tx = build_flow(config, dim), flow.make_optimizer(f.learning_rate, f.weight_decay, f.iterations)
    state = [flow.create_flow_state(model, tx, jax.random.key(0))]
    settings = {"sigma": f.sigma, "time_distribution": f.time_distribution, "beta": tuple(f.beta)}
    chunk = flow.make_train_chunk(
        model, tx, batch_size=f.batch_size, source=flow.Source("normal", f.source_std), **settings
    )
    data, key = 0.1 * jax.random.normal(jax.random.key(1), (config.zoo.num_models, dim)), jax.random.key(2)
    flops = xla_flops(chunk.lower(state[0], key, data, 1).compile())

    def run_jax() -> jax.Array:
        state[0], losses = chunk(state[0], key, data, sizes.flow_steps)
        return losses

    torch_model = tr.VelocityField(dim, f.hidden, f.time_embed_dim, f.dropout).train()
    optimizer, scheduler = tr.flow_optimizer(torch_model, f.learning_rate, f.weight_decay, f.iterations)
    torch_data = torch.from_numpy(np.array(data))

    def run_torch() -> None:
        for _ in range(sizes.flow_steps):
            tr.flow_train_step(torch_model, optimizer, scheduler, torch_data, f.batch_size, f.source_std, f.sigma)

    note(row, f"flow parameters JAX {count(state[0].params):,}, PyTorch {count(list(torch_model.parameters())):,}")
    label = f"flow train step, {space} D={dim:,}, h={f.hidden}, batch {f.batch_size}"
    return Row(label, "step", run_jax, run_torch, sizes.flow_steps, flops)


def sample_row(sizes: Sizes, row: int) -> Row:
    """RK4 sampling of an ensemble, flow.sample_ensemble jitted over a closure as flow_stage.sample_stage does."""
    config = mnist_mlp.get_config()
    config.flow.hidden = sizes.flow_hidden
    dim, num, steps, f = sizes.weight_dim, sizes.samples, sizes.sample_steps, config.flow
    model = build_flow(config, dim)
    params = flow.create_flow_state(model, flow.make_optimizer(1e-3, 0.0, 1), jax.random.key(0)).params
    params["Dense_5"]["kernel"] = 1e-3 * jax.random.normal(jax.random.key(3), params["Dense_5"]["kernel"].shape)

    def velocity(x: jax.Array, t: jax.Array) -> jax.Array:
        return model.apply({"params": params}, x, t, train=False)

    source, key, m = flow.Source("normal", f.source_std), jax.random.key(4), config.sample.method
    sample = jax.jit(lambda k: flow.sample_ensemble(velocity, k, num, dim, source=source, num_steps=steps, method=m))
    flops = xla_flops(jax.jit(velocity).lower(jnp.zeros((num, dim)), jnp.zeros(num)).compile())
    torch_model = tr.VelocityField(dim, f.hidden, f.time_embed_dim, f.dropout)
    torch_model.load_state_dict(tr.flax_flow_to_state_dict(params))
    x0 = torch.from_numpy(np.array(flow.draw(source, key, (num, dim))))
    ours = np.asarray(sample(key))
    note(row, f"same flow, same noise: max |JAX - PyTorch| = {gap(ours, tr.sample_rk4(torch_model, x0, steps)):.1e}")

    def run_torch() -> torch.Tensor:
        return tr.sample_rk4(torch_model, f.source_std * torch.randn(num, dim), steps)

    label = f"{m.upper()} sampling, {steps} steps, {num} nets, D={dim:,}, h={f.hidden}"
    return Row(label, "call", lambda: sample(key), run_torch, 1, flops * flow.num_function_evals(m, steps))


def cifar_like(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (N, 32, 32, 3) and labels: the speed of these rows does not depend on the values."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (num, 32, 32, 3), np.uint8), rng.integers(0, 10, num).astype(np.int32)


def resnet20_pair(row: int) -> tuple[Any, Any, torch.nn.Module]:
    """dwf_jax's ResNet-20 (flax module and initial variables) and torch's, holding the same weights."""
    model = build_model(resnet20.get_config().model)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    torch_model = tr.ResNet20()
    torch_model.load_state_dict(tr.flax_to_state_dict(variables))
    counts = count(variables["params"]), count(list(torch_model.parameters()))
    note(row, f"ResNet-20 parameters JAX {counts[0]:,}, PyTorch {counts[1]:,}")
    return model, variables, torch_model


def resnet_train_row(sizes: Sizes, row: int) -> Row:
    """zoo.make_train_step (augmentation inside) with configs/resnet20.py's optimizer, one model per dispatch."""
    config = resnet20.get_config()
    z, batch = config.zoo, sizes.resnet_batch
    model, variables, torch_model = resnet20_pair(row)
    tx = zoo.make_optimizer(z.optimizer, z.learning_rate, z.weight_decay, z.schedule)
    step = jax.jit(zoo.make_train_step(model, tx, input_pipeline("cifar10", config.data.augment)), donate_argnums=0)
    images, labels = cifar_like(8 * batch, seed=0)
    x, y, rng = jnp.asarray(images), jnp.asarray(labels), np.random.default_rng(1)
    carry = [(variables, tx.init(variables["params"]))]

    def plan() -> tuple[jax.Array, jax.Array, jax.Array]:
        return jnp.asarray(rng.permutation(len(images))[:batch]), jnp.ones(batch), jax.random.key(rng.integers(1 << 30))

    def run_jax() -> jax.Array:
        carry[0], loss = step(carry[0], plan(), x, y)
        return loss

    optimizer = torch.optim.Adam(torch_model.parameters(), z.learning_rate, weight_decay=z.weight_decay, fused=True)
    torch_images, torch_labels = tr.from_nhwc(images), torch.from_numpy(labels).long()

    def run_torch() -> torch.Tensor:
        indices = torch.randperm(len(images))[:batch]
        return tr.resnet_train_step(torch_model, optimizer, torch_images, torch_labels, indices)

    flops = xla_flops(step.lower(carry[0], plan(), x, y).compile())
    label = f"ResNet-20 train step, batch {batch}, crop+flip inside, {z.optimizer} {z.learning_rate:g}"
    return Row(label, "step", run_jax, run_torch, 1, flops)


def resnet_eval_row(sizes: Sizes, row: int) -> Row:
    """Eval-mode logits of one batch, normalisation included (the evaluation stage's predict)."""
    model, variables, torch_model = resnet20_pair(row)
    inputs = input_pipeline("cifar10")
    predict = jax.jit(lambda v, x: model.apply(v, inputs.eval(x), train=False))
    images = cifar_like(sizes.resnet_batch, seed=0)[0]
    x, torch_x = jnp.asarray(images), tr.from_nhwc(images)

    @torch.inference_mode()
    def run_torch() -> torch.Tensor:
        return torch_model.eval()(tr.normalize(torch_x))

    note(row, f"same weights, same images: max |JAX - PyTorch| logits = {gap(predict(variables, x), run_torch()):.1e}")
    flops = xla_flops(predict.lower(variables, x).compile())
    label = f"ResNet-20 inference, eval mode, batch {sizes.resnet_batch}"
    return Row(label, "batch", lambda: predict(variables, x), run_torch, 1, flops)


def mnist(sizes: Sizes) -> tuple[np.ndarray, np.ndarray, str]:
    if FLAGS.data_dir:
        data = load_dataset("mnist", FLAGS.data_dir, source="offline")
        return data.x_train[: sizes.zoo_examples], data.y_train[: sizes.zoo_examples], "real MNIST"
    rng = np.random.default_rng(0)
    images = rng.random((sizes.zoo_examples, 28, 28, 1), np.float32)
    return images, rng.integers(0, 10, sizes.zoo_examples).astype(np.int32), "random data of MNIST shape"


def zoo_row(sizes: Sizes, row: int) -> Row:
    """One epoch of a zoo of MNIST MLPs from their inits: zoo.train_models against batched matmuls (baddbmm)."""
    config = mnist_mlp.get_config()
    z, num, model = config.zoo, sizes.zoo_models, build_model(config.model)
    x, y, provenance = mnist(sizes)
    tx = zoo.make_optimizer(z.optimizer, z.learning_rate, z.weight_decay, z.schedule)
    torch_x, torch_y, last = torch.from_numpy(x.reshape(len(x), -1)), torch.from_numpy(y).long(), {}
    settings = {key: z[key] for key in ("batch_size", "drop_last", "scan_steps")}  # as stages.train_chunks passes them
    settings.update(init=model_initializer(config.model), models_per_vmap=config.models_per_vmap, progress=False)
    indices, inputs = np.arange(num), input_pipeline("mnist")

    def run_jax() -> None:
        last["jax"] = zoo.train_models(
            model, tx, x, y, seed=0, model_indices=indices, epochs=1, inputs=inputs, **settings
        )

    def run_torch() -> None:
        last["torch"] = tr.train_mlp_zoo_epoch(
            torch_x, torch_y, num, config.model.features, z.batch_size, z.learning_rate
        )

    def report() -> str:
        (ours, our_loss), (theirs, their_loss) = last["jax"], last["torch"]
        return (
            f"{provenance}; parameters per model JAX {count(ours) // num:,}, PyTorch {count(theirs) // num:,}; "
            f"mean loss in the epoch JAX {our_loss.mean():.4f}, PyTorch {their_loss.mean():.4f}"
        )

    label = f"zoo of {num} MNIST MLPs, 1 epoch of {len(x):,} ({provenance}), batch {z.batch_size}"
    return Row(label, "epoch", run_jax, run_torch, report=report)


def planted_zoo(model: Any, spec: Any, num: int) -> list[Any]:
    """Model 0 and num - 1 copies of it plus N(0, 0.01^2) noise, every hidden-unit group permuted at random."""
    reference = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    models, rng = [jax.tree.map(np.asarray, reference)], np.random.default_rng(0)
    for i in range(1, num):
        noisy = jax.tree.map(lambda leaf: leaf + 0.01 * rng.standard_normal(leaf.shape, np.float32), models[0])
        perms = permutations.random_permutation(jax.random.key(i), spec, reference)
        models.append(jax.tree.map(np.asarray, permutations.apply_permutation(spec, perms, noisy)))
    return models


def match_row(sizes: Sizes, row: int) -> Row:
    """Git Re-Basin of every model to model 0: canonical.align_models against torch similarities + scipy."""
    config = resnet20.get_config()
    model, spec, max_iter = build_model(config.model), permutation_spec(config.model), config.canonical.max_iter
    models = planted_zoo(model, spec, 3 if FLAGS.quick else FLAGS.match_models)
    states, key, last = [tr.flax_to_state_dict(variables) for variables in models], jax.random.key(5), {}
    torch_spec = tr.resnet_permutation_spec(tr.ResNet20())

    def run_jax() -> None:
        last["jax"] = list(canonical.align_models(key, spec, models[0], models, 0, max_iter))

    def run_torch() -> None:
        generator, last["torch"], last["sweeps"] = torch.Generator().manual_seed(0), states[:1], []
        for state in states[1:]:
            perms, sweeps = tr.weight_matching(torch_spec, states[0], state, generator, max_iter)
            last["torch"].append(tr.apply_permutation(torch_spec, perms, state))
            last["sweeps"].append(sweeps)

    def report() -> str:
        aligned = [tr.flax_to_state_dict(variables) for variables in last["jax"]]
        worst = max(gap(a[n], b[n]) for a, b in zip(aligned, last["torch"], strict=True) for n in torch_spec)
        sweeps = [
            permutations.weight_matching(jax.random.fold_in(key, i), spec, models[0], models[i], max_iter).sweeps
            for i in range(1, len(models))
        ]
        return (
            f"{len(models)} models; sweeps per model JAX {np.mean(sweeps):.2f}, PyTorch "
            f"{np.mean(last['sweeps']):.2f}; max |JAX - PyTorch| of the aligned weights {worst:.1e}"
        )

    label = f"weight matching of {len(models) - 1} ResNet-20s to model 0 (planted permutations)"
    return Row(label, "call", run_jax, run_torch, report=report)


def bn_row(sizes: Sizes, row: int) -> Row:
    """BatchNorm recalibration of an ensemble: bn_recalibration.recalibrate against momentum=None passes in torch."""
    config = resnet20.get_config()
    model, num = build_model(config.model), 2 if FLAGS.quick else FLAGS.bn_models
    init = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False))
    stacked = init(jax.random.split(jax.random.key(0), num))
    images = cifar_like(sizes.bn_batches * sizes.bn_batch, seed=2)[0]
    batches = bn_recalibration.calibration_batches(jax.random.key(6), images, sizes.bn_batches, sizes.bn_batch)
    inputs = input_pipeline("cifar10").eval(jnp.asarray(batches))
    torch_batches = torch.from_numpy(np.array(inputs)).permute(0, 1, 4, 2, 3).contiguous()
    states = [tr.flax_to_state_dict(jax.tree.map(lambda leaf, i=i: leaf[i], stacked)) for i in range(num)]
    torch_model, last = tr.ResNet20(), {}

    def run_jax() -> Any:
        last["jax"] = bn_recalibration.recalibrate(model, stacked, inputs, config.models_per_vmap)
        return last["jax"]

    def run_torch() -> None:
        last["torch"] = tr.recalibrate_bn(torch_model, states, torch_batches)

    def report() -> str:
        ours = tr.flax_to_state_dict(jax.tree.map(lambda leaf: leaf[-1], last["jax"]))
        worst = max(gap(ours[k] / (v.abs() + 1e-3), v / (v.abs() + 1e-3)) for k, v in last["torch"][-1].items())
        return f"{num} models; max relative |JAX - PyTorch| statistics {worst:.1e} (flax keeps the biased variance)"

    label = f"BatchNorm recalibration of {num} ResNet-20s, {sizes.bn_batches} batches of {sizes.bn_batch}"
    return Row(label, "call", run_jax, run_torch, report=report)


ROWS: dict[int, Callable[[Sizes, int], Row]] = {
    1: lambda sizes, row: flow_train_row(sizes, row, sizes.pca_dim, "PCA coefficients"),
    2: lambda sizes, row: flow_train_row(sizes, row, sizes.weight_dim, "full weights"),
    3: sample_row,
    4: resnet_train_row,
    5: resnet_eval_row,
    6: zoo_row,
    7: match_row,
    8: bn_row,
}


def run(sizes: Sizes) -> None:
    print(
        f"# dwf_jax vs PyTorch, {datetime.datetime.now().isoformat(timespec='minutes')}, "
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n"
        f"# jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; median of {FLAGS.repeats} alternating repeats after a warm-up"
        f"{'; QUICK sizes, a smoke test' if FLAGS.quick else ''}"
    )
    jax_peak, torch_peak = matmul_peak(sizes.matmul)
    peak = max(jax_peak, torch_peak)
    print(f"# float32 matmul {sizes.matmul}^2: JAX {jax_peak / 1e9:.1f}, PyTorch {torch_peak / 1e9:.1f} GFLOP/s")
    lines = []
    for index in [int(r) for r in FLAGS.rows.split(",")]:
        row = ROWS[index](sizes, index)
        jax_s, torch_s = measure(row, FLAGS.repeats)
        if row.report is not None:
            note(index, row.report())
        share = f"{row.flops / jax_s / peak:.0%} | {row.flops / torch_s / peak:.0%}" if row.flops else "- | -"
        lines.append(
            f"| {index} | {row.label} | {row.per} | {ms(jax_s)} | {ms(torch_s)} | {torch_s / jax_s:.2f}x | {share} |"
        )
        note(index, f"JAX {ms(jax_s)} ms, PyTorch {ms(torch_s)} ms per {row.per}")
    print("\n| # | work | per | JAX ms | PyTorch ms | PyTorch / JAX | JAX % of peak | PyTorch % of peak |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(FLAGS.threads or os.cpu_count())
    with tempfile.TemporaryDirectory(prefix="vs_pytorch_jax_cache_") as cache:
        # zoo.train_models jits its functions anew on every call: later calls load the compiled programs.
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        run(QUICK if FLAGS.quick else Sizes())


if __name__ == "__main__":
    app.run(main)
