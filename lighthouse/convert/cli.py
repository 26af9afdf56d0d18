"""`lighthouse convert torchtitan DCP_DIR --out HF_DIR`: a torchtitan llama3 run -> our HF checkpoint directory;
`lighthouse convert gguf FILE --out HF_DIR`: a llama.cpp GGUF file of a Llama, Qwen2 or Qwen3 model -> the same.

    lighthouse convert torchtitan outputs/checkpoint/step-10000 --out runs/lh270m \
        --flavor ablation_270m_lighthouse_topk1536_pool4_lvl3 --tokenizer path/to/hf_tokenizer
    lighthouse convert torchtitan ckpt/step-500 --out runs/mine --n-heads 16 --n-kv-heads 4 \
        --use-selection-lighthouse --lighthouse-num-levels 3 --lighthouse-pooling-factor 4 --lighthouse-topk 2048
    lighthouse convert gguf SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2
"""

from __future__ import annotations

import argparse
import sys

# flag dest -> (type, help) for torchtitan's TransformerModelArgs fields (flag = the field with dashes)
_MODEL_FLAGS = {
    "dim": (int, "model width (read from the weights; checked if given)"),
    "n_layers": (int, "layers (read from the weights; checked if given)"),
    "n_heads": (int, "attention heads (no shape tells it: needed unless --flavor/--config-json give it)"),
    "n_kv_heads": (int, "KV heads (read from the weights; checked if given)"),
    "vocab_size": (int, "vocabulary (read from the weights; checked if given)"),
    "hidden_dim": (int, "the FFN's hidden_dim argument (torchtitan builds 2/3 of it, rounded up to multiple_of)"),
    "multiple_of": (int, "FFN width rounding (torchtitan default 256)"),
    "ffn_dim_multiplier": (float, "FFN width multiplier"),
    "norm_eps": (float, "RMSNorm epsilon (torchtitan default 1e-5)"),
    "rope_theta": (float, "RoPE base (torchtitan default 10000)"),
    "max_seq_len": (int, "the run's max_seq_len; becomes max_position_embeddings unless that flag is given"),
    "lighthouse_num_levels": (int, "Lighthouse pyramid levels"),
    "lighthouse_pooling_factor": (int, "Lighthouse pooling factor"),
    "lighthouse_topk": (int, "Lighthouse top-k budget"),
    "lighthouse_scorer": (str, "norm | dilated (gla is not supported)"),
    "dilation": (int, "the dilated scorer's dilation (torchtitan default 4)"),
}


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, e.g. 0,1,28,29 (got {text!r})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    t = sub.add_parser("torchtitan", help="a torchtitan llama3 run's torch.distributed.checkpoint folder",
                       description=__doc__.splitlines()[0], epilog="Model argument flags use torchtitan's "
                       "TransformerModelArgs names; flags override --config-json, which overrides --flavor.")
    t.add_argument("dcp_dir", metavar="DCP_DIR", help="the DCP folder (e.g. outputs/checkpoint/step-10000)")
    t.add_argument("--out", required=True, metavar="HF_DIR", help="output checkpoint directory (new or empty)")
    t.add_argument("--flavor", help="the run's llama3 flavor, e.g. ablation_270m_lighthouse_topk1536_pool4_lvl3 "
                   "(the official patch's flavors and 70B/405B; an unknown name lists them)")
    t.add_argument("--config-json", metavar="FILE", help="a JSON object of torchtitan model arguments")
    t.add_argument("--tokenizer", metavar="PATH", help="the run's HF tokenizer (a directory or tokenizer.json), "
                   "copied into HF_DIR; serving needs one")
    g = t.add_argument_group("model arguments (torchtitan names)")
    for name, (typ, help_text) in _MODEL_FLAGS.items():
        g.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=help_text)
    g.add_argument("--use-selection-lighthouse", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the run trained with Lighthouse (the flavor's setting by default)")
    g.add_argument("--lighthouse-full-attn-layers", type=_layers, default=None, metavar="0,1,28,29",
                   help="layers that run dense attention")
    t.add_argument("--no-rope-scaling", dest="rope_scaling", action="store_false",
                   help="write no rope_scaling: for runs whose torchtitan skipped the llama3 RoPE scaling (default: "
                   "write torchtitan's, type llama3, factor 8, low 1, high 4, original 8192, which it always applies)")
    t.add_argument("--rope", choices=["before_pool", "after_select"], default="before_pool",
                   help="where the run applied RoPE relative to Lighthouse pooling (default: before_pool, the "
                   "published code; after_select: the official repository's open change, whose rotation after "
                   "selection uses rope_theta's unscaled frequencies: written as lighthouse.rope_freqs 'unscaled')")
    t.add_argument("--max-position-embeddings", type=int, default=None,
                   help="positions the checkpoint serves (default: --max-seq-len if given, else 131072)")
    t.add_argument("--min-seq-len", type=int, default=0,
                   help="the lighthouse block's min_seq_len: shorter prompts prefill densely (default 0: the op's own "
                   "minimum only)")
    t.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="dtype of the written weights (default: as stored in the DCP)")
    _add_gguf(sub)


def _add_gguf(sub) -> None:
    from lighthouse.convert.gguf_config import ARCHITECTURES
    from lighthouse.convert.gguf_tokenizer import SUPPORTED_PRE

    archs = ", ".join(f"'{a}'" for a in ARCHITECTURES)
    g = sub.add_parser("gguf", help="a llama.cpp GGUF file of a dense Llama, Qwen2 or Qwen3 model (F32/F16/BF16/"
                       "Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/Q6_K tensors)", description=f"A llama.cpp GGUF file (architecture "
                       f"{archs}) -> our HF checkpoint directory of that family: weights dequantized, Llama's q/k "
                       "rows put back in HF's order, the tokenizer and chat template rebuilt from the file's "
                       "metadata.",
                       epilog="Tokenizers: byte-level BPE ('gpt2') with pre-tokenizer " + ", ".join(SUPPORTED_PRE)
                       + ". The result is dense (no Lighthouse layers): `lighthouse train --init-from` adapts it.")
    g.add_argument("gguf_file", metavar="FILE", help="the .gguf file")
    g.add_argument("--out", required=True, metavar="HF_DIR", help="output checkpoint directory (new or empty)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16",
                   help="dtype of the written weights (default: bfloat16, half the size of float32: it rounds "
                   "each dequantized weight to 8 significant bits, far below 4-bit quantization's error; float32 "
                   "keeps the dequantized values exactly)")


def run_gguf(args: argparse.Namespace) -> int:
    import time

    from lighthouse.convert import ConversionError, convert_gguf

    start = time.perf_counter()
    try:
        result = convert_gguf(args.gguf_file, args.out, dtype=args.dtype)
    except ConversionError as exc:
        print(f"lighthouse convert gguf: {exc}", file=sys.stderr)
        return 2
    c = result.config
    types = ", ".join(f"{n} {k}" for k, n in sorted(result.tensor_types.items()))
    print(f"wrote {result.out_dir} in {time.perf_counter() - start:.1f} s: {c.model_type}, {c.num_hidden_layers} "
          f"layers, hidden {c.hidden_size}, FFN {c.intermediate_size}, {c.num_attention_heads}/{c.num_key_value_heads} heads, vocab "
          f"{c.vocab_size}, {'tied' if c.tie_word_embeddings else 'untied'} embeddings, rope_theta {c.rope_theta:g}, "
          f"rope_scaling {c.rope_scaling['rope_type'] if c.rope_scaling else 'none'}; weights {result.dtype} from "
          f"{types}; tokenizer: {result.tokenizer}; dense (no Lighthouse layers)")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.source == "gguf":
        return run_gguf(args)
    from lighthouse.convert import ConversionError, convert_torchtitan

    model_args = {name: getattr(args, name) for name in _MODEL_FLAGS}
    model_args["use_selection_lighthouse"] = args.use_selection_lighthouse
    model_args["lighthouse_full_attn_layers"] = args.lighthouse_full_attn_layers
    try:
        result = convert_torchtitan(
            args.dcp_dir, args.out, flavor=args.flavor, config_json=args.config_json, model_args=model_args,
            tokenizer=args.tokenizer, rope=args.rope, rope_scaling=args.rope_scaling,
            max_position_embeddings=args.max_position_embeddings, min_seq_len=args.min_seq_len, dtype=args.dtype,
        )
    except ConversionError as exc:
        print(f"lighthouse convert torchtitan: {exc}", file=sys.stderr)
        return 2
    c, lh = result.config, result.config.lighthouse
    mode = (f"Lighthouse L{lh.levels} p{lh.pooling_factor} k{lh.topk} ({lh.scorer}), dense layers "
            f"{lh.full_attn_layers}" if lh.enabled else "dense (no Lighthouse layers)")
    if lh.enabled and lh.rope == "after_select":
        mode += f", RoPE after selection ({lh.rope_freqs} frequencies)"
    print(f"wrote {result.out_dir}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, FFN {c.intermediate_size}, "
          f"{c.num_attention_heads}/{c.num_key_value_heads} heads, vocab {c.vocab_size}, {mode}; "
          f"rope_scaling {c.rope_scaling['rope_type'] if c.rope_scaling else 'none'}; skipped {result.skipped_entries} "
          "non-model entries (optimizer, scheduler, dataloader, train state)")
    for note in result.notes:
        print(f"note: {note}")
    if not result.has_tokenizer:
        print("note: no tokenizer was given: copy the run's HF tokenizer files (tokenizer.json, tokenizer_config.json) "
              f"into {result.out_dir} before `lighthouse serve --checkpoint {result.out_dir}`, or convert again "
              "with --tokenizer PATH")
    elif c.eos_token_id is None:
        print("note: the tokenizer names no EOS token: generation stops only at max_tokens or stop strings")
    return 0
