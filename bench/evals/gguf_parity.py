"""Real-file check of `lighthouse convert gguf`: three forwards of one GGUF model must agree (CPU).

    python -m bench.evals.gguf_parity SmolLM2-135M-Instruct.Q4_1.gguf --json /tmp/gguf_parity.json
    python -m bench.evals.gguf_parity FILE --converted DIR     # check a folder converted before

Converts FILE (float32 weights unless --dtype; or takes --converted DIR), then runs 64 fixed short prompts through
(a) our model on the converted folder (`lighthouse.checkpoint.load_checkpoint`, dense), (b) transformers'
AutoModelForCausalLM on the same folder, and (c) a torch forward written here straight from the GGUF: every tensor
dequantized with `gguf.quants.dequantize`, the q/k rows un-permuted here by index (llama.cpp stores the pair
(i, i + D/2) of each head at rows (2i, 2i+1)), hyperparameters read from the llama.* keys; fp32 throughout. It
reports, for each pair, the max abs error of the last-position logits over all prompts, the max relative error
(per prompt max |diff| / max |reference logit|, then the max over prompts) and the top-1 agreement.

It also checks the tokenizer: the converted folder's AutoTokenizer against a byte-level BPE written here from the
GGUF's own tokens and merges (special tokens first, then llama.cpp's split for `tokenizer.ggml.pre`, then merges
by rank) on the prompts and a few extra strings. Prints the JSON; --json writes it too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SUBJECTS = ["The capital of France", "Photosynthesis", "A prime number", "The Pacific Ocean", "Python", "Gravity",
            "The moon", "A good breakfast"]
FRAMES = ["{} is", "Tell me about {}.", "Q: What is {}?\nA:", "<|im_start|>user\nExplain {} briefly.<|im_end|>\n"
          "<|im_start|>assistant\n", "In 1969, {}", "Fact: {} has 12345", "{}, in one sentence:", "Why does {} matter?"]
PROMPTS = [f.format(s) for f in FRAMES for s in SUBJECTS]  # 64
EXTRA_TEXTS = ["Hello world 12345 <|im_start|>user", "  multiple   spaces\n\ttabs", "Café déjà vu. 3.14159",
               "def f(x):\n    return x**2  # ok", "日本語のテキスト and emoji 🙂"]
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


# ------------------------------------------------------------------ (c): a forward straight from the GGUF


def gguf_weights(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """GGUF name -> fp32 tensor (numpy order, q/k rows back in HF order), and the llama.* / tokenizer metadata."""
    import gguf

    r = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in r.fields.items() if k.startswith(("llama.", "general.arch", "tokenizer."))}
    n_head, n_kv = meta["llama.attention.head_count"], meta.get("llama.attention.head_count_kv",
                                                                meta["llama.attention.head_count"])
    w = {}
    for t in r.tensors:
        x = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        x = x.reshape([int(d) for d in reversed(list(t.shape))])
        heads = n_head if t.name.endswith("attn_q.weight") else n_kv if t.name.endswith("attn_k.weight") else 0
        if heads:
            d = x.shape[0] // heads
            src = [h * d + 2 * i + half for h in range(heads) for half in (0, 1) for i in range(d // 2)]
            x = x[src]  # HF row h*d + half*d/2 + i <- GGUF row h*d + 2i + half
        w[t.name] = torch.from_numpy(x)
    return w, meta


def gguf_forward(w: dict[str, torch.Tensor], meta: dict, ids: list[int]) -> torch.Tensor:
    """(vocab,) fp32 logits at the last position: HF Llama's math (rotate_half RoPE) on the un-permuted tensors."""
    n_head = meta["llama.attention.head_count"]
    n_kv = meta.get("llama.attention.head_count_kv", n_head)
    eps, theta = float(meta["llama.attention.layer_norm_rms_epsilon"]), float(meta.get("llama.rope.freq_base", 1e4))
    x = w["token_embd.weight"][ids]  # (N, dim)
    n, dim = x.shape
    d = w["blk.0.attn_q.weight"].shape[0] // n_head
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.arange(n, dtype=torch.float32)[:, None] * inv
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]  # (N, 1, d)
    rot = lambda t: t * cos + torch.cat([-t[..., d // 2:], t[..., :d // 2]], -1) * sin
    rms = lambda t, g: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * g
    mask = torch.full((n, n), float("-inf")).triu(1)
    for i in range(meta["llama.block_count"]):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rot((h @ w[p + "attn_q.weight"].T).view(n, n_head, d))
        k = rot((h @ w[p + "attn_k.weight"].T).view(n, n_kv, d)).repeat_interleave(n_head // n_kv, 1)
        v = (h @ w[p + "attn_v.weight"].T).view(n, n_kv, d).repeat_interleave(n_head // n_kv, 1)
        a = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d) + mask, -1)
        x = x + torch.einsum("hqk,khd->qhd", a, v).reshape(n, -1) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        x = x + (torch.nn.functional.silu(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)) \
            @ w[p + "ffn_down.weight"].T
    head = w.get("output.weight", w["token_embd.weight"])
    return rms(x[-1], w["output_norm.weight"]) @ head.T


# ------------------------------------------------------------------ a BPE from the GGUF's vocabulary


def gguf_bpe(meta: dict):
    """text -> ids from tokenizer.ggml.tokens / merges, as llama.cpp's BPE tokenizes (gpt-2 / smollm splits)."""
    import regex

    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    ids = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(meta["tokenizer.ggml.merges"])}
    specials = sorted((t for t, ty in zip(tokens, types) if ty in (3, 4)), key=len, reverse=True)
    special_re = regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")
    digits = meta["tokenizer.ggml.pre"] in ("smollm", "starcoder", "refact", "codeshell")
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    b2u = {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}

    def bpe(word: str) -> list[int]:
        parts = list(word)
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda j: ranks.get((parts[j], parts[j + 1]), 1 << 30))
            if (parts[best], parts[best + 1]) not in ranks:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return [ids[p] for p in parts]

    def encode(text: str) -> list[int]:
        out = []
        for chunk in special_re.split(text):
            if chunk in ids and chunk in specials:
                out.append(ids[chunk])
                continue
            pieces = [p for s in (regex.split(r"(\p{N})", chunk) if digits else [chunk]) for p in
                      ([s] if digits and regex.fullmatch(r"\p{N}", s) else regex.findall(GPT2_SPLIT, s))]
            for piece in pieces:
                out += bpe("".join(b2u[b] for b in piece.encode("utf-8")))
        return out

    return encode


# ------------------------------------------------------------------ comparing


def compare(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict:
    abs_err = max(float((x - y).abs().max()) for x, y in zip(a, b))
    rel_err = max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))
    top1 = sum(int(x.argmax() == y.argmax()) for x, y in zip(a, b)) / len(a)
    return {"max_abs_err": abs_err, "max_rel_err": rel_err, "top1_agreement": top1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf_file")
    ap.add_argument("--converted", help="a folder converted from FILE before (default: convert into a temp folder)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="weights of the conversion made here (default float32: the exact dequantized values)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lighthouse.checkpoint import load_checkpoint
    from lighthouse.convert import convert_gguf

    torch.set_grad_enabled(False)
    tmp = None
    result: dict = {"gguf": str(Path(args.gguf_file).resolve()), "prompts": len(PROMPTS)}
    if args.converted:
        folder = Path(args.converted)
    else:
        tmp = tempfile.TemporaryDirectory()
        folder = Path(tmp.name) / "converted"
        start = time.perf_counter()
        conv = convert_gguf(args.gguf_file, folder, dtype=args.dtype)
        result |= {"convert_seconds": round(time.perf_counter() - start, 2), "dtype": conv.dtype,
                   "tensor_types": conv.tensor_types}
    tok = AutoTokenizer.from_pretrained(str(folder))
    ours, _ = load_checkpoint(folder, dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    w, meta = gguf_weights(args.gguf_file)
    encode = gguf_bpe(meta)
    texts = PROMPTS + EXTRA_TEXTS
    mismatched = [t for t in texts if tok(t, add_special_tokens=False)["input_ids"] != encode(t)]
    result["tokenizer"] = {"texts": len(texts), "equal_to_gguf_vocab_bpe": len(texts) - len(mismatched),
                           "mismatched": mismatched}
    logits: dict[str, list[torch.Tensor]] = {"ours": [], "transformers": [], "gguf_torch": []}
    start = time.perf_counter()
    for text in PROMPTS:
        ids = tok(text)["input_ids"]
        logits["ours"].append(ours(torch.tensor([ids]), dense=True).logits[0, -1].float())
        logits["transformers"].append(hf(torch.tensor([ids])).logits[0, -1].float())
        logits["gguf_torch"].append(gguf_forward(w, meta, ids))
    result["forward_seconds"] = round(time.perf_counter() - start, 2)
    result["ours_vs_gguf_torch"] = compare(logits["ours"], logits["gguf_torch"])
    result["transformers_vs_gguf_torch"] = compare(logits["transformers"], logits["gguf_torch"])
    result["ours_vs_transformers"] = compare(logits["ours"], logits["transformers"])
    result["sample_greedy_next_tokens"] = {p: tok.decode([int(logits["ours"][i].argmax())])
                                           for i, p in enumerate(PROMPTS[:4])}
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
