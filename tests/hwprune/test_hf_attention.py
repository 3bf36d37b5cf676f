"""Hugging Face transformers models: whole heads (grouped-query aware) and MLP width.

Tiny configs from the library itself, random weights, nothing downloaded.
"""

from __future__ import annotations

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hwprune  # noqa: E402
from hwprune.errors import ConfigError, ExportError  # noqa: E402
from hwprune.export.onnx import export_onnx  # noqa: E402
from hwprune.space import ChannelSpace, Policy  # noqa: E402
from hwprune.space.attention import from_pretrained  # noqa: E402

SEQ = 16


def _ids(seq: int = SEQ) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 100, (1, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _decoder(family: str, *, hidden: int = 64, width: int = 128, use_cache: bool = False):
    torch.manual_seed(0)
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    config = config_class(vocab_size=100, hidden_size=hidden, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=width,
                          max_position_embeddings=128, use_cache=use_cache)  # fmt: skip
    return model_class(config).eval()


def _bert(*, hidden: int = 64, width: int = 128):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=width,
                                     max_position_embeddings=128)  # fmt: skip
    return transformers.BertModel(config).eval()


def _vit(*, hidden: int = 64, width: int = 128, image: int = 32):
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=image, patch_size=8, hidden_size=hidden,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=width, num_labels=10)  # fmt: skip
    return transformers.ViTForImageClassification(config).eval()


def _main(out) -> torch.Tensor:
    return out["logits"] if "logits" in out else out["last_hidden_state"]


def _run(model, x) -> torch.Tensor:
    with torch.no_grad():
        return _main(model(**x) if isinstance(x, dict) else model(x))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_decoder_loses_key_value_groups_with_their_query_heads_and_reloads(family, tmp_path):
    model, x = _decoder(family), _ids()
    space = ChannelSpace(model, example_inputs=x)
    assert [u.kind for u in space.units] == ["attention", "mlp"]
    attn = space.units[0]
    assert (attn.channels, attn.step) == (4 * 16, 2 * 16)  # a step: one kv head, two q heads
    pruned = space.apply(Policy.uniform(space, 0.5))
    config = pruned.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (2, 1)
    assert (config.head_dim, config.intermediate_size) == (16, 64)
    assert model.config.num_attention_heads == 4  # the dense model is not touched
    for dense_layer, layer in zip(model.model.layers, pruned.model.layers, strict=True):
        a, d = layer.self_attn, dense_layer.self_attn
        assert (a.q_proj.out_features, a.k_proj.out_features, a.o_proj.in_features) == (32, 16, 32)
        assert layer.mlp.down_proj.in_features == 64
        # The kept key head's query heads are the ones kept (HF repeat_kv order).
        group = next(
            g
            for g in range(2)
            if torch.equal(a.k_proj.weight, d.k_proj.weight[g * 16 : g * 16 + 16])
        )  # noqa: E501
        assert torch.equal(a.v_proj.weight, d.v_proj.weight[group * 16 : group * 16 + 16])
        assert torch.equal(a.q_proj.weight, d.q_proj.weight[group * 32 : group * 32 + 32])
    out = _run(pruned, x)
    assert out.shape == _run(model, x).shape
    pruned.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert reloaded.config.num_attention_heads == 2
    torch.testing.assert_close(_run(reloaded, x), out)


def test_bert_heads_and_width_are_pruned_and_the_saved_model_reloads(tmp_path):
    model, x = _bert(), _ids()
    space = ChannelSpace(model, example_inputs=x)
    assert [(u.kind, u.channels, u.step) for u in space.units] == [
        ("attention", 64, 16), ("mlp", 128, 1)
    ]  # fmt: skip
    pruned = space.apply(Policy(keep=(0.5, 0.25)))
    assert (pruned.config.num_attention_heads, pruned.config.intermediate_size) == (2, 32)
    attn = pruned.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.all_head_size, attn.query.out_features) == (2, 32, 32)
    out = _run(pruned, x)
    pruned.save_pretrained(tmp_path)
    reloaded = from_pretrained(transformers.BertModel, tmp_path)
    assert reloaded.encoder.layer[1].attention.self.key.out_features == 32
    torch.testing.assert_close(_run(reloaded, x), out)


