"""llama.cpp GGUF file (architecture "llama", "qwen2" or "qwen3") -> our HF checkpoint directory.

    from lighthouse.convert import convert_gguf
    convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "runs/smollm2")  # CLI: lighthouse convert gguf FILE --out DIR

What it does:
- reads the file with llama.cpp's own Python reader (`gguf.GGUFReader`, PyPI `gguf`) and dequantizes every
  tensor to float32 with `gguf.quants.dequantize`. Supported tensor types: SUPPORTED_TYPES (F32, F16, BF16, Q8_0,
  Q4_0, Q4_1, Q4_K, Q5_K, Q6_K); another type is refused naming the tensor. The weights are stored in `dtype`
  (default bfloat16, half the size of float32: it rounds each dequantized weight to 8 significant bits, far below
  the quantization's own error; float32 keeps the dequantized values exactly). A tensor's GGUF shape is ggml's
  (columns first); numpy's is the reverse, HF's order.
- config: `gguf_config.build_config` (the architecture's `<arch>.*` keys; model_type = the architecture).
- names: token_embd -> model.embed_tokens, output_norm -> model.norm, output -> lm_head (absent: tied
  embeddings), blk.N.attn_norm / attn_q / attn_k / attn_v / attn_output / ffn_norm / ffn_gate / ffn_up /
  ffn_down -> model.layers.N.input_layernorm / self_attn.q_proj / k_proj / v_proj / o_proj /
  post_attention_layernorm / mlp.gate_proj / up_proj / down_proj; Qwen2's blk.N.attn_q/k/v.bias ->
  self_attn.q/k/v_proj.bias, Qwen3's blk.N.attn_q_norm / attn_k_norm -> self_attn.q_norm / k_norm
  (`gguf_config.ARCHITECTURES`).
- q/k rows, llama only: llama.cpp rotates adjacent pairs (dims 2i, 2i+1 of a head) where HF rotates halves (dims
  i and i + D/2), so convert_hf_to_gguf.py reorders the rows of q_proj and k_proj within each head:
  `LlamaModel.permute` views the rows as (n_head, 2, D/2) and swaps the last two axes, with n_head = head_count
  for q and head_count_kv for k. `unpermute_rows` applies the inverse: rows viewed as (n_head, D/2, 2), last two
  axes swapped. Qwen2 and Qwen3 use llama.cpp's NEOX RoPE (rotate-half, as HF): their rows are stored as HF has them.
- tokenizer: `gguf_tokenizer.build_tokenizer` (byte-level BPE "gpt2" only), the chat template kept.
- writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json and
  generation_config.json into a temporary folder beside `out_dir`, checks it with `verify_checkpoint`, then
  renames it into place: an error or a crash never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lighthouse.convert.gguf_config import ARCHITECTURES, architecture, build_config
from lighthouse.convert.gguf_tokenizer import build_tokenizer, write_tokenizer
from lighthouse.convert.torchtitan_args import ConversionError
from lighthouse.model.config import ModelConfig

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+\.(?:weight|bias))$")


@dataclass
class GGUFConversion:
    out_dir: Path
    config: ModelConfig
    dtype: str  # of the stored weights
    tensor_types: dict[str, int]  # GGUF tensor type -> how many tensors had it
    tokenizer: str  # what was built, e.g. "gpt2 BPE, pre-tokenizer smollm, 49152 tokens, 48900 merges"
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ reading


def _field_value(f) -> Any:
    """A metadata field's value (str, int, float, bool or a list of them), from the reader's raw parts (the
    layout every gguf release since 0.10 uses; `ReaderField.contents()` is newer)."""
    from gguf import GGUFValueType

    def one(part, typ):
        return bytes(part).decode("utf-8") if typ == GGUFValueType.STRING else part.tolist()[0]

    if f.types[0] == GGUFValueType.ARRAY:
        return [one(f.parts[i], f.types[-1]) for i in f.data]
    return one(f.parts[f.data[0]], f.types[0])


def open_gguf(path: str | os.PathLike):
    """-> (gguf.GGUFReader, metadata: key -> value). Raises ConversionError for a missing or unreadable file."""
    from gguf import GGUFReader

    p = Path(path)
    if not p.is_file():
        raise ConversionError(f"GGUF file {p} does not exist" if not p.exists() else f"{p} is not a file")
    try:
        reader = GGUFReader(str(p))
        meta = {k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is not a readable GGUF
        detail = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
        raise ConversionError(f"cannot read {p} as a GGUF file: {detail}") from None
    return reader, meta


def dequantize(tensor) -> np.ndarray:
    """A GGUF tensor (a `gguf.ReaderTensor`) as float32 in numpy order (ggml's shape reversed: (rows, cols) for a
    matrix). Raises ConversionError naming the tensor if its type is not in SUPPORTED_TYPES."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    qtype = GGMLQuantizationType(int(tensor.tensor_type))
    if qtype.name not in SUPPORTED_TYPES:
        raise ConversionError(f"tensor {tensor.name!r} has type {qtype.name}, which is not supported; supported "
                              f"types: {', '.join(SUPPORTED_TYPES)} (requantize the model, e.g. with llama.cpp's "
                              "llama-quantize, to one of them)")
    shape = tuple(int(d) for d in reversed(list(tensor.shape)))
    out = np.asarray(gguf_dequantize(tensor.data, qtype), dtype=np.float32).reshape(shape)
    return out if out.flags.writeable else out.copy()  # F32 data is a view of the read-only file


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order (pairs at rows 2i, 2i+1 of each head) -> HF's (pairs at i, i + D/2).
    w: (n_head * D, cols)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ------------------------------------------------------------------------------------------ weights


