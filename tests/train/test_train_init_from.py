"""`lighthouse train --init-from HF_DIR`: adapt an HF Llama made by transformers itself (GQA, llama3 RoPE scaling,
tied embeddings, its own BPE tokenizer), check the logits before training, train both stages, serve the result."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import lighthouse.model.llama as llama_mod
from lighthouse.checkpoint import load_checkpoint
from lighthouse.cli import main as lighthouse_main
from lighthouse.ops.rope import rope_inv_freq
from lighthouse.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS
from lighthouse.train.cli import add_arguments, config_from_args
from lighthouse.train.metrics import read_metrics
from lighthouse.train.trainer import Trainer

VOCAB = 448  # embedding rows; the tokenizer has fewer (as real checkpoints pad their vocabulary)
LAYERS = 4
TRAIN_ARGS = ["--seq-len", "512", "--max-steps", "5", "--dense-tail-steps", "2", "--batch-size", "1",
              "--micro-batch-size", "1", "--warmup-steps", "1", "--lr", "3e-3", "--eval-every", "0",
              "--eval-samples", "2", "--device", "cpu", "--no-progress"]


WORDS = "the a river tower garden engine window market forest bridge lamp harbor valley signal letter".split()


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + ".\n"


def _make_tokenizer(out: Path):
    """A byte-level BPE with merges trained on generated text: its ids are not bytes, it has no pad token, its
    specials (Llama-3 names) sit at ids 0-5, and it carries a Llama-3-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lighthouse.train.synthetic import synthetic_doc

    rng = random.Random(0)
    texts = [synthetic_doc(rng, 2000).text for _ in range(20)] + [_words(rng, 200) for _ in range(20)]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[1])
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    return tok


def _make_hf_llama(out: Path, *, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _make_tokenizer(out)
    assert 300 < len(tok) <= VOCAB
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_theta=10000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a livelier random model than the 0.02-std init (logits far from uniform)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")]
    model.save_pretrained(str(out))
    return out


def _corpus(out: Path) -> Path:
    """The user's documents: 60 text files and a JSONL file of generated sentences."""
    rng = random.Random(1)
    out.mkdir()
    for i in range(60):
        (out / f"doc{i:02d}.txt").write_text("".join(_words(rng, rng.randint(20, 400)) for _ in range(3)))
    (out / "more.jsonl").write_text("".join(json.dumps({"text": _words(rng, 300)}) + "\n" for _ in range(10)))
    return out


def _parse(argv: list[str]):
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    return config_from_args(p.parse_args(argv))


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory) -> Path:
    return _make_hf_llama(tmp_path_factory.mktemp("hf") / "llama")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("docs") / "docs")


@pytest.fixture(scope="module")
def adapted(hf_llama, corpus, tmp_path_factory):
    """`lighthouse train --init-from` through the CLI: 3 Lighthouse steps, 2 dense-tail steps; every call of the
    Lighthouse op is recorded with the layer's sequence length."""
    out = tmp_path_factory.mktemp("adapted") / "out"
    calls: list[int] = []
    real = llama_mod.lighthouse_attention
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(llama_mod, "lighthouse_attention", lambda q, *a, **k: calls.append(q.shape[2]) or real(q, *a, **k))
        rc = lighthouse_main(["train", "--init-from", str(hf_llama), "--data", str(corpus), "--synthetic-fraction",
                              "0.5", "--chat-fraction", "0.5", "--out", str(out), *TRAIN_ARGS])
    assert rc == 0
    return out, calls


def _hf(path: Path):
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


# ---------------------------------------------------------------- before any step


