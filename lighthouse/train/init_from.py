"""`lighthouse train --init-from HF_DIR`: start from an existing HF Llama checkpoint instead of random weights.

`load_init_model(cfg)` checks the directory up front (a Llama causal LM: config.json with model_type "llama",
safetensors weights, the HF tokenizer as tokenizer.json), loads weights and tokenizer through
lighthouse.checkpoint in fp32 (GQA, llama3 RoPE scaling and tied embeddings as the checkpoint has them, so the
logits equal transformers' on the same directory) and gives the model the `lighthouse` block it trains with.

The block comes from, in order: the training flags (--levels, --pooling-factor, --topk, --scorer,
--full-attn-layers, --min-seq-len), the checkpoint's own `lighthouse` block if it has one, and these defaults
(`default_lighthouse`), chosen so that the Lighthouse stage runs at --seq-len:
  pooling_factor  4
  topk            seq_len / 64 rounded down to a multiple of 128, at least 128 (256 at 16K, 1536 at 96K)
  levels          3, or 2 when seq_len < pooling_factor^2 * topk
  full_attn_layers the first and the last layer (none in a model of one or two layers)
  min_seq_len     the op's own minimum, pooling_factor^(levels-1) * topk
  scorer          norm

Context extension (`extend_rope`): --max-position-embeddings above the checkpoint's own positions extends it the
way Llama 3.1 extended its context: llama3 RoPE scaling with factor new/old positions (low_freq_factor 1,
high_freq_factor 4, original_max_position_embeddings the old positions), so the short wavelengths that local
attention relies on are kept and the long ones slowed down to what training saw; a checkpoint that already has
llama3 scaling gets its factor multiplied. --rope-theta instead changes the base ("adjusted base frequency"),
with the positions as given. Either way the run then fine-tunes at --seq-len on the new RoPE.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lighthouse.checkpoint import CheckpointError, load_checkpoint
from lighthouse.model.config import LighthouseConfig, ModelConfig
from lighthouse.ops.validation import TILE_BUDGET, check_config, min_seq_len
from lighthouse.tokenizer import load_tokenizer
from lighthouse.train.config import ConfigError, TrainConfig

_FLAGS = {  # TrainConfig field -> (LighthouseConfig field, the flag that sets it)
    "lighthouse_levels": ("levels", "--levels"),
    "lighthouse_pooling_factor": ("pooling_factor", "--pooling-factor"),
    "lighthouse_topk": ("topk", "--topk"),
    "lighthouse_scorer": ("scorer", "--scorer"),
    "lighthouse_full_attn_layers": ("full_attn_layers", "--full-attn-layers"),
    "lighthouse_min_seq_len": ("min_seq_len", "--min-seq-len"),
    "lighthouse_rope": ("rope", "--lighthouse-rope"),
}


def default_lighthouse(num_layers: int, seq_len: int, *, pooling_factor: int | None = None,
                       topk: int | None = None) -> LighthouseConfig:
    """The block --init-from gives a checkpoint that has none (see the module docstring)."""
    p = pooling_factor or 4
    k = topk or max(TILE_BUDGET, (seq_len // 64) // TILE_BUDGET * TILE_BUDGET)
    levels = 3 if p ** 2 * k <= seq_len else 2
    full = [0, num_layers - 1] if num_layers >= 3 else []
    return LighthouseConfig(enabled=True, levels=levels, pooling_factor=p, topk=k, scorer="norm",
                            full_attn_layers=full, min_seq_len=min_seq_len(levels, p, k))


def lighthouse_overrides(cfg: TrainConfig) -> dict:
    """LighthouseConfig field -> value, for the lighthouse_* fields the configuration sets."""
    return {field: getattr(cfg, name) for name, (field, _) in _FLAGS.items() if getattr(cfg, name) is not None}


def resolve_lighthouse(cfg: TrainConfig, config: ModelConfig, *, adapting: bool) -> LighthouseConfig:
    """The `lighthouse` block to train with: the flags over `config.lighthouse` (a model preset's block, or a
    checkpoint's own block), or over `default_lighthouse` when adapting a checkpoint that has none.
    Raises ConfigError naming the flag to change when the Lighthouse stage could not run Lighthouse."""
    over = lighthouse_overrides(cfg)
    if adapting and not config.lighthouse.enabled:
        # derived values (levels, min_seq_len) follow the pooling factor and topk that the flags set
        base = default_lighthouse(config.num_hidden_layers, cfg.seq_len, pooling_factor=over.get("pooling_factor"),
                                  topk=over.get("topk"))
        if "min_seq_len" not in over:
            base.min_seq_len = min_seq_len(over.get("levels", base.levels), base.pooling_factor, base.topk)
    else:
        base = LighthouseConfig(**config.lighthouse.to_dict())
    lh = LighthouseConfig(**{**base.to_dict(), **over, "enabled": True})
    lh.full_attn_layers = sorted({int(i) for i in lh.full_attn_layers})
    if adapting or over:
        check_lighthouse_stage(cfg, lh, config.num_hidden_layers)
    return lh


def check_lighthouse_stage(cfg: TrainConfig, lh: LighthouseConfig, num_layers: int) -> None:
    """The Lighthouse stage must run the op: valid op parameters, some layer not in full_attn_layers, and
    --seq-len at least the op's minimum and min_seq_len (shorter sequences run dense)."""
    try:
        check_config(lh.levels, lh.pooling_factor, lh.topk, lh.scorer)
    except ValueError as exc:
        raise ConfigError(f"invalid Lighthouse settings (--levels/--pooling-factor/--topk/--scorer): {exc}") from None
    if lh.levels < 2:
        raise ConfigError("--levels must be at least 2: one level selects every position, which is dense attention")
    bad = [i for i in lh.full_attn_layers if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"--full-attn-layers {bad} are outside the model's layers 0..{num_layers - 1}")
    if cfg.tail_steps() >= cfg.max_steps:
        return  # no Lighthouse stage: every step is dense
    if len(lh.full_attn_layers) >= num_layers:
        raise ConfigError(
            f"--full-attn-layers {lh.full_attn_layers} leaves no layer of the {num_layers} to run Lighthouse; "
            "list fewer layers (or 'none')"
        )
    need = max(min_seq_len(lh.levels, lh.pooling_factor, lh.topk), lh.min_seq_len)
    if cfg.seq_len < need:
        raise ConfigError(
            f"--seq-len {cfg.seq_len} is below the Lighthouse minimum {need} for levels={lh.levels}, "
            f"pooling_factor={lh.pooling_factor}, topk={lh.topk}, min_seq_len={lh.min_seq_len}, so the Lighthouse "
            f"stage would run dense: raise --seq-len to {need} or more, or lower --topk/--levels/--min-seq-len"
        )


# ---------------------------------------------------------------- the source checkpoint


def check_source(path: str | Path) -> dict:
    """config.json of an adaptable checkpoint directory, or ConfigError saying what is wrong with it."""
    src = Path(path)
    if not src.is_dir():
        what = "is a file" if src.exists() else "does not exist"
        raise ConfigError(f"--init-from {src} {what}; pass an HF Llama checkpoint directory "
                          "(config.json, model.safetensors, tokenizer.json)")
    conf = src / "config.json"
    if not conf.is_file():
        raise ConfigError(f"--init-from {src} has no config.json; is it an HF checkpoint directory?")
    try:
        data = json.loads(conf.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{conf} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{conf} is not a JSON object")
    model_type = data.get("model_type")
    archs = data.get("architectures") or []
    if model_type != "llama" or (archs and "LlamaForCausalLM" not in archs):
        got = f"model_type {model_type!r}" + (f", architectures {archs}" if archs else "")
        raise ConfigError(
            f"--init-from {src} is not a Llama causal LM ({got}); it adapts HF Llama checkpoints only "
            "(model_type 'llama', architecture LlamaForCausalLM)"
        )
    if not (src / "tokenizer.json").is_file():
        extra = " (it has only tokenizer.model: re-save it with AutoTokenizer.from_pretrained(dir).save_pretrained(dir))" \
            if (src / "tokenizer.model").exists() else ""
        raise ConfigError(
            f"--init-from {src} has no tokenizer.json{extra}; the adapted checkpoint is trained and served with the "
            "checkpoint's own HF tokenizer, so tokenizer.json must be in the directory"
        )
    return data


def source_save_dtype(data: dict) -> str:
    """"bf16" when the source checkpoint stores bfloat16 weights, else "fp32"."""
    return "bf16" if str(data.get("torch_dtype", data.get("dtype"))) == "bfloat16" else "fp32"


def load_init_model(cfg: TrainConfig):
    """-> (LlamaForCausalLM in fp32 on the CPU with the `lighthouse` block to train with, its tokenizer, the
    source's config.json). Every error is a ConfigError or a CheckpointError that says what to change."""
    data = check_source(cfg.init_from)
    try:
        tokenizer = load_tokenizer(cfg.init_from)
    except Exception as exc:  # noqa: BLE001 - any failure to read it is the same message to the user
        raise ConfigError(f"--init-from {cfg.init_from}: its tokenizer cannot be loaded: {type(exc).__name__}: "
                          f"{exc}") from None
    vocab = data.get("vocab_size")
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise ConfigError(
            f"--init-from {cfg.init_from}: its tokenizer has {len(tokenizer)} tokens but the model's embedding only "
            f"{vocab} rows; the tokenizer does not belong to these weights"
        )
    try:
        model, _ = load_checkpoint(cfg.init_from, device="cpu", dtype=torch.float32, load_tokenizer=False)
    except CheckpointError as exc:
        raise ConfigError(f"--init-from {cfg.init_from} cannot be loaded: {exc}") from None
    model.config.lighthouse = resolve_lighthouse(cfg, model.config, adapting=True)
    return model, tokenizer, data


def extend_rope(model, cfg: TrainConfig) -> str | None:
    """Apply --max-position-embeddings / --rope-theta to an adapted checkpoint's model (see the module docstring):
    its config and RoPE buffers change in place. -> one line saying what changed, or None when nothing did.
    ConfigError when the checkpoint's RoPE cannot be extended this way (the message says what to pass)."""
    from lighthouse.ops.rope import lighthouse_inv_freq, rope_inv_freq

    c = model.config
    old = c.max_position_embeddings
    new = cfg.max_position_embeddings
    if new is not None and new < old:
        raise ConfigError(f"--max-position-embeddings {new} is below the {old} positions {cfg.init_from} already has; "
                          "drop it (the checkpoint keeps its own) or pass a larger value to extend its context")
    if cfg.rope_theta is not None:
        c.rope_theta = float(cfg.rope_theta)
        c.max_position_embeddings = new or old
        what = f"RoPE base {c.rope_theta:g}"
    elif new is not None and new > old:
        factor = new / old
        if c.rope_type == "default":
            c.rope_scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": old}
        elif c.rope_type == "llama3":
            c.rope_scaling = {**c.rope_scaling, "factor": float(c.rope_scaling["factor"]) * factor}
        else:
            raise ConfigError(f"{cfg.init_from} has {c.rope_type} RoPE scaling, which --max-position-embeddings cannot "
                              "extend; pass --rope-theta as well to extend it by the RoPE base instead")
        c.max_position_embeddings = new
        what = f"llama3 RoPE scaling x{c.rope_scaling['factor']:g} (original {c.rope_scaling['original_max_position_embeddings']})"
    else:
        return None
    device = model.inv_freq.device
    model.inv_freq = rope_inv_freq(c).to(device)
    model.lighthouse_inv_freq = lighthouse_inv_freq(c).to(device)
    return f"context extended from {old} to {c.max_position_embeddings} positions: {what}"


def describe(config: ModelConfig) -> str:
    """One line on an adapted model: sizes, attention heads, RoPE, tying, and where Lighthouse runs."""
    lh = config.lighthouse
    lh_layers = [i for i in range(config.num_hidden_layers) if i not in lh.full_attn_layers]
    rope = config.rope_type + (f" x{config.rope_scaling.get('factor')}" if config.rope_scaling else "")
    return (f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads}/"
            f"{config.num_key_value_heads} heads, vocab {config.vocab_size}, RoPE {rope} (theta {config.rope_theta:g}), "
            f"{'tied' if config.tie_word_embeddings else 'untied'} embeddings; Lighthouse L{lh.levels} "
            f"p{lh.pooling_factor} k{lh.topk} ({lh.scorer}) on layers {lh_layers}, dense {lh.full_attn_layers}, "
            f"min_seq_len {lh.min_seq_len}")
