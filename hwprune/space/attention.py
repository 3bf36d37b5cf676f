"""Transformer units: whole attention heads and MLP width of Hugging Face style models.

A model that carries a transformers-style ``config`` (``num_attention_heads``,
``hidden_size``, ``intermediate_size``, ``num_hidden_layers``) is pruned here, not through
Torch-Pruning's channel groups: its blocks are found by their structure, and hwprune
groups their channels itself.

- Attention: in every layer the query, key and value projections (``q_proj``/``query``,
  ``k_proj``/``key``, ``v_proj``/``value``) and the first Linear after them that reads the
  attention output (``o_proj``, BERT's ``attention.output.dense``). Heads leave whole: the
  rows of their query head, the columns of the output projection, and with grouped-query
  attention (``num_key_value_heads`` < ``num_attention_heads``) a key/value head goes with
  the query heads that read it, so a unit step is one key/value group.
- MLP: in every layer the Linears that produce ``intermediate_size`` features (``up_proj``
  and ``gate_proj``, ``fc1``, ``intermediate.dense``) lose rows, those that read them
  (``down_proj``, ``fc2``, ``output.dense``) the same columns.

The config has one head count and one intermediate size for all layers, so each is one
unit for the whole model: every layer keeps the same number of heads and MLP channels
(which ones is decided per layer by the importance criterion), and the pruned model's
config (``num_attention_heads``, ``num_key_value_heads``, ``head_dim``,
``intermediate_size``) describes its weights. The hidden width is never pruned here.

A unit's channels are numbered in *rank space*: channel ``r * step + j`` is position ``j``
of each layer's ``r``-th most important block, so keeping the first ``k`` channels keeps
every layer's best ``k / step`` blocks.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hwprune.errors import ConfigError
from hwprune.space._opaque import _linear_cols, _linear_rows

log = logging.getLogger(__name__)

__all__ = [
    "Cut",
    "Family",
    "Transformer",
    "cache_output",
    "find",
    "fix_pruned",
    "from_pretrained",
    "plan",
]

_Q = ("q_proj", "query", "q")
_K = ("k_proj", "key", "k")
_V = ("v_proj", "value", "v")
# Module attributes that hold a head count (HF attention classes, by family).
_HEAD_ATTRS = ("num_heads", "num_attention_heads")
_KV_ATTRS = ("num_key_value_heads", "num_kv_heads")


@dataclass(frozen=True)
class _Attention:
    module: str  # the module that owns q/k/v (its head attributes are updated)
    q: str
    k: str
    v: str
    o: str
    heads: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class _Mlp:
    ups: tuple[str, ...]  # Linears producing the intermediate features (rows cut)
    downs: tuple[str, ...]  # Linears reading them (columns cut)
    width: int


@dataclass(frozen=True)
class Transformer:
    """The attention and MLP blocks of a transformers-style model, one of each per layer."""

    attention: tuple[_Attention, ...]
    mlp: tuple[_Mlp, ...]

    def layers(self) -> set[str]:
        out = {n for a in self.attention for n in (a.q, a.k, a.v, a.o)}
        return out | {n for m in self.mlp for n in (*m.ups, *m.downs)}


@dataclass(frozen=True)
class Cut:
    """One layer's share of a unit: which of its rows (``out``) or columns belong to which
    unit channel (``roots``, rank space)."""

    layer: str
    out: bool
    idxs: np.ndarray
    roots: np.ndarray


@dataclass(frozen=True)
class Family:
    """One unit over every layer: its channels per layer, its step and its cuts."""

    id: str
    kind: str  # "attention" or "mlp"
    channels: int
    step: int
    root: str  # the Linear whose geometry describes the unit
    layers: tuple[str, ...]
    cuts: tuple[Cut, ...]
    scores: np.ndarray  # mean score of each rank-space channel over the layers


def _hf_config(model: nn.Module) -> Any:
    """The model's transformers-style config, or None."""
    config = vars(model).get("config")
    needed = ("num_attention_heads", "hidden_size", "num_hidden_layers")
    if config is None or not all(isinstance(vars(config).get(k), int) for k in needed):
        return None
    return config


def _layer_list(model: nn.Module, count: int) -> list[tuple[str, nn.Module]] | None:
    """The ModuleList of the model's ``count`` transformer layers (the first that fits)."""
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == count > 0
            and any(isinstance(m, nn.Linear) for m in module[0].modules())
        ):
            return [(f"{name}.{i}", m) for i, m in enumerate(module)]
    return None


