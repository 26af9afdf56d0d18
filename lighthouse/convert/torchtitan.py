"""torchtitan llama3 checkpoint (a torch.distributed.checkpoint folder) -> our HF Llama checkpoint directory.

    from lighthouse.convert import convert_torchtitan
    convert_torchtitan("outputs/checkpoint/step-10000", "runs/converted",
                       flavor="ablation_270m_lighthouse_topk1536_pool4_lvl3", tokenizer="path/to/hf_tokenizer")

What it does:
- reads only the model's tensors from the DCP folder (its `.metadata` lists every entry; the optimizer, LR
  scheduler, dataloader and train-state entries are skipped without being read). torchtitan writes the model's
  weights at the top level (`tok_embeddings.weight`, ...); older runs and hand-made folders put them under
  `model.`: both are read. Sharded (FSDP/TP) checkpoints load whole, with no process group.
- sizes come from the tensors' shapes (vocab, dim, layers, KV width, FFN width); the number of heads, which no
  shape tells, and the Lighthouse settings come from `flavor`, `config_json` and `model_args` (torchtitan's
  `TransformerModelArgs` names; later sources win). A given argument that disagrees with a shape is an error.
- maps the names (`tok_embeddings` -> `model.embed_tokens`, `layers.N.attention.wq/wk/wv/wo` -> `self_attn.q/k/
  v/o_proj`, `feed_forward.w1/w3/w2` -> `mlp.gate/up/down_proj`, `attention_norm` -> `input_layernorm`,
  `ffn_norm` -> `post_attention_layernorm`, `norm` -> `model.norm`, `output` -> `lm_head`).
- RoPE: torchtitan rotates interleaved pairs (dims 2i, 2i+1), HF rotates halves (dims i, i + head_dim/2), so
  the rows of wq and wk are permuted within each head (as transformers' own Llama conversion does). A
  permutation shared by q and k changes no dot product and no norm, so attention, the norm and dilated scorers
  and the pooling all compute what they computed in torchtitan. torchtitan's llama3 model always applies its
  RoPE scaling (factor 8, low 1, high 4, original 8192), so config.json carries `rope_scaling` of type
  "llama3" unless `rope_scaling=False` (for runs whose torchtitan was changed to skip it).
- `rope="after_select"` (runs of the official repository's open RoPE-after-selection change): the `lighthouse`
  block gets rope "after_select" and rope_freqs "unscaled", since that change rotates the selected entries with
  frequencies from rope_theta alone while the model's dense attention keeps the scaled ones.
- writes the directory with `lighthouse.checkpoint.save_checkpoint`: config.json with the `lighthouse` block
  (disabled for dense flavors), model.safetensors, generation_config.json and, given `tokenizer`, its files.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lighthouse.convert.torchtitan_args import ConversionError, resolve_model_args, torchtitan_ffn_dim
from lighthouse.model.config import LighthouseConfig, ModelConfig

ROPE_MODES = ("before_pool", "after_select")
DEFAULT_MAX_POSITION_EMBEDDINGS = 131072  # torchtitan's TransformerModelArgs.max_seq_len default
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_WRAPPER_PARTS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")
_MODEL_NAME = re.compile(r"^(tok_embeddings|norm|output|layers\.(\d+))\.")
_TOP_MAP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}
_LAYER_MAP = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


@dataclass
class ConversionResult:
    out_dir: Path
    config: ModelConfig
    skipped_entries: int  # DCP entries that are not model weights (optimizer, lr scheduler, dataloader, ...)
    has_tokenizer: bool
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ reading the DCP


def _dcp_reader(dcp_dir: Path):
    from torch.distributed.checkpoint import FileSystemReader

    if not dcp_dir.exists():
        raise ConversionError(f"DCP folder {dcp_dir} does not exist")
    if not dcp_dir.is_dir():
        raise ConversionError(f"{dcp_dir} is a file; pass the checkpoint folder (it holds .metadata and *.distcp)")
    if not (dcp_dir / ".metadata").exists():
        steps = sorted((p for p in dcp_dir.glob("step-*") if (p / ".metadata").exists()),
                       key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else -1)
        hint = f"; it holds step folders: pass one, e.g. {steps[-1]}" if steps else ""
        raise ConversionError(f"{dcp_dir} has no .metadata: not a torch.distributed.checkpoint folder{hint}")
    reader = FileSystemReader(str(dcp_dir))
    try:
        metadata = reader.read_metadata()
    except Exception as exc:  # noqa: BLE001 - any failure here means an unreadable folder
        raise ConversionError(f"cannot read {dcp_dir / '.metadata'}: {type(exc).__name__}: {exc}") from None
    return reader, metadata


def _model_entries(metadata) -> tuple[dict[str, tuple[str, tuple[int, ...], torch.dtype]], int]:
    """torchtitan name -> (the DCP key, shape, dtype) of every model weight, and how many other entries exist."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    found: dict[bool, dict[str, tuple[str, tuple[int, ...], torch.dtype]]] = {True: {}, False: {}}
    skipped = 0
    for fqn, meta in metadata.state_dict_metadata.items():
        name = fqn
        for part in _WRAPPER_PARTS:
            name = name.replace(part, "")
        prefixed = name.startswith("model.") and bool(_MODEL_NAME.match(name[len("model."):]))
        if prefixed:
            name = name[len("model."):]
        if not (prefixed or _MODEL_NAME.match(name)) or not isinstance(meta, TensorStorageMetadata):
            skipped += 1
            continue
        found[prefixed][name] = (fqn, tuple(meta.size), meta.properties.dtype)
    if found[True] and found[False]:
        raise ConversionError("the checkpoint holds model weights both at the top level and under 'model.'; "
                              "cannot tell which are the model's")
    entries = found[True] or found[False]
    if not entries:
        raise ConversionError("the checkpoint holds no torchtitan llama3 weights (no tok_embeddings/layers.N/norm/"
                              "output tensors, at the top level or under 'model.')")
    return entries, skipped