def test_loaded_model_logits_equal_transformers_before_training(hf_llama, tmp_path):
    cfg = _parse(["--init-from", str(hf_llama), "--data", "none", "--out", str(tmp_path / "run"), *TRAIN_ARGS])
    trainer = Trainer(cfg)
    model, hf = trainer.model, _hf(hf_llama)
    c = model.config
    # what is being checked is really there: GQA, llama3 scaling that changes frequencies, tied embeddings
    assert (c.num_attention_heads, c.num_key_value_heads, c.rope_type, c.tie_word_embeddings) == (4, 2, "llama3", True)
    unscaled = rope_inv_freq(type(c)(**{**vars(c), "rope_scaling": None}))
    assert not torch.allclose(rope_inv_freq(c), unscaled)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # the lighthouse block the defaults give a 4-layer model at --seq-len 512
    lh = c.lighthouse
    assert (lh.enabled, lh.levels, lh.pooling_factor, lh.topk, lh.full_attn_layers, lh.min_seq_len) == \
        (True, 2, 4, 128, [0, 3], 512)
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 511))  # below min_seq_len: the model runs dense, as transformers does
    with torch.no_grad():
        theirs = hf(ids).logits
        assert (model(ids, logits_to_keep=511).logits - theirs).abs().max().item() < 1e-4
        assert (model(ids, dense=True, logits_to_keep=511).logits - theirs).abs().max().item() < 1e-4
        # the comparison can fail: the same weights without the llama3 scaling give other logits
        plain = type(c)(**{**vars(c), "rope_scaling": None})
        no_scaling = llama_mod.LlamaForCausalLM(plain)
        no_scaling.load_state_dict(model.state_dict())
        assert (no_scaling(ids, logits_to_keep=511).logits - theirs).abs().max().item() > 1e-3
        # and at 512 tokens layers 1-2 run Lighthouse, which is not what the dense model computes
        ids = torch.randint(0, VOCAB, (1, 512))
        assert (model(ids, logits_to_keep=512).logits - hf(ids).logits).abs().max().item() > 1e-3
    # the data is the checkpoint's tokens, not bytes: BOS is its id and ids reach past 255
    batch = trainer.train_data.batch([0, 1, 2, 3])
    tok = AutoTokenizer.from_pretrained(str(hf_llama))
    assert (batch["input_ids"][:, 0] == tok.bos_token_id).all() and tok.bos_token_id == 0
    assert batch["input_ids"].max().item() >= 300


def test_data_in_the_checkpoints_tokens_keeps_answers_chat_turns_and_documents(hf_llama, corpus):
    from lighthouse.train.data import SequenceStream, TextCorpus

    tok = AutoTokenizer.from_pretrained(str(hf_llama))
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    plain = SequenceStream(512, seed=3, tokenizer=tok)
    chat = SequenceStream(512, seed=3, chat_fraction=1.0, tokenizer=tok)
    n_answers = 0
    for stream in (plain, chat):
        for i in range(6):
            s = stream[i]
            assert s.input_ids.shape == (512,) and s.input_ids.max().item() < len(tok)
            answer = tok.decode(s.input_ids[s.answer_mask].tolist())
            n_answers += bool(answer)
            assert set(answer) <= set("0123456789 "), answer  # answer tokens are the answers' digits
            text = tok.decode(s.input_ids[s.labels != -100].tolist())
            assert ("<|start_header_id|>assistant<|end_header_id|>" in text) == (stream is chat)
            if stream is chat:
                first = s.answer_mask.nonzero()[0].item()
                assert eot in s.input_ids[first:].tolist()  # the answer, then the end of the assistant turn
    assert n_answers >= 10
    docs = SequenceStream(512, seed=3, corpus=TextCorpus([str(corpus)]), synthetic_fraction=0.0, tokenizer=tok)
    s = docs[0]
    assert (s.labels != -100).all() and not s.answer_mask.any()  # packed full of the user's documents
    words = tok.decode(s.input_ids.tolist(), skip_special_tokens=True).replace(".", " ").split()
    assert len(words) > 100 and sum(w in WORDS for w in words) >= len(words) - 2  # (a window may cut a word)


