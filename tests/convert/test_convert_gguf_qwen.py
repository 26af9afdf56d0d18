"""`lighthouse convert gguf` on Qwen2 and Qwen3 files: tiny random transformers models written as llama.cpp writes them.

The GGUF files are written here with `gguf.GGUFWriter` following convert_hf_to_gguf.py's Qwen2Model / Qwen3Model:
the writer's own `<arch>.*` keys (attention.key_length / value_length only where config.json has head_dim: Qwen3),
tensor names from llama.cpp's own table (`gguf.get_tensor_name_map`), q/k rows as HF has them (NEOX RoPE: no
permutation), no output.weight when the embeddings are tied, 1-D tensors (norms, biases) in F32, and the tokenizer
as `tokenizer.ggml.*` (model "gpt2", pre "qwen2", the vocabulary padded to the model's rows with [PADn] tokens of
type UNUSED, specials as CONTROL, <think> as USER_DEFINED). The converted checkpoint is checked against the original
transformers model and against transformers' own GGUF loading of the same file (`from_pretrained(gguf_file=...)`),
which reads llama.cpp's conventions with code of its own; the tokenizer against the original Qwen2Tokenizer.
transformers reads no attention.key_length for qwen3 (it keeps Qwen3Config's head_dim 128), so the Qwen3 model has
head_dim 128, as real Qwen3 models do, and not hidden_size / heads (64 / 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lighthouse.convert import ConversionError, convert_gguf

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
Q = gguf.GGMLQuantizationType

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK = "<think>"  # a user-defined (not special) added token, as in Qwen3's tokenizer
CORPUS = ["Hello world! It's a small test of the tokenizer, isn't it?", "Numbers like 12345 and 2024 split by digit.",
          "café, naïve, 中文字符 and emoji 🙂 are bytes too.", "def f(x):\n    return x * 2\n\n\nprint(f(21))",
          "The quick brown fox jumps over the lazy dog. " * 3, "We'll see; they're here, you've been told."]
TEXTS = ["Hello world! It's 12345.", "  leading spaces,\ttabs\n\nand newlines\r\n", "café 中文 🙂 naïve",
         "<|im_start|>user\nhi <think>x</think><|im_end|>\n<|im_start|>assistant\n", "cafe\u0301 (not NFC)"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, max_position_embeddings=4096,
            rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False)
FAMILIES = {  # Qwen2.5-0.5B ties its embeddings; Qwen3-8B does not
    "qwen2": lambda vocab: transformers.Qwen2Config(vocab_size=vocab, num_attention_heads=4, num_key_value_heads=2,
                                                    tie_word_embeddings=True, **DIMS),
    "qwen3": lambda vocab: transformers.Qwen3Config(vocab_size=vocab, num_attention_heads=2, num_key_value_heads=1,
                                                    head_dim=128, tie_word_embeddings=False, **DIMS),
}
# |ours - original| <= TOL * max|original logit| (the logits reach 1.5-2): F32 stores the weights exactly (measured
# difference 0); F16 rounds each weight to 11 significant bits, Q8_0 to 8 bits per block of 32 (measured: 6e-4 and
# 1.7e-2 of the scale; the tolerances are about 3x that). Against transformers' GGUF loading, which dequantizes the
# same stored values, every type must agree to fp32 rounding (measured difference 0).
TOL = {Q.F32: 1e-6, Q.F16: 2e-3, Q.Q8_0: 5e-2}


# ------------------------------------------------------------------ the original model and tokenizer


def original_tokenizer():
    """A Qwen2Tokenizer (transformers' own: NFC, Qwen's split regex, byte-level BPE) over a BPE trained here."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=420, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    trained = json.loads(bpe.to_str())["model"]
    vocab = dict(trained["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    for t in SPECIALS + [THINK]:
        vocab[t] = len(vocab)
    tok = transformers.Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                                      eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      additional_special_tokens=SPECIALS)
    tok.add_tokens([tokenizers.AddedToken(THINK, special=False, normalized=False)])
    tok.chat_template = CHAT_TEMPLATE
    assert tok.convert_tokens_to_ids(THINK) == len(vocab) - 1 and len(tok) == len(vocab)
    return tok


def original_model(family: str, vocab: int):
    """A random fp32 transformers model, every parameter (biases and q/k norms too) away from its init."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(FAMILIES[family](vocab), dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


# ------------------------------------------------------------------ writing the GGUF file as llama.cpp does


def write_gguf(path: Path, model, tok, qtype=Q.F32, *, drop: tuple[str, ...] = (), meta: dict | None = None) -> None:
    """model + tokenizer -> a GGUF file with 2-D weights in `qtype`. drop: GGUF tensor names left out (to test
    refusals); meta: extra string/float keys."""
    cfg = model.config
    arch = {"qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}[cfg.model_type]
    w = gguf.GGUFWriter(str(path), arch=gguf.MODEL_ARCH_NAMES[arch])
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None)
                         else cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if cfg.model_type == "qwen3":  # Qwen3's config.json has head_dim; Qwen2's has not
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    w.add_file_type(1 if qtype == Q.F16 else 7 if qtype == Q.Q8_0 else 0)
    for key, value in (meta or {}).items():
        (w.add_float32 if isinstance(value, float) else w.add_string)(key, value)
    _write_tokenizer(w, tok, cfg.vocab_size)
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, hf_name
        if name in drop:
            continue
        data = t.numpy().astype(np.float32)
        kind = qtype if data.ndim == 2 else Q.F32  # llama.cpp keeps 1-D tensors (norms, biases) in F32
        raw = gguf.quants.quantize(data, kind)
        w.add_tensor(name, raw, raw_dtype=None if kind in (Q.F32, Q.F16) else kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_tokenizer(w, tok, n_rows: int) -> None:
    """tokenizer.ggml.* as convert_hf_to_gguf.py's gpt2 vocabulary: ids past the tokenizer padded with [PADn]."""
    by_id = {i: t for t, i in tok.get_vocab().items()}
    tokens, types = [], []
    for i in range(n_rows):
        t = by_id.get(i)
        tokens.append(t if t is not None else f"[PAD{i}]")
        types.append(5 if t is None else 3 if t in SPECIALS else 4 if t == THINK else 1)
    trained = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in trained])
    w.add_bos_token_id(tok.convert_tokens_to_ids("<|endoftext|>"))  # Qwen's config.json bos_token_id
    w.add_eos_token_id(tok.convert_tokens_to_ids("<|im_end|>"))
    w.add_pad_token_id(tok.convert_tokens_to_ids("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def tok():
    return original_tokenizer()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tok):
    """(name, original model); the model's vocabulary is the tokenizer's rounded up to 32 rows, as Qwen pads it."""
    return request.param, original_model(request.param, (len(tok) + 31) // 32 * 32)


def transformers_gguf_model(path: Path):
    """transformers' own GGUF loading: what `from_pretrained(dir, gguf_file=...)` does (it also wants `accelerate`,
    which the test environment lacks): the config and the tensors, named and un-permuted by its GGUF tables."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    cfg = dict(load_gguf_checkpoint(str(path))["config"])
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if config.tie_word_embeddings else set()), missing
    model.tie_weights()
    return model


def _ids(tok) -> torch.Tensor:
    ids = tok("<|im_start|>user\nHello world! It's 2024 and café 中文.<|im_end|>\n")["input_ids"]
    return torch.tensor([ids])


def _logits(model, ids: torch.Tensor, ours: bool = False) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids, dense=True, logits_to_keep=ids.shape[1]) if ours else model(ids)
    return out.logits[0].double()


def _assert_close(got: torch.Tensor, want: torch.Tensor, what: str, rel: float) -> None:
    diff, tol = (got - want).abs(), rel * max(1.0, want.abs().max().item())
    assert diff.max() <= tol, f"{what}: max |diff| {diff.max():.3g}, mean {diff.mean():.3g} (tolerance {tol:.3g})"


def _convert(tmp_path: Path, model, tok, qtype=Q.F32) -> Path:
    write_gguf(tmp_path / "m.gguf", model, tok, qtype)
    convert_gguf(tmp_path / "m.gguf", tmp_path / "hf", dtype="float32")
    return tmp_path / "hf"


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.Q8_0], ids=lambda q: q.name)
def test_logits_equal_the_original_model_and_transformers_own_gguf_loading(tmp_path, family, tok, qtype):
    from lighthouse.checkpoint import load_checkpoint

    name, hf = family
    out = _convert(tmp_path, hf, tok, qtype)
    ours, _ = load_checkpoint(out, load_tokenizer=False)
    head_dim = getattr(hf.config, "head_dim", None) or hf.config.hidden_size // hf.config.num_attention_heads
    assert ours.config.model_type == name and ours.config.head_dim == head_dim
    assert ours.config.tie_word_embeddings == hf.config.tie_word_embeddings
    ids = _ids(tok)
    got, want = _logits(ours, ids, ours=True), _logits(hf, ids)
    assert want.abs().max() > 1  # logits that say something
    _assert_close(got, want, f"{name} {qtype.name}: ours vs the original model", TOL[qtype])
    from_gguf = transformers_gguf_model(tmp_path / "m.gguf")
    assert type(from_gguf) is type(hf)
    _assert_close(got, _logits(from_gguf, ids), f"{name} {qtype.name}: ours vs transformers' GGUF loading", 1e-6)
    again = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(again) is type(hf)  # config.json names the family (Qwen2ForCausalLM / Qwen3ForCausalLM)


def test_f32_weights_come_back_exactly_with_q_and_k_rows_unpermuted(tmp_path, family, tok):
    from safetensors.torch import load_file

    name, hf = family
    state = load_file(str(_convert(tmp_path, hf, tok) / "model.safetensors"))
    want = {k: v for k, v in hf.state_dict().items() if not (k == "lm_head.weight" and hf.config.tie_word_embeddings)}
    assert set(state) == set(want)
    for k, v in want.items():
        assert torch.equal(state[k], v), k
    extra = {"qwen2": "self_attn.q_proj.bias", "qwen3": "self_attn.q_norm.weight"}[name]
    assert f"model.layers.1.{extra}" in state


def test_the_tokenizer_encodes_and_decodes_like_the_original(tmp_path, tok):
    from lighthouse.checkpoint import load_checkpoint

    hf = original_model("qwen2", (len(tok) + 31) // 32 * 32)
    out = _convert(tmp_path, hf, tok)
    conv = transformers.AutoTokenizer.from_pretrained(str(out))
    from_gguf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    _, ours = load_checkpoint(out)
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert conv(text)["input_ids"] == ids and ours(text)["input_ids"] == ids, text
        assert conv.decode(ids) == tok.decode(ids)
        if "\u0301" not in text:  # transformers' GGUF tokenizer, like llama.cpp, skips Qwen's NFC step
            assert from_gguf(text)["input_ids"] == ids, text
    assert len(conv("1234")["input_ids"]) == 4  # Qwen's regex splits digits one by one
    assert conv("cafe\u0301")["input_ids"] == conv("café")["input_ids"]  # NFC first, as Qwen's tokenizer.json
    assert conv.convert_ids_to_tokens(conv("a<think>b")["input_ids"]) == ["a", THINK, "b"]
    plain = conv.decode(conv(TEXTS[3])["input_ids"], skip_special_tokens=True)
    assert plain == "user\nhi <think>x</think>\nassistant\n"  # <think> is not special: it stays
    assert conv.chat_template == CHAT_TEMPLATE and conv.eos_token == "<|im_end|>"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")


def test_a_missing_qwen2_bias_and_yarn_scaling_are_refused_naming_them(tmp_path, tok):
    hf = original_model("qwen2", (len(tok) + 31) // 32 * 32)
    write_gguf(tmp_path / "a.gguf", hf, tok, drop=("blk.1.attn_k.bias",))
    with pytest.raises(ConversionError, match="missing tensor 'blk.1.attn_k.bias'"):
        convert_gguf(tmp_path / "a.gguf", tmp_path / "a")
    write_gguf(tmp_path / "b.gguf", hf, tok, meta={"qwen2.rope.scaling.type": "yarn",
                                                   "qwen2.rope.scaling.factor": 4.0})
    with pytest.raises(ConversionError, match="rope scaling type 'yarn' is not supported"):
        convert_gguf(tmp_path / "b.gguf", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_engine_serves_the_converted_qwen_greedily_as_transformers_generates(tmp_path, family, tok, tiny_llm):
    from lighthouse.engine.options import RequestOptions
    from lighthouse.engine.sampling import SamplingParams

    name, hf = family
    llm = tiny_llm(_convert(tmp_path, hf, tok))
    ids = _ids(tok)
    got = llm.generate([ids[0].tolist()], SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True),
                       RequestOptions(prefill="dense"))[0].choices[0].token_ids
    want = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False, eos_token_id=None,
                       pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]  # the mask: pad id 0 would hide "!" (id 0)
    assert got == want.tolist(), name
