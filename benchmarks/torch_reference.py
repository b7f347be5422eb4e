"""Plain PyTorch versions of dwf_jax's numeric work, for benchmarks/vs_pytorch.py.

Written from the paper (Table 14, Appendix C) and dwf_jax's own definitions: the
velocity field and its AdamW step, RK4 sampling, the CIFAR ResNet-20 with its
crop-and-flip augmentation, a zoo of MLPs trained together with batched matmuls,
Git Re-Basin weight matching and BatchNorm recalibration. Images are NCHW, the
PyTorch convention; the converters below read dwf_jax's (flax) variables.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

CIFAR10_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
CIFAR10_STD = torch.tensor([0.2023, 0.1994, 0.2010]).view(3, 1, 1)
Spec = dict[str, tuple[str | None, ...]]  # state-dict name -> permutation group of each axis (None: fixed)


class VelocityField(nn.Module):
    """v(x, t): t -> Linear-GELU-Linear embedding, concatenated after x, then [h, h/2, h] Linear-LN-GELU(-Dropout)."""

    def __init__(self, dim: int, hidden: int, time_embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.time_in, self.time_out = nn.Linear(1, time_embed_dim), nn.Linear(time_embed_dim, time_embed_dim)
        widths = [dim + time_embed_dim, hidden, hidden // 2, hidden]
        self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.norms = nn.ModuleList(nn.LayerNorm(b, eps=1e-6) for b in widths[1:])  # flax's epsilon
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = torch.cat([x, self.time_out(F.gelu(self.time_in(t[:, None])))], dim=-1)
        for i, (dense, norm) in enumerate(zip(self.dense, self.norms, strict=True)):
            h = F.gelu(norm(dense(h)))
            if i < 2:
                h = self.dropout(h)
        return self.out(h)


def flow_optimizer(
    model: nn.Module, learning_rate: float, weight_decay: float, iterations: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (0.9, 0.95) with cosine annealing to zero, as dwf_jax.flow.make_optimizer."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, betas=(0.9, 0.95), weight_decay=weight_decay, fused=True
    )
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)


def flow_train_step(
    model: VelocityField,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: Tensor,
    batch_size: int,
    source_std: float,
    sigma: float,
) -> Tensor:
    """One conditional flow matching step on a random minibatch of zoo rows: MSE of v(x_t, t) against x1 - x0."""
    x1 = data[torch.randperm(data.shape[0])[:batch_size]]
    x0 = source_std * torch.randn_like(x1)
    t = torch.rand(batch_size)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1 + sigma * torch.randn_like(x1)
    loss = F.mse_loss(model(x_t, t), x1 - x0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach()


@torch.inference_mode()
def sample_rk4(model: VelocityField, x0: Tensor, num_steps: int) -> Tensor:
    """Integrate dx/dt = v(x, t) from 0 to 1 in `num_steps` classic RK4 steps (the model in eval mode)."""
    model.eval()
    dt, x = 1.0 / num_steps, x0

    def field(x: Tensor, t: float) -> Tensor:
        return model(x, torch.full((x.shape[0],), t))

    for i in range(num_steps):
        t = i * dt
        k1 = field(x, t)
        k2 = field(x + 0.5 * dt * k1, t + 0.5 * dt)
        k3 = field(x + 0.5 * dt * k2, t + 0.5 * dt)
        k4 = field(x + dt * k3, t + dt)
        x = x + (dt / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN plus shortcut (identity, or 1x1 conv + BN where the shape changes), ReLU."""

    def __init__(self, in_width: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_width, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.projects = stride != 1 or in_width != width
        if self.projects:
            self.shortcut_conv = nn.Conv2d(in_width, width, 1, stride, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(width)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (self.shortcut_bn(self.shortcut_conv(x)) if self.projects else x))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-20: stem conv3x3-BN-ReLU, 3 stages x 3 blocks of widths 16/32/64, pool, Linear."""

    widths = (16, 32, 64)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem_conv = nn.Conv2d(3, self.widths[0], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(self.widths[0])
        in_width, self.block_names = self.widths[0], []
        for s, width in enumerate(self.widths, start=1):
            for b in range(3):
                self.block_names.append(f"stage{s}_block{b}")
                self.add_module(self.block_names[-1], BasicBlock(in_width, width, 2 if s > 1 and b == 0 else 1))
                in_width = width
        self.classifier = nn.Linear(in_width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        for name in self.block_names:
            x = getattr(self, name)(x)
        return self.classifier(x.mean(dim=(2, 3)))


def from_nhwc(images: np.ndarray) -> Tensor:
    """dwf_jax's (N, H, W, C) images as a PyTorch (N, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(images), -1, -3)))


def normalize(images: Tensor) -> Tensor:
    """uint8 NCHW -> float32 (x / 255 - mean) / std per channel."""
    return (images.float() / 255 - CIFAR10_MEAN) / CIFAR10_STD


def random_crop_flip(images: Tensor, padding: int = 4) -> Tensor:
    """Per image of (N, C, H, W): zero-pad, crop at a random offset, flip with probability 1/2 (one gather)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n, 1))
    rows, cols = dy + torch.arange(h), dx + torch.arange(w)
    cols = torch.where(torch.rand(n, 1) < 0.5, cols.flip(1), cols)
    return padded[
        torch.arange(n)[:, None, None, None],
        torch.arange(c)[:, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def resnet_train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor, indices: Tensor
) -> Tensor:
    """Augment the stored uint8 minibatch, then one cross-entropy step in train mode."""
    model.train()
    loss = F.cross_entropy(model(normalize(random_crop_flip(images[indices]))), labels[indices])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_mlp_zoo_epoch(
    x: Tensor, y: Tensor, num_models: int, widths: Sequence[int], batch_size: int, learning_rate: float
) -> tuple[list[Tensor], Tensor]:
    """One epoch of `num_models` ReLU MLPs from Kaiming-uniform weights and zero biases, Adam, each its own order.

    The models' weights are stacked on a leading axis and every layer is one batched matmul (baddbmm);
    the loss is the sum of the models' mean losses, so each model gets exactly its own gradient.
    Returns the stacked weights and biases, and each model's mean loss over the epoch.
    """
    sizes = [x.shape[1], *widths]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        bound = math.sqrt(6.0 / fan_in)
        params += [(torch.rand(num_models, fan_in, fan_out) * 2 - 1) * bound, torch.zeros(num_models, 1, fan_out)]
    params = [p.requires_grad_() for p in params]
    optimizer = torch.optim.Adam(params, lr=learning_rate, fused=True)
    order = torch.argsort(torch.rand(num_models, x.shape[0]), dim=1)
    total = torch.zeros(num_models)
    for start in range(0, x.shape[0], batch_size):
        indices = order[:, start : start + batch_size]
        h = x[indices]
        for i in range(0, len(params), 2):
            h = torch.baddbmm(params[i + 1], h, params[i])
            h = F.relu(h) if i + 2 < len(params) else h
        losses = F.cross_entropy(h.flatten(0, 1), y[indices].flatten(), reduction="none").view(num_models, -1)
        optimizer.zero_grad(set_to_none=True)
        losses.mean(dim=1).sum().backward()
        optimizer.step()
        total += losses.detach().mean(dim=1)
    return [p.detach() for p in params], total / math.ceil(x.shape[0] / batch_size)


def resnet_permutation_spec(model: ResNet20) -> Spec:
    """Groups: a residual stream `stage{s}` per stage, `{block}_inner` per block; Conv2d weights are (out, in, h, w)."""
    spec: Spec = {}

    def conv_bn(conv: str, bn: str, in_group: str | None, out_group: str) -> None:
        spec[f"{conv}.weight"] = (out_group, in_group, None, None)
        for name in ("weight", "bias", "running_mean", "running_var"):
            spec[f"{bn}.{name}"] = (out_group,)

    conv_bn("stem_conv", "stem_bn", None, "stage1")
    in_group = "stage1"
    for name in model.block_names:
        stream = name.split("_")[0]
        conv_bn(f"{name}.conv1", f"{name}.bn1", in_group, f"{name}_inner")
        conv_bn(f"{name}.conv2", f"{name}.bn2", f"{name}_inner", stream)
        if getattr(model, name).projects:
            conv_bn(f"{name}.shortcut_conv", f"{name}.shortcut_bn", in_group, stream)
        in_group = stream
    spec["classifier.weight"] = (None, in_group)
    spec["classifier.bias"] = (None,)
    return spec


def permute(weight: Tensor, axes: Sequence[str | None], perms: Mapping[str, Tensor], skip: int = -1) -> Tensor:
    """`weight` with every permuted axis but `skip` reindexed by its group's permutation."""
    for axis, group in enumerate(axes):
        if group is not None and axis != skip:
            weight = weight.index_select(axis, perms[group])
    return weight


def _rows(weight: Tensor, axis: int) -> Tensor:
    """(n, rest): one row per index of `axis`."""
    return weight.movedim(axis, 0).reshape(weight.shape[axis], -1)


def weight_matching(
    spec: Spec, reference: Mapping[str, Tensor], params: Mapping[str, Tensor], generator: torch.Generator, max_iter: int
) -> tuple[dict[str, Tensor], int]:
    """Git Re-Basin weight matching (Ainsworth et al., 2023): the permutations P maximising <reference, P(params)>.

    Coordinate descent in float64: each sweep visits the groups in a random order and solves one linear
    assignment per group (scipy) on the similarity matrix computed with torch; a group's permutation changes
    only if that raises its similarity. Stops after a sweep with no change or `max_iter` sweeps.
    Returns the permutations and the number of sweeps.
    """
    params = {name: params[name].double() for name in spec}
    terms: dict[str, list[tuple[str, int, Tensor]]] = {}
    for name, axes in spec.items():
        for axis, group in enumerate(axes):
            if group is not None:
                flat_reference = _rows(reference[name].double(), axis)
                terms.setdefault(group, []).append((name, axis, flat_reference))
    groups = sorted(terms)
    perms = {group: torch.arange(terms[group][0][2].shape[0]) for group in groups}
    for sweep in range(1, max_iter + 1):
        changed = False
        for g in torch.randperm(len(groups), generator=generator).tolist():
            group = groups[g]
            similarity = sum(
                flat_reference @ _rows(permute(params[name], spec[name], perms, skip=axis), axis).T
                for name, axis, flat_reference in terms[group]
            ).numpy()
            rows, cols = linear_sum_assignment(similarity, maximize=True)
            old, new = similarity[rows, perms[group].numpy()].sum(), similarity[rows, cols].sum()
            if new - old > 1e-12 * max(abs(old), 1.0):
                perms[group], changed = torch.from_numpy(cols), True
        if not changed:
            return perms, sweep
    return perms, max_iter


def apply_permutation(spec: Spec, perms: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name: permute(value, spec[name], perms) if name in spec else value for name, value in state.items()}


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, states: Sequence[Mapping[str, Tensor]], batches: Tensor
) -> list[dict[str, Tensor]]:
    """Each model's BatchNorm running statistics re-estimated as the plain mean over `batches` (K, B, C, H, W)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    recalibrated = []
    for state in states:
        model.load_state_dict(state)
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the batches
        model.train()
        for batch in batches:
            model(batch)
        recalibrated.append({k: v.clone() for k, v in model.state_dict().items() if "running" in k})
    return recalibrated


def flax_to_state_dict(variables: Mapping) -> dict[str, Tensor]:
    """A flax ResNet's variables as the state dict of `ResNet20`, whose modules carry the same names.

    HWIO conv kernels become OIHW, Dense (in, out) kernels (out, in).
    """
    names = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    state = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in _leaves(variables[collection]):
            value = torch.from_numpy(np.array(leaf, np.float32))
            if path[-1] == "kernel":
                value = value.permute(3, 2, 0, 1) if value.ndim == 4 else value.T
            state[".".join([*path[:-1], names[path[-1]]])] = value.contiguous()
    return state


def flax_flow_to_state_dict(params: Mapping) -> dict[str, Tensor]:
    """dwf_jax's VelocityField params (Dense_0..5, LayerNorm_0..2) as the state dict of `VelocityField`."""
    modules = ["time_in", "time_out", "dense.0", "dense.1", "dense.2", "out"]
    state = {}
    for i, module in enumerate(modules):
        state[f"{module}.weight"] = torch.from_numpy(np.array(params[f"Dense_{i}"]["kernel"], np.float32).T.copy())
        state[f"{module}.bias"] = torch.from_numpy(np.array(params[f"Dense_{i}"]["bias"], np.float32))
    for i in range(3):
        state[f"norms.{i}.weight"] = torch.from_numpy(np.array(params[f"LayerNorm_{i}"]["scale"], np.float32))
        state[f"norms.{i}.bias"] = torch.from_numpy(np.array(params[f"LayerNorm_{i}"]["bias"], np.float32))
    return state


def _leaves(tree: Mapping, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    if not isinstance(tree, Mapping):
        return [(path, tree)]
    return [leaf for key, value in tree.items() for leaf in _leaves(value, (*path, key))]
