"""PyTorch state_dict layout of every architecture: one mapping table per model, read both ways.

Each table lists, in the torch module's order, which state_dict keys hold which
Flax leaves and how the arrays turn into each other: Linear (out, in) <-> Dense
(in, out), Conv OIHW <-> HWIO, BatchNorm weight/bias/running_mean/running_var
<-> scale/bias/mean/var, packed or per-head attention projections <-> flax's
(dim, heads, head_dim) kernels. The key names are those of the DeepWeightFlow
reference code (MLP, ResNet-20, ViT), torchvision (ResNet-18) and Hugging Face
(BERT, as `BertForSequenceClassification` with one label), so their zoos import
as they are and exported nets load into those modules (`dwf_jax.torch_models`).
Arrays are numpy; no torch is needed.
"""

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

PyTree = Any
Path = tuple[str, ...]


class LayoutMismatch(ValueError):
    """A state_dict that does not fit the architecture: the first key or shape that differs is named."""


class Entry(NamedTuple):
    """State-dict keys and the Flax leaves they hold, and the conversions between them (each a tuple of arrays).

    An entry without Flax leaves is a buffer torch keeps and we do not (BatchNorm's num_batches_tracked):
    written on export, optional and dropped on import.
    """

    torch_keys: tuple[str, ...]
    flax_paths: tuple[Path, ...]
    to_torch: Callable[..., tuple]
    to_flax: Callable[..., tuple]


def _one(to_torch: Callable, to_flax: Callable, torch_key: str, flax_path: Path) -> Entry:
    return Entry((torch_key,), (flax_path,), lambda a: (to_torch(a),), lambda a: (to_flax(a),))


def _same(torch_key: str, flax_path: Path) -> Entry:
    return _one(lambda a: a, lambda a: a, torch_key, flax_path)


def _transposed(torch_key: str, flax_path: Path) -> Entry:
    return _one(lambda a: a.T, lambda a: a.T, torch_key, flax_path)


def linear(torch_name: str, flax_name: Path, bias: bool = True) -> list[Entry]:
    """torch.nn.Linear's weight (out, in) and bias <-> flax Dense's kernel (in, out) and bias."""
    entries = [_transposed(f"{torch_name}.weight", ("params", *flax_name, "kernel"))]
    return entries + ([_same(f"{torch_name}.bias", ("params", *flax_name, "bias"))] if bias else [])


def conv(torch_name: str, flax_name: Path, bias: bool = True) -> list[Entry]:
    """torch.nn.Conv2d's weight (O, I, H, W) <-> flax Conv's kernel (H, W, I, O)."""
    kernel = _one(
        lambda a: a.transpose(3, 2, 0, 1),
        lambda a: a.transpose(2, 3, 1, 0),
        f"{torch_name}.weight",
        ("params", *flax_name, "kernel"),
    )
    return [kernel] + ([_same(f"{torch_name}.bias", ("params", *flax_name, "bias"))] if bias else [])


def batch_norm(torch_name: str, flax_name: Path) -> list[Entry]:
    """BatchNorm2d's affine parameters and running statistics <-> flax BatchNorm's params and batch_stats."""
    tracked = Entry((f"{torch_name}.num_batches_tracked",), (), lambda: (np.zeros((), np.int64),), lambda a: ())
    return [
        _same(f"{torch_name}.weight", ("params", *flax_name, "scale")),
        _same(f"{torch_name}.bias", ("params", *flax_name, "bias")),
        _same(f"{torch_name}.running_mean", ("batch_stats", *flax_name, "mean")),
        _same(f"{torch_name}.running_var", ("batch_stats", *flax_name, "var")),
        tracked,
    ]


def layer_norm(torch_name: str, flax_name: Path) -> list[Entry]:
    return [
        _same(f"{torch_name}.weight", ("params", *flax_name, "scale")),
        _same(f"{torch_name}.bias", ("params", *flax_name, "bias")),
    ]


def _heads_in(kernel: jax.Array) -> jax.Array:
    """flax (dim, heads, head_dim) -> torch Linear weight (heads * head_dim, dim)."""
    return kernel.reshape(kernel.shape[0], -1).T


def _heads_out(kernel: jax.Array) -> jax.Array:
    """flax output kernel (heads, head_dim, dim) -> torch Linear weight (dim, heads * head_dim)."""
    return kernel.reshape(-1, kernel.shape[-1]).T