def _load_tensors(reader, entries: dict[str, tuple[str, tuple[int, ...], torch.dtype]], dcp_dir: Path
                  ) -> dict[str, Tensor]:
    import inspect

    import torch.distributed.checkpoint as dcp

    buffers = {fqn: torch.empty(shape, dtype=dtype) for fqn, shape, dtype in entries.values()}
    kwargs = {"no_dist": True} if "no_dist" in inspect.signature(dcp.load).parameters else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled, unavailable or uninitialized.*")
        try:
            dcp.load(buffers, storage_reader=reader, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
            failures = getattr(exc, "failures", None)  # rank -> (the reader's exception, its traceback)
            if isinstance(failures, dict) and failures:
                first = next(iter(failures.values()))
                exc = first[0] if isinstance(first, tuple) else first
            detail = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
            raise ConversionError(f"cannot read the model weights from {dcp_dir}: {detail} (a missing or truncated "
                                  ".distcp file?)") from None
    return {name: buffers[fqn] for name, (fqn, _, _) in entries.items()}


# ------------------------------------------------------------------------------------------ shapes -> config


def _sizes_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """vocab, dim, layers, q/kv rows, FFN width and tying from the weights' shapes (all layers must agree)."""
    if "tok_embeddings.weight" not in shapes:
        raise ConversionError("the checkpoint has no tok_embeddings.weight")
    vocab, dim = shapes["tok_embeddings.weight"]
    layer_ids = sorted({int(m.group(2)) for n in shapes if (m := _MODEL_NAME.match(n)) and m.group(2)})
    if layer_ids != list(range(len(layer_ids))) or not layer_ids:
        raise ConversionError(f"the checkpoint's layers are {layer_ids[:8]}...; expected layers 0..N-1")
    unknown = sorted(n for n in shapes if n not in _TOP_MAP
                     and not (n.startswith("layers.") and n.split(".", 2)[2] in _LAYER_MAP))
    if unknown:
        gla = [n for n in unknown if ".attention.wg." in n]
        if gla:
            raise ConversionError(f"{gla[0]} is the GLA scorer's gate: the 'gla' scorer is not supported here "
                                  "(this project's op has the 'norm' and 'dilated' scorers)")
        raise ConversionError(f"unexpected tensor {unknown[0]!r} (and {len(unknown) - 1} more): not a dense "
                              "torchtitan llama3 weight")
    first = [f"layers.0.{k}" for k in ("attention.wq.weight", "attention.wk.weight", "feed_forward.w1.weight")]
    if any(n not in shapes for n in first):
        raise ConversionError(f"the checkpoint is missing {next(n for n in first if n not in shapes)}")
    q_rows, kv_rows = shapes["layers.0.attention.wq.weight"][0], shapes["layers.0.attention.wk.weight"][0]
    ffn = shapes["layers.0.feed_forward.w1.weight"][0]
    want = {"attention.wq.weight": (q_rows, dim), "attention.wk.weight": (kv_rows, dim),
            "attention.wv.weight": (kv_rows, dim), "attention.wo.weight": (dim, q_rows),
            "feed_forward.w1.weight": (ffn, dim), "feed_forward.w3.weight": (ffn, dim),
            "feed_forward.w2.weight": (dim, ffn), "attention_norm.weight": (dim,), "ffn_norm.weight": (dim,)}
    expected = {f"layers.{i}.{k}": s for i in layer_ids for k, s in want.items()}
    expected["norm.weight"] = (dim,)
    if "output.weight" in shapes:
        expected["output.weight"] = (vocab, dim)
    for name, shape in expected.items():
        if name not in shapes:
            raise ConversionError(f"the checkpoint is missing {name}")
        if tuple(shapes[name]) != shape:
            raise ConversionError(f"{name} has shape {tuple(shapes[name])}; the other weights imply {shape}")
    return {"vocab_size": vocab, "dim": dim, "n_layers": len(layer_ids), "q_rows": q_rows, "kv_rows": kv_rows,
            "ffn": ffn, "tied": "output.weight" not in shapes}


def build_model_config(
    shapes: dict[str, tuple[int, ...]], args: dict[str, Any], given: set[str], *, rope_scaling: bool = True,
    rope: str = "before_pool", max_position_embeddings: int | None = None, min_seq_len: int = 0,
    special_ids: dict[str, Any] | None = None,
) -> ModelConfig:
    """Our ModelConfig for torchtitan weights of these shapes and these model arguments (see resolve_model_args)."""
    s = _sizes_from_shapes(shapes)

    def disagree(what: str, value, tensor: str, actual) -> ConversionError:
        return ConversionError(f"the model arguments give {what}={value}, but the checkpoint's {tensor} has shape "
                               f"{tuple(shapes[tensor])} ({what}={actual}); check --flavor, --config-json and the "
                               "flags (sizes are read from the weights: flags for them can be left out)")

    for key, tensor in (("dim", "tok_embeddings.weight"), ("vocab_size", "tok_embeddings.weight")):
        if key in given and int(args[key]) != s[key]:
            raise disagree(key, args[key], tensor, s[key])
    if "n_layers" in given and int(args["n_layers"]) != s["n_layers"]:
        raise ConversionError(f"the model arguments give n_layers={args['n_layers']}, but the checkpoint has "
                              f"{s['n_layers']} layers")
    if "n_heads" not in given:
        raise ConversionError("the number of attention heads cannot be read from the weights: pass --n-heads, "
                              "a --flavor or --config-json with n_heads")
    n_heads = int(args["n_heads"])
    if n_heads < 1 or s["dim"] % n_heads or s["q_rows"] != s["dim"]:
        raise ConversionError(f"n_heads={n_heads} does not fit the weights: dim {s['dim']}, wq rows {s['q_rows']} "
                              "(torchtitan's head_dim is dim // n_heads)")
    head_dim = s["dim"] // n_heads
    if head_dim % 2 or s["kv_rows"] % head_dim:
        raise ConversionError(f"n_heads={n_heads} gives head_dim {head_dim}, which does not fit wk's "
                              f"{s['kv_rows']} rows (or is odd)")
    n_kv = s["kv_rows"] // head_dim
    if args.get("n_kv_heads") is not None and "n_kv_heads" in given and int(args["n_kv_heads"]) != n_kv:
        raise disagree("n_kv_heads", args["n_kv_heads"], "layers.0.attention.wk.weight", n_kv)
    if given & {"hidden_dim", "multiple_of", "ffn_dim_multiplier"}:
        ffn = torchtitan_ffn_dim(s["dim"], args["hidden_dim"], int(args["multiple_of"]), args["ffn_dim_multiplier"])
        if ffn != s["ffn"]:
            raise ConversionError(
                f"the model arguments (hidden_dim={args['hidden_dim']}, multiple_of={args['multiple_of']}, "
                f"ffn_dim_multiplier={args['ffn_dim_multiplier']}) give an FFN width of {ffn} (torchtitan: 2/3 of "
                f"hidden_dim, rounded up to multiple_of), but layers.0.feed_forward.w1.weight has {s['ffn']} rows")
    if n_heads % n_kv:
        raise ConversionError(f"n_heads={n_heads} is not a multiple of the checkpoint's {n_kv} KV heads")
    scaling = None
    if rope_scaling:
        r = args["rope_scaling_args"]
        scaling = {"rope_type": "llama3", "factor": float(r["scaling_factor"]),
                   "low_freq_factor": float(r["low_freq_factor"]), "high_freq_factor": float(r["high_freq_factor"]),
                   "original_max_position_embeddings": int(r["original_max_position_embeddings"])}
    max_pos = max_position_embeddings or (int(args["max_seq_len"]) if "max_seq_len" in given
                                          else DEFAULT_MAX_POSITION_EMBEDDINGS)
    ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None, **(special_ids or {})}
    try:
        return ModelConfig(
            vocab_size=s["vocab_size"], hidden_size=s["dim"], intermediate_size=s["ffn"],
            num_hidden_layers=s["n_layers"], num_attention_heads=n_heads, num_key_value_heads=n_kv,
            head_dim=head_dim, rms_norm_eps=float(args["norm_eps"]), rope_theta=float(args["rope_theta"]),
            rope_scaling=scaling, max_position_embeddings=int(max_pos), tie_word_embeddings=s["tied"],
            lighthouse=_lighthouse_block(args, given, rope, min_seq_len), **ids,
        )
    except ValueError as exc:  # ModelConfig.validate (e.g. full_attn_layers outside the model)
        raise ConversionError(str(exc)) from None