def test_a_checkpoints_own_lighthouse_block_is_kept_and_flags_override_it(make_checkpoint, tmp_path):
    ours = make_checkpoint(tmp_path / "ours")  # our tiny preset's checkpoint: byte tokenizer, L2 p4 k128, no dense layer
    base = ["--init-from", str(ours), "--data", "none", "--out", str(tmp_path / "o"), *TRAIN_ARGS]
    lh = Trainer(_parse(base)).model.config.lighthouse
    assert (lh.levels, lh.pooling_factor, lh.topk, lh.full_attn_layers, lh.min_seq_len) == (2, 4, 128, [], 512)
    lh = Trainer(_parse([*base, "--full-attn-layers", "1", "--min-seq-len", "256"])).model.config.lighthouse
    assert (lh.levels, lh.topk, lh.full_attn_layers, lh.min_seq_len) == (2, 128, [1], 256)
    # the same flags apply to a preset's model; --data-workers reaches the config too
    cfg = _parse(["--preset", "tiny", "--full-attn-layers", "0", "--data-workers", "2", "--seq-len", "512",
                  "--device", "cpu", "--out", str(tmp_path / "p")])
    assert cfg.data_workers == 2 and Trainer(cfg).model.config.lighthouse.full_attn_layers == [0]


def test_max_position_embeddings_extends_a_checkpoints_context_by_llama3_scaling(make_checkpoint, hf_llama, tmp_path,
                                                                                  capsys):
    """--init-from with more positions than the checkpoint has: llama3 scaling by new/old positions (short
    wavelengths kept, long ones slowed by the factor), saved in config.json and used after loading; a llama3 source's
    factor is multiplied; --rope-theta changes the base instead; fewer positions are refused."""
    from lighthouse.ops.rope import unscaled_inv_freq

    ours = make_checkpoint(tmp_path / "ours")  # tiny preset: no rope_scaling
    old = json.loads((ours / "config.json").read_text())["max_position_embeddings"]
    out = tmp_path / "ext"
    cfg = _parse(["--init-from", str(ours), "--data", "none", "--out", str(out), *TRAIN_ARGS, "--max-steps", "1",
                  "--dense-tail-steps", "1", "--max-position-embeddings", str(old * 32)])
    trainer = Trainer(cfg)
    c = trainer.model.config
    assert c.max_position_embeddings == old * 32 and c.rope_scaling == {
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": old}
    plain = unscaled_inv_freq(c)
    wavelen = 2 * torch.pi / plain
    got = trainer.model.inv_freq
    short, long = wavelen < old / 4, wavelen > old
    assert short.any() and long.any()
    torch.testing.assert_close(got[short], plain[short])  # local positions rotate as before
    torch.testing.assert_close(got[long], plain[long] / 32)  # 32x the distance looks like the old distance
    trainer.train()
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_position_embeddings"] == old * 32 and saved["rope_parameters"]["factor"] == 32.0
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == old * 32
    model, _ = load_checkpoint(out)
    torch.testing.assert_close(model.inv_freq, got)
    # a llama3 source (factor 8 over 256 original positions, 1024 positions): the factor grows by 4096 / 1024
    c = Trainer(_parse(["--init-from", str(hf_llama), "--data", "none", "--out", str(tmp_path / "h"), *TRAIN_ARGS,
                        "--max-position-embeddings", "4096"])).model.config
    assert (c.rope_scaling["factor"], c.rope_scaling["original_max_position_embeddings"]) == (32.0, 256)
    # --rope-theta: the base changes, no scaling is added
    t = Trainer(_parse(["--init-from", str(ours), "--data", "none", "--out", str(tmp_path / "b"), *TRAIN_ARGS,
                        "--max-position-embeddings", str(old * 4), "--rope-theta", "1e6"]))
    assert (t.model.config.rope_theta, t.model.config.rope_scaling, t.model.config.max_position_embeddings) == \
        (1e6, None, old * 4)
    torch.testing.assert_close(t.model.inv_freq, unscaled_inv_freq(t.model.config))
    err = _train_error(["--init-from", str(ours), "--data", "none", "--out", str(tmp_path / "s"), *TRAIN_ARGS,
                        "--max-position-embeddings", str(old // 2)], capsys)
    assert f"is below the {old} positions" in err


# ---------------------------------------------------------------- training


def test_init_from_trains_both_stages_and_writes_a_tied_lighthouse_checkpoint(adapted, hf_llama):
    out, calls = adapted
    records = read_metrics(out / "metrics.jsonl")
    assert [r["phase"] for r in records if r["type"] == "train"] == ["lighthouse"] * 3 + ["dense"] * 2
    assert all(r["loss"] == r["loss"] and r["loss"] < 20 for r in records if r["type"] == "train")
    # the op ran in the Lighthouse stage only, on layers 1 and 2 only: 2 layers x 3 steps x 1 micro-batch
    assert calls == [512] * 6
    cfg = json.loads((out / "config.json").read_text())
    want = {"enabled": True, "levels": 2, "pooling_factor": 4, "topk": 128, "scorer": "norm", "full_attn_layers": [0, 3],
            "min_seq_len": 512}
    assert {k: cfg["lighthouse"].get(k) for k in want} == want
    assert cfg["tie_word_embeddings"] is True and cfg["rope_parameters"]["rope_type"] == "llama3"
    assert cfg["max_position_embeddings"] == 1024 and cfg["num_key_value_heads"] == 2
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        assert "lm_head.weight" not in names  # tied: the head is the embedding
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32  # the source's dtype
    ours, tok = load_checkpoint(out)
    src, src_tok = load_checkpoint(hf_llama)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    for name, p in src.named_parameters():
        assert not torch.equal(p, dict(ours.named_parameters())[name]), f"{name} did not change"
    # the checkpoint's tokenizer (not the byte tokenizer) and its generation stop ids came along
    text = "What is the pass key? The pass key is 12345."
    assert tok(text)["input_ids"] == src_tok(text)["input_ids"] != list(text.encode())
    assert len(tok) == len(src_tok)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1, tok.convert_tokens_to_ids("<|eot_id|>")]
    # the result still loads in transformers as a dense Llama, with logits equal to ours
    hf = _hf(out)
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, VOCAB, (2, 300))
    with torch.no_grad():
        assert (ours(ids, dense=True, logits_to_keep=300).logits - hf(ids).logits).abs().max().item() < 1e-4
    # the resumable step checkpoint carries the same tokenizer
    step_dir = out / "checkpoints" / "step_000005"
    assert AutoTokenizer.from_pretrained(str(step_dir))(text)["input_ids"] == tok(text)["input_ids"]


def test_adapted_checkpoint_generates_with_the_engine_and_the_server(adapted, loopback_server, settings_for):
    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.llm import LLM
    from lighthouse.engine.options import RequestOptions
    from lighthouse.engine.sampling import SamplingParams

    out, _ = adapted
    llm = LLM(str(out), EngineConfig(kv_cache_bytes=64 << 20, max_prefill_chunk_ms=None), device="cpu", dtype="float32")
    prompt = "The river crosses the bridge. The pass key is"
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    got = llm.generate(prompt, greedy, RequestOptions(prefill="dense"))[0]
    assert len(got.choices[0].token_ids) == 8
    ids = llm.tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        ref = _hf(out).generate(torch.tensor([ids]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    assert got.choices[0].token_ids == ref[0, len(ids):].tolist()  # greedy tokens equal transformers'
    # a long prompt prefills through the Lighthouse layers
    long_ids = llm.tokenizer(_words(random.Random(2), 700))["input_ids"][:600]
    assert len(long_ids) == 600
    sparse = llm.generate([long_ids], greedy, RequestOptions(prefill="sparse", dense_tail_tokens=0))[0]
    assert sparse.prefill.path == "sparse" and len(sparse.choices[0].token_ids) == 8
    # and `lighthouse serve --checkpoint OUT` serves it over HTTP
    with loopback_server(settings_for(out)) as server:
        model_id = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]["id"]
        r = httpx.post(f"{server.url}/v1/completions", timeout=60,
                       json={"model": model_id, "prompt": prompt, "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["completion_tokens"] == 5 and body["usage"]["prompt_tokens"] == len(ids)
        assert body["choices"][0]["text"] == llm.tokenizer.decode(got.choices[0].token_ids[:5])


# ---------------------------------------------------------------- bad inputs


def _train_error(argv: list[str], capsys) -> str:
    rc = lighthouse_main(["train", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("lighthouse train: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("flags, words", [
    (["--model", "tiny"], ["--model tiny conflicts with --init-from", "Drop --model"]),
    (["--preset", "default"], ["--preset default conflicts with --init-from", "Drop --preset"]),
])
def test_flags_that_conflict_with_init_from_are_refused(hf_llama, tmp_path, capsys, flags, words):
    err = _train_error(["--init-from", str(hf_llama), "--data", "none", *flags, "--out", str(tmp_path / "o")], capsys)
    assert all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


def test_init_from_needs_data_and_a_seq_len_that_runs_lighthouse(hf_llama, tmp_path, capsys):
    base = ["--init-from", str(hf_llama), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert "pass --data" in _train_error(base, capsys)
    err = _train_error([*base, "--data", "none", "--seq-len", "512", "--topk", "256"], capsys)
    assert "--seq-len 512 is below the Lighthouse minimum 1024" in err and "raise --seq-len" in err
    err = _train_error([*base, "--data", "none", "--seq-len", "512", "--full-attn-layers", "0,1,2,3"], capsys)
    assert "leaves no layer" in err
    err = _train_error([*base, "--data", "none", "--seq-len", "512", "--full-attn-layers", "0,7"], capsys)
    assert "[7] are outside the model's layers 0..3" in err
    err = _train_error([*base, "--data", "none", "--seq-len", "512", "--topk", "100"], capsys)
    assert "topk must be a positive multiple of 128" in err


def test_a_checkpoint_without_its_tokenizer_is_refused(hf_llama, tmp_path, capsys):
    src = tmp_path / "no_tok"
    shutil.copytree(hf_llama, src)
    (src / "tokenizer.json").unlink()
    err = _train_error(["--init-from", str(src), "--data", "none", "--out", str(tmp_path / "o")], capsys)
    assert "has no tokenizer.json" in err


@pytest.mark.parametrize("change", [
    {"model_type": "mistral", "architectures": ["MistralForCausalLM"]},
    {"architectures": ["LlamaForSequenceClassification"]},
])
def test_a_checkpoint_that_is_not_a_llama_causal_lm_is_refused(hf_llama, tmp_path, capsys, change):
    src = tmp_path / "other"
    shutil.copytree(hf_llama, src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, **change}))
    err = _train_error(["--init-from", str(src), "--data", "none", "--out", str(tmp_path / "o")], capsys)
    assert "is not a Llama causal LM" in err and "LlamaForCausalLM" in err


def test_missing_dir_pickle_weights_and_a_foreign_tokenizer_are_refused(hf_llama, tmp_path, capsys):
    err = _train_error(["--init-from", str(tmp_path / "nowhere"), "--data", "none"], capsys)
    assert "does not exist" in err
    src = tmp_path / "pickled"
    shutil.copytree(hf_llama, src)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    err = _train_error(["--init-from", str(src), "--data", "none", "--out", str(tmp_path / "o")], capsys)
    assert "pickle" in err and "safetensors" in err
    small = tmp_path / "small_vocab"  # a tokenizer with more tokens than the model has embedding rows
    shutil.copytree(hf_llama, small)
    cfg = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**cfg, "vocab_size": 256}))
    err = _train_error(["--init-from", str(small), "--data", "none", "--out", str(tmp_path / "o")], capsys)
    assert "tokens but the model's embedding only 256 rows" in err