def _last(name: str) -> str:
    return name.rpartition(".")[2]


def _attention(prefix: str, layer: nn.Module, hidden: int, config: Any) -> _Attention | None:
    linears = [(n, m) for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
    pick = {
        role: next((i for i, (n, _) in enumerate(linears) if _last(n) in names), None)
        for role, names in (("q", _Q), ("k", _K), ("v", _V))
    }
    if None in pick.values():
        return None
    q, k, v = (linears[pick[r]] for r in ("q", "k", "v"))
    owner = q[0].rpartition(".")[0]
    module = layer.get_submodule(owner) if owner else layer
    head_dim = _int_attr(module, ("head_dim", "attention_head_size"))
    if head_dim is None:
        head_dim = vars(config).get("head_dim") or hidden // int(config.num_attention_heads)
    o = next(
        (n for n, m in linears[pick["v"] + 1 :]
         if m.in_features == q[1].out_features and m.out_features == hidden),
        None,
    )  # fmt: skip
    if o is None or q[1].out_features % head_dim or k[1].out_features % head_dim:
        return None
    heads, kv = q[1].out_features // head_dim, k[1].out_features // head_dim
    if v[1].out_features != k[1].out_features or heads % kv:
        return None
    full = lambda n: f"{prefix}.{n}" if n else prefix  # noqa: E731
    return _Attention(module=full(owner), q=full(q[0]), k=full(k[0]), v=full(v[0]), o=full(o),
                      heads=heads, kv_heads=kv, head_dim=int(head_dim))  # fmt: skip


def _int_attr(module: nn.Module, names: Iterable[str]) -> int | None:
    for name in names:
        value = vars(module).get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _mlp(prefix: str, layer: nn.Module, hidden: int, width: int, skip: set[str]) -> _Mlp | None:
    ups, downs = [], []
    for n, m in layer.named_modules():
        if not isinstance(m, nn.Linear) or f"{prefix}.{n}" in skip:
            continue
        if m.in_features == hidden and m.out_features == width:
            ups.append(f"{prefix}.{n}")
        elif m.in_features == width and m.out_features == hidden:
            downs.append(f"{prefix}.{n}")
    if not ups or not downs or width == hidden:
        return None  # a square MLP cannot be told from the attention by shapes alone
    return _Mlp(ups=tuple(ups), downs=tuple(downs), width=width)


def find(model: nn.Module) -> Transformer | None:
    """The attention and MLP blocks of a transformers-style model, or None for other models.

    Every layer must have the same layout (the config has one number of each); a model whose
    layers differ, or that has neither block, is left to Torch-Pruning's channel groups.
    """
    config = _hf_config(model)
    if config is None:
        return None
    hidden = int(config.hidden_size)
    layers = _layer_list(model, int(config.num_hidden_layers))
    if layers is None:
        return None
    attention = [_attention(p, m, hidden, config) for p, m in layers]
    attn = tuple(a for a in attention if a is not None)
    if len(attn) != len(layers) or len({(a.heads, a.kv_heads, a.head_dim) for a in attn}) != 1:
        attn = ()
    skip = {n for a in attn for n in (a.q, a.k, a.v, a.o)}
    width = vars(config).get("intermediate_size")
    mlps: tuple[_Mlp, ...] = ()
    if isinstance(width, int) and width > 0:
        found = [_mlp(p, m, hidden, width, skip) for p, m in layers]
        if all(f is not None for f in found):
            mlps = tuple(f for f in found if f is not None)
    if not attn and not mlps:
        return None
    return Transformer(attention=attn, mlp=mlps)


def _weights(model: nn.Module, name: str) -> torch.Tensor:
    return model.get_submodule(name).weight.detach().float()


def _layer_scores(
    model: nn.Module, rows: list[str], cols: list[str], size: int, importance: str
) -> np.ndarray:
    """Per-channel score of a block: the rows of ``rows`` and the columns of ``cols``."""
    p = 1 if importance == "l1" else 2
    total = torch.zeros(size)
    for name in rows:
        total += _weights(model, name).abs().pow(p).sum(dim=1)
        bias = model.get_submodule(name).bias
        if bias is not None:
            total += bias.detach().float().abs().pow(p)
    for name in cols:
        total += _weights(model, name).abs().pow(p).sum(dim=0)
    return total.numpy().astype(np.float64)


def _rank(block_scores: np.ndarray, importance: str, rng: np.random.Generator) -> np.ndarray:
    """Blocks of one layer, most important first."""
    if importance == "random":
        return rng.permutation(len(block_scores))
    return np.argsort(-block_scores, kind="stable")


def _attention_family(
    model: nn.Module, blocks: tuple[_Attention, ...], importance: str, rng: np.random.Generator
) -> Family:
    first = blocks[0]
    d, heads, kv = first.head_dim, first.heads, first.kv_heads
    rep = heads // kv  # query heads per key/value head (HF's repeat_kv order)
    step = rep * d
    cuts: list[Cut] = []
    ranked_scores = []
    for a in blocks:
        q_scores = _layer_scores(model, [a.q], [a.o], heads * d, importance)
        kv_scores = _layer_scores(model, [a.k, a.v], [], kv * d, importance)
        group = q_scores.reshape(kv, step).sum(1) + kv_scores.reshape(kv, d).sum(1)
        order = _rank(group, importance, rng)
        rank = np.empty(kv, dtype=np.int64)
        rank[order] = np.arange(kv)
        ranked_scores.append(group[order])
        q_idx = np.arange(heads * d)
        q_roots = rank[q_idx // step] * step + q_idx % step
        kv_idx = np.arange(kv * d)
        kv_roots = rank[kv_idx // d] * step + kv_idx % d
        cuts += [Cut(a.q, True, q_idx, q_roots), Cut(a.o, False, q_idx, q_roots),
                 Cut(a.k, True, kv_idx, kv_roots), Cut(a.v, True, kv_idx, kv_roots)]  # fmt: skip
    per_block = np.mean(ranked_scores, axis=0) / step
    return Family(
        id=first.module,
        kind="attention",
        channels=heads * d,
        step=step,
        root=first.q,
        layers=tuple(n for a in blocks for n in (a.q, a.k, a.v, a.o)),
        cuts=tuple(cuts),
        scores=np.repeat(per_block, step),
    )


def _mlp_family(
    model: nn.Module, blocks: tuple[_Mlp, ...], importance: str, rng: np.random.Generator
) -> Family:
    width = blocks[0].width
    cuts: list[Cut] = []
    ranked_scores = []
    idx = np.arange(width)
    for m in blocks:
        scores = _layer_scores(model, list(m.ups), list(m.downs), width, importance)
        order = _rank(scores, importance, rng)
        rank = np.empty(width, dtype=np.int64)
        rank[order] = np.arange(width)
        ranked_scores.append(scores[order])
        cuts += [Cut(n, True, idx, rank) for n in m.ups]
        cuts += [Cut(n, False, idx, rank) for n in m.downs]
    return Family(
        id=blocks[0].ups[0].rpartition(".")[0] or blocks[0].ups[0],
        kind="mlp",
        channels=width,
        step=1,
        root=blocks[0].ups[0],
        layers=tuple(n for m in blocks for n in (*m.ups, *m.downs)),
        cuts=tuple(cuts),
        scores=np.mean(ranked_scores, axis=0),
    )


def plan(
    model: nn.Module, found: Transformer, *, importance: str, seed: int, ignored: set[str]
) -> tuple[list[Family], list[tuple[str, str]]]:
    """The attention and MLP units of ``found`` and the (id, reason) of those left out."""
    if importance not in ("l1", "l2", "random"):
        raise ConfigError(
            f"importance {importance!r} is not available for the attention heads and MLP width "
            f"of {type(model).__name__}; use 'l2', 'l1' or 'random'"
        )
    rng = np.random.default_rng(seed)
    families, skipped = [], []
    for blocks, build in ((found.attention, _attention_family), (found.mlp, _mlp_family)):
        if not blocks:
            continue
        family = build(model, blocks, importance, rng)
        hit = sorted(set(family.layers) & ignored)
        if hit:
            skipped.append((family.id, (
                f"ignored_layers names {hit[0]}; every layer keeps the same {family.kind} width "
                "(the config has one number), so it is left whole in all layers"
            )))  # fmt: skip
            continue
        families.append(family)
    return families, skipped


def fix_pruned(pruned: nn.Module, found: Transformer) -> None:
    """Head counts and widths of the pruned copy's modules and config, from its weights."""
    config = _hf_config(pruned)
    if found.attention:
        first = found.attention[0]
        heads = kv = first.heads
        for a in found.attention:
            heads = pruned.get_submodule(a.q).out_features // a.head_dim
            kv = pruned.get_submodule(a.k).out_features // a.head_dim
            module = pruned.get_submodule(a.module)
            for attr in _HEAD_ATTRS:
                if isinstance(vars(module).get(attr), int):
                    setattr(module, attr, heads)
            for attr in _KV_ATTRS:
                if isinstance(vars(module).get(attr), int):
                    setattr(module, attr, kv)
            if isinstance(vars(module).get("all_head_size"), int):
                module.all_head_size = heads * a.head_dim
        if config is not None and heads != first.heads:
            config.num_attention_heads = heads
            if "num_key_value_heads" in vars(config):
                config.num_key_value_heads = kv
            # With fewer heads the default (hidden_size // heads) would be wrong: say it.
            config.head_dim = first.head_dim
    if found.mlp and config is not None:
        config.intermediate_size = pruned.get_submodule(found.mlp[0].ups[0]).out_features


def check_heads(module: nn.Module, heads: int, found: Transformer | None, name: str) -> bool:
    """Whether ``module`` is an attention block of ``found`` with ``heads`` heads (for
    ``num_heads``); ConfigError where it is one with another count."""
    if found is None:
        return False
    block = next((a for a in found.attention if a.module == name), None)
    if block is None:
        return False
    if heads != block.heads:
        raise ConfigError(f"num_heads gives {heads!r} heads for {name!r}, which has {block.heads}")
    return True


def cache_output(out: Any, *, path: str = "output") -> str | None:
    """Where the model's output holds something that is neither a tensor nor a plain value
    (the key/value cache of a decoder), as "output 'cache' (DynamicCache)"; or None."""
    if out is None or isinstance(out, (torch.Tensor, int, float, bool, str)):
        return None
    if isinstance(out, Mapping):
        for key, value in out.items():
            found = cache_output(value, path=f"output {key!r}")
            if found is not None:
                return found
        return None
    if isinstance(out, (tuple, list)):
        for i, value in enumerate(out):
            found = cache_output(value, path=f"{path}[{i}]")
            if found is not None:
                return found
        return None
    return f"{path} ({type(out).__name__})"


def from_pretrained(model_class: Any, path: Any, **kwargs: Any) -> nn.Module:
    """A pruned model saved with ``save_pretrained``, reloaded where the class's own
    ``from_pretrained`` cannot build it.

    Llama, Qwen2, ViT and other classes that read ``config.head_dim`` reload with their own
    ``from_pretrained``; this is the same for them. BERT-style classes derive the head size
    from ``hidden_size / num_attention_heads``: the model is built with the dense head count
    that the saved ``head_dim`` implies, its attention projections are cut to the saved head
    count, and the saved weights are loaded into it (every weight must be found).
    """
    config = model_class.config_class.from_pretrained(path)
    head_dim = vars(config).get("head_dim")
    heads = int(config.num_attention_heads)
    if not isinstance(head_dim, int) or _builds_heads(model_class, config, heads * head_dim):
        return model_class.from_pretrained(path, **kwargs)
    if config.hidden_size % head_dim:
        raise ConfigError(f"{path}: head_dim {head_dim} does not divide hidden_size")
    dense = copy.deepcopy(config)
    dense.num_attention_heads = config.hidden_size // head_dim
    model = model_class(dense)
    found = find(model)
    if found is None or not found.attention:
        raise ConfigError(f"{model_class.__name__} has no attention blocks to cut to {heads} heads")
    keep = list(range(heads * head_dim))
    for a in found.attention:
        for name in (a.q, a.k, a.v):
            _linear_rows(model.get_submodule(name), keep)
        _linear_cols(model.get_submodule(a.o), keep)
    fix_pruned(model, found)
    saved = _saved_weights(Path(path))
    result = model.load_state_dict(saved, strict=False)
    # save_pretrained leaves out a weight tied to another (a masked-LM decoder): it is loaded
    # with the one it shares its storage with.
    state = model.state_dict()
    loaded = {state[k].data_ptr() for k in saved if k in state}
    missing = [k for k in result.missing_keys if state[k].data_ptr() not in loaded]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"{path} does not match {model_class.__name__} with {heads} heads of {head_dim}: "
            f"missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}"
        )
    return model.eval()


def _builds_heads(model_class: Any, config: Any, width: int) -> bool:
    """Whether ``model_class(config)`` builds query projections ``width`` wide (built on the
    meta device: shapes only)."""
    with torch.device("meta"):
        probe = model_class(config)
    found = find(probe)
    if found is None or not found.attention:
        return True
    return probe.get_submodule(found.attention[0].q).out_features == width


def _saved_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{path} holds no .safetensors weights")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out
