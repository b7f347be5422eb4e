"""FLoWN's support-set conditioning (Table 2, A.4.2) on our flow: n-way k-shot support sets, a frozen encoder, and
the class-mean embedding a support-conditioned `VelocityField` (condition_dim > 0) sees beside the time.

FLoWN encodes a support set with a pre-trained CAML, averages the embeddings of each class and concatenates the
class means. CAML is not available offline, so our encoder is the penultimate layer of a small MLP trained for a
few epochs on a dataset *other* than the zoos' (`train_encoder`): frozen, cheap, deterministic from its seed, and it
sees every task through the same features, so the embedding tells tasks apart by what their images look like, not
by a label we hand it. The flow learns the two linear layers on top (`VelocityField`'s support_dense_0/1).

Training pairs each zoo model of dataset d with one of B precomputed embeddings of support sets of d (`support_bank`,
picked per row and step inside the jitted step, `flow.make_train_chunk`): encoding images inside the step would cost
more than the flow, and B fresh draws per dataset are enough for the flow to see the embedding's spread rather than
one vector it could memorise as a label.
"""

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Features = Callable[[np.ndarray], np.ndarray]


def sample_support(
    key: jax.Array, images: np.ndarray, labels: np.ndarray, ways: int, shots: int
) -> tuple[np.ndarray, np.ndarray]:
    """An n-way k-shot support set of a training split: `shots` distinct examples of each class 0..ways-1.

    The classes are the first `ways`, not a random subset, so that slot c of the concatenated class means is class
    c in every dataset and every draw: the flow can then learn what each slot says about the weights of output c.
    Examples are drawn uniformly without replacement per class (stream fold_in(key, c)); the set is class-major.
    """
    if ways < 1 or shots < 1:
        raise ValueError(f"an empty support set: ways={ways} and shots={shots} must both be at least 1")
    labels = np.asarray(labels)
    chosen = []
    for c in range(ways):
        members = np.flatnonzero(labels == c)
        if len(members) < shots:
            raise ValueError(f"class {c} has {len(members)} examples, fewer than shots={shots}")
        pick = jax.random.choice(jax.random.fold_in(key, c), len(members), (shots,), replace=False)
        chosen.append(members[np.asarray(pick)])
    rows = np.concatenate(chosen)
    return np.asarray(images)[rows], labels[rows]


class _EncoderMLP(nn.Module):
    """784-hidden-classes MLP; its ReLU hidden layer is the encoder's feature."""

    hidden: int
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, features_only: bool = False) -> jax.Array:
        h = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return h if features_only else nn.Dense(self.num_classes)(h)


class Encoder(NamedTuple):
    """A frozen encoder: `features(images) -> (n, feature_dim)` float32, and its accuracy on its own training data."""

    features: Features
    feature_dim: int
    train_accuracy: float


def train_encoder(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    hidden: int = 64,
    epochs: int = 2,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
) -> Encoder:
    """Train the encoder MLP (Adam, cross-entropy) on `images` (n, 28, 28, 1) in [0, 1]; same seed, same bits.

    Pick a dataset the zoos were not trained on (e.g. grey CIFAR-10): then the features are not tuned to any task
    the flow is asked about, as CAML was not tuned to FLoWN's zoos.
    """
    model = _EncoderMLP(hidden, num_classes)
    x, y = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)
    key = jax.random.key(seed)
    params = model.init(jax.random.fold_in(key, 0), x[:1])["params"]
    tx = optax.adam(learning_rate)
    steps = len(x) // batch_size

    @jax.jit
    def epoch(carry: tuple, number: jax.Array) -> tuple:
        order = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 1), number), len(x))
        batches = order[: steps * batch_size].reshape(steps, batch_size)

        def step(carry: tuple, rows: jax.Array) -> tuple:
            params, opt_state = carry

            def loss(p):
                logits = model.apply({"params": p}, x[rows])
                return optax.softmax_cross_entropy_with_integer_labels(logits, y[rows]).mean()

            grads = jax.grad(loss)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(step, carry, batches)[0]

    carry = (params, tx.init(params))
    for number in range(epochs):
        carry = epoch(carry, jnp.asarray(number))
    params = carry[0]
    apply = jax.jit(
        lambda batch, features_only: model.apply({"params": params}, batch, features_only), static_argnums=1
    )
    predictions = np.concatenate([np.argmax(apply(x[i : i + 4096], False), -1) for i in range(0, len(x), 4096)])
    accuracy = float(np.mean(predictions == np.asarray(labels)) * 100)
    return Encoder(lambda batch: np.asarray(apply(jnp.asarray(batch, jnp.float32), True)), hidden, accuracy)


def class_mean_embedding(
    features_fn: Features, support_images: np.ndarray, support_labels: np.ndarray, ways: int
) -> np.ndarray:
    """(ways * feature_dim,) float32: per class 0..ways-1 the mean feature of its shots, concatenated in class order.

    FLoWN A.4.2's dataset embedding before its two linear layers. The order of the support examples does not
    matter: each class's feature rows are sorted before a float64 sum, so a reordered set gives the same bits.
    """
    labels = np.asarray(support_labels)
    if len(labels) == 0 or ways < 1:
        raise ValueError(f"an empty support set ({len(labels)} examples, ways={ways})")
    features = np.asarray(features_fn(np.asarray(support_images)), np.float64)
    means = []
    for c in range(ways):
        rows = features[labels == c]
        if len(rows) == 0:
            raise ValueError(f"the support set has no example of class {c} (ways={ways})")
        rows = rows[np.lexsort(rows.T[::-1])]
        means.append(rows.sum(axis=0) / len(rows))
    return np.concatenate(means).astype(np.float32)


def support_bank(
    key: jax.Array, features_fn: Features, images: np.ndarray, labels: np.ndarray, ways: int, shots: int, size: int
) -> np.ndarray:
    """(size, ways * feature_dim): embeddings of `size` independent support sets (stream fold_in(key, i))."""
    return np.stack(
        [
            class_mean_embedding(
                features_fn, *sample_support(jax.random.fold_in(key, i), images, labels, ways, shots), ways
            )
            for i in range(size)
        ]
    )


def retrieval_scores(accuracies: np.ndarray, top: int = 5) -> dict[str, float]:
    """FLoWN's Table 2 view of M generated nets' accuracies: their mean, the best (top-1), the mean of the best
    `top` (top-5), and the worst, which shows whether a retrieval fails for a few nets or for all."""
    values = np.sort(np.asarray(accuracies, np.float64))[::-1]
    if len(values) < top:
        raise ValueError(f"top-{top} needs at least {top} generated nets, got {len(values)}")
    return {
        "mean": float(values.mean()),
        "top1": float(values[0]),
        f"top{top}": float(values[:top].mean()),
        "min": float(values[-1]),
    }