def test_vit_heads_and_width_reload_with_its_own_from_pretrained(tmp_path):
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    space = ChannelSpace(model, example_inputs=x)
    pruned = space.apply(Policy(keep=(0.25, 0.5)))
    assert (pruned.config.num_attention_heads, pruned.config.intermediate_size) == (1, 64)
    out = _run(pruned, x)
    pruned.save_pretrained(tmp_path)
    reloaded = transformers.ViTForImageClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_run(reloaded, x), out)
    assert from_pretrained(transformers.ViTForImageClassification, tmp_path).config.head_dim == 16


def test_num_heads_names_hf_attention_modules():
    model = _bert()
    heads = {m: 4 for m in model.modules() if type(m).__name__ == "BertSelfAttention"}
    space = ChannelSpace(model, example_inputs=_ids(), num_heads=heads)
    assert space.units[0].step == 16
    named = {"model.layers.0.self_attn": 4, "model.layers.1.self_attn": 4}
    assert ChannelSpace(_decoder("llama"), example_inputs=_ids(), num_heads=named).units
    with pytest.raises(ConfigError, match="gives 3 heads for 'model.layers.0.self_attn'"):
        ChannelSpace(_decoder("llama"), example_inputs=_ids(),
                     num_heads={"model.layers.0.self_attn": 3})  # fmt: skip


def test_a_decoder_that_returns_its_cache_is_told_to_set_use_cache_false():
    with pytest.raises(ConfigError, match=r"output 'cache' \(DynamicCache\).*use_cache = False"):
        ChannelSpace(_decoder("llama", use_cache=True), example_inputs=_ids())


def test_a_decoder_exported_without_attention_mask_is_told_to_pass_one():
    ids = {"input_ids": _ids()["input_ids"]}
    with pytest.raises(ExportError, match="aten::diff.*pass attention_mask"):
        export_onnx(_decoder("qwen2"), example_inputs=ids)
    assert export_onnx(_decoder("qwen2"), example_inputs=_ids())


# Bigger matmuls than above: the heads and the MLP must carry most of the latency for
# latency<=70% to be reachable without pruning the hidden width.
_BUILD = {
    "bert": lambda: (_bert(hidden=128, width=1024), _ids(64)),
    "vit": lambda: (_vit(hidden=128, width=1024, image=64), torch.randn(1, 3, 64, 64)),
    "llama": lambda: (_decoder("llama", hidden=128, width=1024), _ids(64)),
    "qwen2": lambda: (_decoder("qwen2", hidden=128, width=1024), _ids(64)),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(_BUILD))
def test_prune_meets_a_latency_budget_on_onnx_runtime_and_the_result_reloads(family, tmp_path):
    model, x = _BUILD[family]()
    target = _run(model, x)

    def score(m) -> float:
        return -float(((_run(m, x) - target) ** 2).mean())

    result = hwprune.prune(model, example_inputs=x, score=score, out=tmp_path / "run",
                           budgets=["latency<=70%"], agent="random", evaluations=6,
                           oracle="latency=onnxruntime:cpu?threads=1&min_time=0.05")  # fmt: skip
    assert result.all_met
    pruned = result.model
    config = pruned.config
    assert config.num_attention_heads < 4 or config.intermediate_size < 1024
    assert _run(pruned, x).shape == target.shape
    pruned.save_pretrained(tmp_path / "saved")
    reloaded = from_pretrained(type(model), tmp_path / "saved")
    assert reloaded.config.num_attention_heads == config.num_attention_heads
    torch.testing.assert_close(_run(reloaded, x), _run(pruned, x))