def _lighthouse_fields() -> set[str]:
    """The `lighthouse` block's fields in this version (`rope` and `dilation` are written only where they exist)."""
    return {f.name for f in dataclasses.fields(LighthouseConfig)}


def _lighthouse_block(args: dict[str, Any], given: set[str], rope: str, min_seq_len: int) -> LighthouseConfig:
    from lighthouse.ops.validation import DILATION, check_config

    fields = _lighthouse_fields()
    if rope not in ROPE_MODES:
        raise ConversionError(f"rope must be one of {ROPE_MODES} (got {rope!r})")
    extra: dict[str, Any] = {}
    if "rope" in fields:
        extra["rope"] = rope
        if rope == "after_select":  # the official change's rotation after selection ignores the RoPE scaling
            extra["rope_freqs"] = "unscaled"
    elif rope != "before_pool":
        raise ConversionError(f"rope={rope!r} is not supported by this version: the model's `lighthouse` block has "
                              "no `rope` field yet (only the published 'before_pool' variant runs)")
    if not args["use_selection_lighthouse"]:
        settings = sorted(given & {"lighthouse_num_levels", "lighthouse_pooling_factor", "lighthouse_topk",
                                   "lighthouse_scorer", "lighthouse_full_attn_layers"})
        if settings and "use_selection_lighthouse" not in given:
            raise ConversionError(f"Lighthouse settings are given ({', '.join(settings)}) but use_selection_lighthouse "
                                  "is off: pass --use-selection-lighthouse (or --no-use-selection-lighthouse for a "
                                  "dense model)")
        return LighthouseConfig(enabled=False, **extra)
    scorer = str(args["lighthouse_scorer"] or "norm").lower()
    if scorer == "gla":
        raise ConversionError("the 'gla' scorer is not supported here: this project's op has 'norm' and 'dilated'")
    dilation = int(args["dilation"])
    if scorer == "dilated":
        if "dilation" in fields:
            extra["dilation"] = dilation
        elif dilation != DILATION:
            raise ConversionError(f"the dilated scorer with dilation {dilation} is not supported: this project's op "
                                  f"runs dilation {DILATION} only")
    levels, pool, topk = (int(args[k]) for k in ("lighthouse_num_levels", "lighthouse_pooling_factor",
                                                 "lighthouse_topk"))
    try:
        check_config(levels, pool, topk, scorer)
    except ValueError as exc:
        raise ConversionError(f"the run's Lighthouse settings (levels {levels}, pooling factor {pool}, topk {topk}, "
                              f"scorer {scorer!r}) are not supported: {exc}") from None
    full = [int(i) for i in (args["lighthouse_full_attn_layers"] or [])]
    return LighthouseConfig(enabled=True, levels=levels, pooling_factor=pool, topk=topk, scorer=scorer,
                            full_attn_layers=full, min_seq_len=int(min_seq_len), **extra)


