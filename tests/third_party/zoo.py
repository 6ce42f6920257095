"""Models no one here wrote, used as their libraries ship them (flax nnx / linen, equinox, haiku).

Each `make_*` returns a Case: a pure function of (params, batch) -> loss (the library's own
apply), its arguments, and shardings for the arguments as jax.jit users write them (PartitionSpecs
by parameter path): gshard sees the model only through `in_specs` and one mesh_split of the batch.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import gshard


@dataclass
class Case:
    name: str
    loss: Callable          # (params, aux, batch) -> scalar; aux: non-trained state (RNG keys)
    params: Any
    batch: Any
    specs: Callable         # (path string, leaf) -> PartitionSpec for a parameter
    batch_spec: Any         # PartitionSpec pytree prefix for the batch
    aux: Any = None


def path_specs(tree, rule) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, x: rule(jax.tree_util.keystr(p), x), tree)


def xent(logits, labels):
    import optax
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# ----- flax nnx: a Transformer block with dropout ------------------------------------------------
def make_nnx_transformer(d=32, heads=4, seq=8, batch=8, megatron=False) -> Case:
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.ln1, self.ln2 = nnx.LayerNorm(d, rngs=rngs), nnx.LayerNorm(d, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False,
                                               dropout_rate=0.1, rngs=rngs)
            self.fc1, self.fc2 = nnx.Linear(d, 4 * d, rngs=rngs), nnx.Linear(4 * d, d, rngs=rngs)
            self.drop = nnx.Dropout(0.1)
            self.head = nnx.Linear(d, 16, rngs=rngs)

        def __call__(self, x, rngs):
            x = x + self.drop(self.attn(self.ln1(x), deterministic=False, rngs=rngs), rngs=rngs)
            x = x + self.drop(self.fc2(jax.nn.gelu(self.fc1(self.ln2(x)))), rngs=rngs)
            return self.head(x)

    graphdef, state, rest = nnx.split(Block(nnx.Rngs(0)), nnx.Param, ...)
    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(batch, seq, d)).astype(np.float32),
             rng.integers(0, 16, (batch, seq)).astype(np.int32))

    def loss(state, key, batch):
        x, y = batch
        return xent(nnx.merge(graphdef, state, rest)(x, nnx.Rngs(dropout=key)), y)

    def spec(path, x):  # Megatron: heads and the MLP hidden dim over 'model'
        if not megatron:
            return P()
        for k in ("['query']", "['key']", "['value']"):
            if path.startswith(f"['attn']{k}"):
                return P(None, "model", None) if "['kernel']" in path else P("model", None)
        if path.startswith("['attn']['out']['kernel']"):
            return P("model", None, None)
        if path.startswith("['fc1']"):
            return P(None, "model") if "['kernel']" in path else P("model")
        if path.startswith("['fc2']['kernel']"):
            return P("model", None)
        return P()
    name = "nnx transformer " + ("megatron" if megatron else "batch")
    return Case(name, loss, state, batch, spec, (P("data"), P("data")), jax.random.key_data(jax.random.PRNGKey(1)))


# ----- flax linen: nn.scan(nn.remat(Block)) with dropout ---------------------------------------
def make_linen_scan(d=32, seq=8, batch=8, layers=2) -> Case:
    import flax.linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            h = nn.LayerNorm()(x)
            h = nn.SelfAttention(num_heads=4, dropout_rate=0.1, deterministic=False)(h)
            x = x + nn.Dropout(0.1, deterministic=False)(h)
            h = nn.Dense(4 * d)(nn.LayerNorm()(x))
            return x + nn.Dense(d)(nn.gelu(h)), None

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(nn.remat(Block), variable_axes={"params": 0},
                           split_rngs={"params": True, "dropout": True}, length=layers)
            x, _ = scan()(x, None)
            return nn.Dense(16)(x)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch, seq, d)).astype(np.float32)
    y = rng.integers(0, 16, (batch, seq)).astype(np.int32)
    model = Stack()
    params = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x)

    def loss(params, _, batch):
        x, y = batch
        out = model.apply(params, x, rngs={"dropout": jax.random.PRNGKey(2)})
        return xent(out, y)
    return Case("linen scan(remat)", loss, params, (x, y), lambda p, x: P(), (P("data"), P("data")))


# ----- flax nnx: a CNN with BatchNorm and avg_pool ---------------------------------------------
def make_nnx_cnn(batch=8, hw=16, spatial=False, channels=False) -> Case:
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.c1, self.b1 = nnx.Conv(3, 8, (3, 3), rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
            self.c2, self.b2 = nnx.Conv(8, 16, (3, 3), rngs=rngs), nnx.BatchNorm(16, rngs=rngs)
            self.out = nnx.Linear(16, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.avg_pool(nnx.relu(self.b1(self.c1(x))), (2, 2), (2, 2))
            x = nnx.relu(self.b2(self.c2(x)))
            return self.out(x.mean(axis=(1, 2)))

    graphdef, state, rest = nnx.split(CNN(nnx.Rngs(0)), nnx.Param, ...)
    rng = np.random.default_rng(2)
    b = (rng.normal(size=(batch, hw, hw, 3)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int32))

    def loss(state, stats, batch):  # batch statistics (BatchStat) in, updated inside
        x, y = batch
        return xent(nnx.merge(graphdef, state, stats, copy=True)(x), y)
    def spec(path, x):  # channels over 'model': conv output features and their BatchNorm
        if not channels or path.startswith("['out']"):
            return P()
        return P(None, None, None, "model") if np.ndim(x) == 4 else P("model")
    bspec = (P(None, "data"), P()) if spatial else (P("data"), P("data"))
    name = "nnx cnn " + ("spatial" if spatial else "channels" if channels else "batch")
    return Case(name, loss, state, b, spec, bspec, rest)


# ----- equinox ---------------------------------------------------------------------------------
def make_eqx_mlp(batch=16, d=24) -> Case:
    import equinox as eqx
    mlp = eqx.nn.MLP(d, 10, 64, 2, key=jax.random.PRNGKey(0))
    params, static = eqx.partition(mlp, eqx.is_array)
    rng = np.random.default_rng(3)
    b = (rng.normal(size=(batch, d)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int32))

    def loss(params, _, batch):
        x, y = batch
        return xent(jax.vmap(eqx.combine(params, static))(x), y)
    return Case("eqx mlp", loss, params, b, lambda p, x: P(), (P("data"), P("data")))


def make_eqx_attention(batch=8, seq=8, d=32) -> Case:
    import equinox as eqx
    attn = eqx.nn.MultiheadAttention(4, d, key=jax.random.PRNGKey(1))
    params, static = eqx.partition(attn, eqx.is_array)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(batch, seq, d)).astype(np.float32)

    def loss(params, _, x):
        m = eqx.combine(params, static)
        return jnp.mean(jax.vmap(lambda t: m(t, t, t))(x) ** 2)

    def spec(path, w):  # heads over 'model': q/k/v outputs, o input
        if np.ndim(w) != 2:
            return P()
        return P(None, "model") if "output_proj" in path else P("model", None)
    return Case("eqx attention megatron", loss, params, x, spec, P("data"))


def make_eqx_cnn(batch=8, hw=16, spatial=False) -> Case:
    import equinox as eqx
    k = jax.random.split(jax.random.PRNGKey(2), 3)
    layers = [eqx.nn.Conv2d(3, 8, 3, padding=1, key=k[0]), eqx.nn.GroupNorm(4, 8),
              eqx.nn.MaxPool2d(2, 2), eqx.nn.Conv2d(8, 8, 3, padding=1, key=k[1])]
    head = eqx.nn.Linear(8, 10, key=k[2])
    model = (layers, head)
    params, static = eqx.partition(model, eqx.is_array)
    rng = np.random.default_rng(5)
    b = (rng.normal(size=(batch, 3, hw, hw)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int32))

    def apply(m, x):  # one image [C, H, W], as equinox layers take it
        layers, head = m
        for layer in layers:
            x = layer(x)
            x = jax.nn.relu(x) if not isinstance(layer, eqx.nn.MaxPool2d) else x
        return head(x.mean(axis=(1, 2)))

    def loss(params, _, batch):
        x, y = batch
        m = eqx.combine(params, static)
        return xent(jax.vmap(lambda t: apply(m, t))(x), y)
    bspec = (P(None, None, "data"), P()) if spatial else (P("data"), P("data"))
    return Case("eqx cnn " + ("spatial" if spatial else "batch"), loss, params, b, lambda p, x: P(), bspec)


# ----- haiku ResNet-50 as shipped ----------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _haiku_resnet50(batch: int, hw: int):
    """(model, params, state, x, y): the init compiled once (op by op it takes ~25 s on CPU) and
    shared by the batch- and spatially-split cases."""
    import haiku as hk
    model = hk.transform_with_state(lambda x, t: hk.nets.ResNet50(10)(x, is_training=t))
    rng = np.random.default_rng(6)
    x = rng.normal(size=(batch, hw, hw, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    params, state = jax.jit(model.init, static_argnums=2)(jax.random.PRNGKey(0), x, True)
    return model, params, state, x, y


def make_haiku_resnet50(batch=8, hw=32, spatial=False):
    model, params, state, x, y = _haiku_resnet50(batch, hw)

    def train_step(params, state, batch):
        def loss(p):
            logits, st = model.apply(p, state, None, batch[0], True)
            return xent(logits, batch[1]), st
        (l, st), g = jax.value_and_grad(loss, has_aux=True)(params)
        return jax.tree_util.tree_map(lambda p, d: p - 0.01 * d, params, g), st, l
    bspec = (P("data", "model"), P("data")) if spatial else (P("data"), P("data"))
    return train_step, (params, state, (x, y)), bspec


def annotated(case: Case, mesh_axes) -> Callable:
    """The wrapper gshard sees: the model unchanged, its batch annotated."""
    def fn(params, aux, batch):
        if isinstance(case.batch_spec, P):
            batch = gshard.mesh_split(batch, fit(case.batch_spec, mesh_axes, np.ndim(batch)))
        else:
            batch = tuple(gshard.mesh_split(b, fit(s, mesh_axes, np.ndim(b)))
                          for b, s in zip(batch, case.batch_spec))
        return case.loss(params, aux, batch)
    return fn


def param_specs(case: Case, mesh_axes):
    return path_specs(case.params, lambda p, x: fit(case.specs(p, x), mesh_axes, np.ndim(x)))


def fit(spec, mesh_axes, rank):
    """`spec` with axes the mesh lacks left unsplit, one entry per dim."""
    entries = [e if (e is None or e in mesh_axes) else None for e in spec]
    return P(*(entries + [None] * (rank - len(entries))))