def _split_in(weight: jax.Array, heads: int) -> jax.Array:
    return weight.T.reshape(weight.shape[1], heads, -1)


def separate_attention(torch_names: dict[str, str], flax_name: Path, heads: int) -> list[Entry]:
    """Query, key, value and output as four torch Linears (Hugging Face BERT) <-> flax MultiHeadDotProductAttention."""
    entries = []
    for part in ("query", "key", "value"):
        path = ("params", *flax_name, part)
        entries.append(_one(_heads_in, lambda a: _split_in(a, heads), f"{torch_names[part]}.weight", (*path, "kernel")))
        entries.append(
            _one(lambda a: a.reshape(-1), lambda a: a.reshape(heads, -1), f"{torch_names[part]}.bias", (*path, "bias"))
        )
    out = ("params", *flax_name, "out")
    entries.append(
        _one(_heads_out, lambda a: a.T.reshape(heads, -1, a.shape[0]), f"{torch_names['out']}.weight", (*out, "kernel"))
    )
    return entries + [_same(f"{torch_names['out']}.bias", (*out, "bias"))]


def packed_attention(qkv_name: str, proj_name: str, flax_name: Path, heads: int) -> list[Entry]:
    """One Linear for [q|k|v] and one projection (the reference code's ViT) <-> flax MultiHeadDotProductAttention."""
    parts = [("params", *flax_name, part) for part in ("query", "key", "value")]

    def weights_to_flax(weight: jax.Array) -> tuple:
        return tuple(_split_in(w, heads) for w in jnp.split(weight, 3, axis=0))

    def biases_to_flax(bias: jax.Array) -> tuple:
        return tuple(b.reshape(heads, -1) for b in jnp.split(bias, 3))

    out = ("params", *flax_name, "out")
    return [
        Entry(
            (f"{qkv_name}.weight",),
            tuple((*p, "kernel") for p in parts),
            lambda *kernels: (jnp.concatenate([_heads_in(k) for k in kernels], axis=0),),
            weights_to_flax,
        ),
        Entry(
            (f"{qkv_name}.bias",),
            tuple((*p, "bias") for p in parts),
            lambda *biases: (jnp.concatenate([b.reshape(-1) for b in biases]),),
            biases_to_flax,
        ),
        _one(_heads_out, lambda a: a.T.reshape(heads, -1, a.shape[0]), f"{proj_name}.weight", (*out, "kernel")),
        _same(f"{proj_name}.bias", (*out, "bias")),
    ]


def _mlp_table(model_config: ml_collections.ConfigDict, template: PyTree) -> list[Entry]:
    return [entry for i in range(len(model_config.features)) for entry in linear(f"fc{i + 1}", (f"Dense_{i}",))]