# ------------------------------------------------------------------------------------------ weights


def interleaved_to_halves(w: Tensor, n_heads: int) -> Tensor:
    """Rows of a q or k projection from torchtitan's RoPE layout (pairs at dims 2i, 2i+1 of each head) to HF's
    (pairs at dims i, i + head_dim/2): within each head, the even rows first, then the odd ones."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def torchtitan_to_hf_state(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """torchtitan names and RoPE layout -> HF Llama names and layout (the same tensors, q/k rows permuted)."""
    out = {}
    for name, t in state.items():
        if name in _TOP_MAP:
            out[_TOP_MAP[name]] = t
            continue
        _, idx, rest = name.split(".", 2)
        if rest == "attention.wq.weight":
            t = interleaved_to_halves(t, config.num_attention_heads)
        elif rest == "attention.wk.weight":
            t = interleaved_to_halves(t, config.num_key_value_heads)
        out[f"model.layers.{idx}.{_LAYER_MAP[rest]}"] = t.contiguous()
    return out


class _NoTokenizer:
    """Stands in for a tokenizer in save_checkpoint: writes no tokenizer files and names no stop token (without it
    save_checkpoint would write the byte-level tokenizer, which does not fit a torchtitan model's vocabulary)."""

    unk_token_id = None

    def save_pretrained(self, path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def convert_tokens_to_ids(self, token):
        return None


def convert_torchtitan(
    dcp_dir: str | os.PathLike, out_dir: str | os.PathLike, *, flavor: str | None = None,
    config_json: str | os.PathLike | None = None, model_args: dict[str, Any] | None = None,
    tokenizer: str | os.PathLike | None = None, rope: str = "before_pool", rope_scaling: bool = True,
    max_position_embeddings: int | None = None, min_seq_len: int = 0, dtype: str | torch.dtype | None = None,
) -> ConversionResult:
    """Convert a torchtitan llama3 DCP folder into our HF checkpoint directory `out_dir` (new or empty).

    flavor / config_json / model_args: torchtitan model arguments (see resolve_model_args); n_heads is required
    from one of them. tokenizer: an HF tokenizer directory or tokenizer.json, copied into out_dir (serving needs
    one). dtype: of the stored weights (default: as in the DCP; float32 if it mixes dtypes). Raises
    ConversionError (a ValueError) on bad input, before anything is written.
    """
    from lighthouse.checkpoint import save_checkpoint, verify_checkpoint
    from lighthouse.model.llama import LlamaForCausalLM
    from lighthouse.ops.rope import lighthouse_inv_freq, rope_inv_freq

    dcp_path, out = Path(dcp_dir), Path(out_dir)
    args, given = resolve_model_args(flavor, config_json, model_args)
    reader, metadata = _dcp_reader(dcp_path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out} exists and is not an empty directory; pass a new or empty --out")
    entries, skipped = _model_entries(metadata)
    tok, ids, notes = None, {}, []
    if tokenizer is not None:
        from lighthouse.tokenizer import load_tokenizer

        try:
            tok = load_tokenizer(tokenizer)
        except Exception as exc:  # noqa: BLE001 - any loading failure is reported with the path
            raise ConversionError(f"cannot load the tokenizer {tokenizer}: {type(exc).__name__}: {exc}") from None
        ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = build_model_config({n: e[1] for n, e in entries.items()}, args, given, rope_scaling=rope_scaling,
                                rope=rope, max_position_embeddings=max_position_embeddings,
                                min_seq_len=min_seq_len, special_ids=ids)
    if tok is not None and len(tok) > config.vocab_size:
        raise ConversionError(f"the tokenizer {tokenizer} has {len(tok)} ids, more than the model's "
                              f"{config.vocab_size} embedding rows: is it the run's tokenizer?")
    if args.get("use_lighthouse_cp") and config.lighthouse.enabled:
        notes.append("this run trained with the context-parallel Lighthouse path, which selects per sequence shard; "
                     "the converted model selects over the whole sequence with the same (levels, pooling, topk)")
    if isinstance(dtype, str) and dtype not in _DTYPES:
        raise ConversionError(f"dtype must be one of {sorted(_DTYPES)} (got {dtype!r})")
    stored = {e[2] for e in entries.values()}
    want = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    if want is None:
        want = stored.pop() if len(stored) == 1 else torch.float32
    tensors = _load_tensors(reader, entries, dcp_path)
    state = torchtitan_to_hf_state({k: v.to(want) for k, v in tensors.items()}, config)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    if config.tie_word_embeddings:  # no `output` tensor: the head is the embedding
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.inv_freq, model.lighthouse_inv_freq = rope_inv_freq(config), lighthouse_inv_freq(config)
    save_checkpoint(model, tok if tok is not None else _NoTokenizer(), out)
    verify_checkpoint(out, require_tokenizer=tok is not None)
    return ConversionResult(out_dir=out, config=config, skipped_entries=skipped, has_tokenizer=tok is not None,
                            notes=notes)