def hf_name(name: str, arch: str = "llama") -> str:
    """GGUF tensor name -> HF parameter name (e.g. blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight)."""
    if name in _TOP:
        return _TOP[name]
    m = _BLOCK.match(name)
    layer = {f"{k}.weight": f"{v}.weight" for k, v in _LAYER.items()} | ARCHITECTURES[arch].extra
    if not m or m.group(2) not in layer:
        raise ConversionError(f"unexpected tensor {name!r}: not a plain {arch} weight")
    return f"model.layers.{m.group(1)}.{layer[m.group(2)]}"


def hf_state_dict(reader, config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every weight of the GGUF, dequantized, with q/k rows un-permuted (llama), under HF names, in `dtype`.
    config.model_type names the GGUF architecture."""
    arch = config.model_type
    permuted = ARCHITECTURES[arch].permuted_qk
    state = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue
        w = dequantize(t)
        if permuted and t.name.endswith(".attn_q.weight"):
            w = unpermute_rows(w, config.num_attention_heads)
        elif permuted and t.name.endswith(".attn_k.weight"):
            w = unpermute_rows(w, config.num_key_value_heads)
        state[hf_name(t.name, arch)] = torch.from_numpy(w).to(dtype).contiguous()
    return state


# ------------------------------------------------------------------------------------------ converting


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _write_checkpoint(out: Path, state: dict[str, torch.Tensor], tok, config: ModelConfig, dtype_name: str) -> None:
    """All files into a temporary folder beside `out`, checked with verify_checkpoint, then renamed to `out`."""
    from safetensors.torch import save_file

    from lighthouse.checkpoint import verify_checkpoint

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp / "model.safetensors", 0o666 & ~mask)  # safetensors creates it 0600; a server user must read it
        write_tokenizer(tok, tmp, model_max_length=config.max_position_embeddings)
        stops = tok.stop_ids  # EOS, end-of-turn, end-of-message: each ends a generation
        _write_json(tmp / "generation_config.json", {
            "bos_token_id": config.bos_token_id, "eos_token_id": stops[0] if len(stops) == 1 else (stops or None),
            "pad_token_id": config.pad_token_id, "do_sample": False})
        hf = config.to_hf_dict()
        del hf["lighthouse"]  # a dense model: every layer runs dense attention
        hf["torch_dtype"] = dtype_name
        _write_json(tmp / "config.json", hf)
        verify_checkpoint(tmp, require_tokenizer=True)
        if out.exists():
            out.rmdir()  # checked empty before
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_gguf(path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 dtype: str | torch.dtype = "bfloat16") -> GGUFConversion:
    """Convert a llama.cpp GGUF file of a dense Llama, Qwen2 or Qwen3 model (general.architecture "llama", "qwen2",
    "qwen3") into our HF checkpoint directory `out_dir` (new or empty) of that model_type. dtype: of the stored
    weights, "float32" | "bfloat16" | "float16" (or the torch dtype). Raises ConversionError (a ValueError) on bad
    input (another architecture, an unsupported tensor type or tokenizer, a malformed file) naming what is wrong;
    nothing is left under out_dir then."""
    names = {v: k for k, v in _DTYPES.items()}
    want = _DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if want not in names:
        raise ConversionError(f"dtype must be one of {sorted(_DTYPES)} (got {dtype!r})")
    src, out = Path(path), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out} exists and is not an empty directory; pass a new or empty --out")
    reader, meta = open_gguf(src)
    architecture(meta, str(src))
    tok = build_tokenizer(meta, str(src))
    shapes = {t.name: tuple(int(d) for d in reversed(list(t.shape))) for t in reader.tensors}
    freqs = next((dequantize(t) for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    config = build_config(meta, shapes, tok.ids, freqs)
    n_tokens = len(tok.tokenizer_json["model"]["vocab"])
    if n_tokens > config.vocab_size:
        raise ConversionError(f"the tokenizer has {n_tokens} tokens, more than token_embd's {config.vocab_size} rows")
    notes = [f"RoPE scaling from rope_freqs.weight: {config.rope_scaling}"] if freqs is not None else []
    if not tok.chat_template:
        notes.append("the GGUF has no chat template (tokenizer.chat_template): chat requests use a plain one")
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    state = hf_state_dict(reader, config, want)  # dequantizes: refuses an unsupported type before writing
    _write_checkpoint(out, state, tok, config, names[want])
    return GGUFConversion(out_dir=out, config=config, dtype=names[want], tensor_types=types,
                          tokenizer=tok.description, notes=notes)