def _chw_rows(kernel_rows: int, channels: int) -> np.ndarray:
    """Row order that turns a Dense kernel read after an HWC flatten into one read after torch's CHW flatten."""
    side = math.isqrt(kernel_rows // channels)
    return np.arange(kernel_rows).reshape(side, side, channels).transpose(2, 0, 1).reshape(-1)


def _smallcnn_table(model_config: ml_collections.ConfigDict, template: PyTree) -> list[Entry]:
    params = template["params"]
    convs = sorted((name for name in params if name.startswith("conv")), key=lambda name: int(name[4:]))
    entries = []
    for name in convs:
        entries += conv(name, (name,)) + batch_norm(f"bn{name[4:]}", (f"bn{name[4:]}",))
    rows = params["hidden"]["kernel"].shape[0]
    order = _chw_rows(rows, params[convs[-1]]["kernel"].shape[-1])
    inverse = np.argsort(order)
    entries.append(_one(lambda a: a[order].T, lambda a: a.T[inverse], "hidden.weight", ("params", "hidden", "kernel")))
    entries.append(_same("hidden.bias", ("params", "hidden", "bias")))
    return entries + linear("classifier", ("classifier",))


def _resnet_table(model_config: ml_collections.ConfigDict, template: PyTree) -> list[Entry]:
    """ResNet-20 in the reference code's names (`shortcut`, `linear`), ResNet-18 in torchvision's (`downsample`,
    `fc`)."""
    params = template["params"]
    torchvision = model_config.name == "resnet18"
    shortcut, head = ("downsample", "fc") if torchvision else ("shortcut", "linear")
    entries = conv("conv1", ("stem_conv",), bias=False) + batch_norm("bn1", ("stem_bn",))
    blocks = sorted(
        (name for name in params if name.startswith("stage")),
        key=lambda name: tuple(int(part) for part in name.removeprefix("stage").split("_block")),
    )
    for name in blocks:
        stage, block = (int(part) for part in name.removeprefix("stage").split("_block"))
        torch_block = f"layer{stage}.{block}"
        for layer in ("1", "2"):
            entries += conv(f"{torch_block}.conv{layer}", (name, f"conv{layer}"), bias=False)
            entries += batch_norm(f"{torch_block}.bn{layer}", (name, f"bn{layer}"))
        if "shortcut_conv" in params[name]:
            entries += conv(f"{torch_block}.{shortcut}.0", (name, "shortcut_conv"), bias=False)
            entries += batch_norm(f"{torch_block}.{shortcut}.1", (name, "shortcut_bn"))
    return entries + linear(head, ("classifier",))


def _vit_table(model_config: ml_collections.ConfigDict, template: PyTree) -> list[Entry]:
    entries = conv("patch_embed.proj", ("patch_embedding",))
    entries += [_same("cls_token", ("params", "cls_token")), _same("pos_embed", ("params", "pos_embedding"))]
    for i in range(model_config.depth):
        block, ours = f"blocks.{i}", (f"block_{i}",)
        entries += layer_norm(f"{block}.norm1", (*ours, "norm1"))
        entries += packed_attention(f"{block}.attn.qkv", f"{block}.attn.proj", (*ours, "attention"), model_config.heads)
        entries += layer_norm(f"{block}.norm2", (*ours, "norm2"))
        entries += linear(f"{block}.mlp.fc1", (*ours, "mlp_in")) + linear(f"{block}.mlp.fc2", (*ours, "mlp_out"))
    return entries + layer_norm("norm", ("norm",)) + linear("head", ("head",))


BERT_PREFIX = "bert."


def _bert_embeddings(prefix: str) -> list[Entry]:
    """Word and position embeddings, and token-type embeddings folded into the positions.

    Our BERT has no token types (every sequence is one segment), so Hugging Face's type-0 row is added to every
    position on import and exported as zeros: the same sums, hence the same hidden states.
    """
    embeddings = f"{prefix}embeddings"
    position_path = ("params", "position_embedding", "embedding")

    def positions_to_flax(positions: jax.Array, types: jax.Array) -> tuple:
        return (positions + types[0],)

    return [
        _same(f"{embeddings}.word_embeddings.weight", ("params", "word_embedding", "embedding")),
        Entry(
            (f"{embeddings}.position_embeddings.weight", f"{embeddings}.token_type_embeddings.weight"),
            (position_path,),
            lambda positions: (positions, jnp.zeros((2, positions.shape[1]), positions.dtype)),
            positions_to_flax,
        ),
        *layer_norm(f"{embeddings}.LayerNorm", ("embedding_norm",)),
    ]


def bert_backbone_table(model_config: ml_collections.ConfigDict, prefix: str = BERT_PREFIX) -> list[Entry]:
    """Hugging Face BertModel's weights (under `prefix`) <-> our BERT without its regression head."""
    entries = _bert_embeddings(prefix)
    for i in range(model_config.layers):
        layer, ours = f"{prefix}encoder.layer.{i}", (f"layer_{i}",)
        names = {part: f"{layer}.attention.self.{part}" for part in ("query", "key", "value")}
        entries += separate_attention(
            {**names, "out": f"{layer}.attention.output.dense"}, (*ours, "attention"), model_config.heads
        )
        entries += layer_norm(f"{layer}.attention.output.LayerNorm", (*ours, "attention_norm"))
        entries += linear(f"{layer}.intermediate.dense", (*ours, "mlp_in"))
        entries += linear(f"{layer}.output.dense", (*ours, "mlp_out"))
        entries += layer_norm(f"{layer}.output.LayerNorm", (*ours, "mlp_norm"))
    return entries + linear(f"{prefix}pooler.dense", ("pooler",))


def _bert_table(model_config: ml_collections.ConfigDict, template: PyTree) -> list[Entry]:
    return bert_backbone_table(model_config) + linear("classifier", ("regressor",))


TABLES: dict[str, Callable[[ml_collections.ConfigDict, PyTree], list[Entry]]] = {
    "mlp": _mlp_table,
    "smallcnn": _smallcnn_table,
    "resnet20": _resnet_table,
    "resnet18": _resnet_table,
    "vit_small": _vit_table,
    "bert": _bert_table,
}


def table(model_config: ml_collections.ConfigDict, template: PyTree) -> list[Entry]:
    """The mapping table of `model_config`'s architecture; `template` gives the shapes (variables or their shapes)."""
    if model_config.name not in TABLES:
        raise ValueError(f"no PyTorch layout for model {model_config.name!r}; layouts: {sorted(TABLES)}")
    return TABLES[model_config.name](model_config, template)


def _leaf(tree: PyTree, path: Path) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _put(tree: dict, path: Path, value: np.ndarray) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _flax_paths(tree: PyTree) -> list[Path]:
    return [tuple(key.key for key in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _torch_arrays(variables: PyTree, entries: list[Entry]) -> dict:
    """Every state_dict key's array (jax or numpy), so shapes can also be computed from a template alone."""
    arrays = {}
    for entry in entries:
        converted = entry.to_torch(*(jnp.asarray(_leaf(variables, path)) for path in entry.flax_paths))
        arrays.update(zip(entry.torch_keys, converted, strict=True))
    return arrays


def to_state_dict(model_config: ml_collections.ConfigDict, variables: PyTree) -> dict[str, np.ndarray]:
    """One model's variables as a PyTorch state_dict of numpy arrays, in the torch module's key order."""
    return {key: np.asarray(array) for key, array in _torch_arrays(variables, table(model_config, variables)).items()}


def expected_shapes(model_config: ml_collections.ConfigDict, template: PyTree) -> dict[str, tuple[int, ...]]:
    """The shape of every state_dict key for this architecture, computed without any array."""
    entries = table(model_config, template)
    shapes = jax.eval_shape(lambda variables: _torch_arrays(variables, entries), template)
    return {key: tuple(shape.shape) for key, shape in shapes.items()}


def variables_from(entries: list[Entry], state_dict: Mapping[str, Any], template: PyTree, what: str) -> PyTree:
    """The Flax leaves `entries` fill, from a state_dict checked key by key against `template`'s shapes.

    A missing key or a shape that differs is one LayoutMismatch naming the first such key (in `what`'s terms).
    """
    shapes = jax.eval_shape(lambda variables: _torch_arrays(variables, entries), template)
    variables: dict = {}
    for entry in entries:
        if not entry.flax_paths:
            continue
        for key in entry.torch_keys:
            if key not in state_dict:
                raise LayoutMismatch(f"state_dict has no {key!r}, which {what} needs (shape {shapes[key].shape})")
            found = tuple(np.shape(state_dict[key]))
            if found != tuple(shapes[key].shape):
                raise LayoutMismatch(f"state_dict key {key!r} has shape {found}; {what} needs {shapes[key].shape}")
        arrays = entry.to_flax(*(jnp.asarray(np.asarray(state_dict[key], np.float32)) for key in entry.torch_keys))
        for path, array in zip(entry.flax_paths, arrays, strict=True):
            _put(variables, path, np.asarray(array, np.float32))
    return variables


def from_state_dict(model_config: ml_collections.ConfigDict, state_dict: Mapping[str, Any], template: PyTree) -> PyTree:
    """A PyTorch state_dict (numpy arrays) as our variables, float32, shaped like `template`.

    A missing key, a shape that differs or a key the architecture does not have is one LayoutMismatch naming the
    first such key. Buffers we do not keep (num_batches_tracked) may be absent.
    """
    what = f"a {model_config.name} of this config"
    entries = table(model_config, template)
    variables = variables_from(entries, state_dict, template, what)
    known = {key for entry in entries for key in entry.torch_keys}
    unexpected = [key for key in state_dict if key not in known]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise LayoutMismatch(f"state_dict key {unexpected[0]!r} is not part of {what}{more}")
    missing = sorted(set(map("/".join, _flax_paths(template))) - set(map("/".join, _flax_paths(variables))))
    if missing:
        raise ValueError(f"the {model_config.name} layout table leaves {missing[0]!r} unset: a bug in torch_layout")
    return variables
