"""`lighthouse train`: argv -> TrainConfig -> Trainer. Every flag overrides the chosen preset.

    lighthouse train --preset tiny --max-steps 30 --out runs/tiny
    torchrun --nproc-per-node 8 -m lighthouse.train --preset h200 --out runs/h200
    torchrun --nproc-per-node 4 -m lighthouse.train --preset h200 --fsdp --activation-checkpointing --out runs/h200
    lighthouse train --init-from my-llama/ --data my_docs/ --out runs/my-llama-lighthouse

--init-from adapts an existing HF Llama checkpoint (its weights and tokenizer) instead of training a preset's
model from scratch; its defaults are lighthouse.train.config.adapt_preset's, and --preset/--model are refused.
"""

from __future__ import annotations

import argparse
import sys

from lighthouse.train.config import TRAIN_PRESETS, ConfigError, TrainConfig, adapt_preset, train_preset
from lighthouse.train.synthetic import ALL_FILLERS

# flag -> TrainConfig field (value type comes from argparse)
_OVERRIDES = {
    "out": "out_dir", "max_steps": "max_steps", "seq_len": "seq_len", "batch_size": "batch_size",
    "micro_batch_size": "micro_batch_size", "lr": "lr", "warmup_steps": "warmup_steps", "decay": "decay",
    "weight_decay": "weight_decay", "grad_clip": "grad_clip", "dense_tail_steps": "dense_tail_steps",
    "dense_tail_fraction": "dense_tail_fraction", "time_budget_s": "time_budget_s", "seed": "seed",
    "device": "device", "dtype": "dtype", "eval_every": "eval_every", "eval_samples": "eval_samples",
    "log_every": "log_every", "save_every": "save_every", "keep_last": "keep_last", "model": "model_preset",
    "synthetic_fraction": "synthetic_fraction", "answer_loss_weight": "answer_loss_weight", "chat_fraction": "chat_fraction", "save_dtype": "save_dtype", "stop_at_step": "stop_at_step",
    "curriculum_start_len": "curriculum_start_len", "curriculum_fraction": "curriculum_fraction",
    "data_workers": "data_workers", "parallel": "parallel",
    "levels": "lighthouse_levels", "pooling_factor": "lighthouse_pooling_factor", "topk": "lighthouse_topk",
    "scorer": "lighthouse_scorer", "full_attn_layers": "lighthouse_full_attn_layers",
    "min_seq_len": "lighthouse_min_seq_len", "lighthouse_rope": "lighthouse_rope",
    "lora_rank": "lora_rank", "lora_alpha": "lora_alpha", "init_adapter": "init_adapter",
    "max_position_embeddings": "max_position_embeddings", "rope_theta": "rope_theta",
    "longdoc": "longdoc", "longdoc_lm_fraction": "longdoc_lm_fraction",
}


def _layer_list(text: str) -> list[int]:
    """'0,1,28,29' -> [0, 1, 28, 29]; 'none' -> []."""
    if text.strip().lower() == "none":
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layer indices like 0,1,28,29 or 'none' (got {text!r})") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(TRAIN_PRESETS), help="training preset (default: tiny; not with --init-from)")
    p.add_argument("--init-from", metavar="HF_DIR",
                   help="adapt this HF Llama checkpoint (safetensors + tokenizer.json) instead of training a preset's "
                        "model from scratch: its weights and tokenizer, a `lighthouse` block from the flags below, the "
                        "Lighthouse stage then the dense tail on --data (required: your documents, or 'none' for "
                        "synthetic tasks); defaults --seq-len 8192, --max-steps 500 (last 30%% dense), --lr 1e-4 "
                        "cosine, --batch-size 8, --micro-batch-size 1, saved in the source's dtype; "
                        "--out runs/<HF_DIR name>-lighthouse")
    p.add_argument("--out", help="output directory: the final checkpoint, metrics.jsonl, loss.png, checkpoints/")
    p.add_argument("--max-steps", type=int, help="optimizer steps in total (Lighthouse stage + dense tail)")
    p.add_argument("--model", help="model preset (tiny | default | h200); default: the training preset's")
    lh = p.add_argument_group(
        "Lighthouse block",
        "Default: the model preset's. With --init-from: the checkpoint's own block if it has one, else --pooling-factor "
        "4, --topk seq_len/64 rounded down to a multiple of 128 (at least 128), --levels 3 (2 when --seq-len < "
        "pooling_factor^2 * topk), --full-attn-layers the first and the last layer (none for 1-2 layers), "
        "--min-seq-len pooling_factor^(levels-1) * topk, --scorer norm.")
    lh.add_argument("--levels", type=int, help="pyramid levels")
    lh.add_argument("--pooling-factor", type=int, help="pooling factor between levels (a power of two)")
    lh.add_argument("--topk", type=int, help="selection budget per level (a multiple of 128)")
    lh.add_argument("--scorer", choices=["norm", "dilated"], help="selection scorer")
    lh.add_argument("--full-attn-layers", type=_layer_list, metavar="I,J,...",
                    help="layers that always run dense attention ('none': no layer)")
    lh.add_argument("--min-seq-len", type=int, help="sequences shorter than this run dense (serving too)")
    lh.add_argument("--lighthouse-rope", choices=["before_pool", "after_select"],
                    help="where the Lighthouse layers apply RoPE: before pooling (the published code) or to the "
                         "selected entries after selection (the official authors' open change)")
    lora = p.add_argument_group(
        "LoRA", "With --init-from: train low-rank adapters (and the norms) instead of every weight; the checkpoints and "
        "the output are adapter folders, merged over the base with `lighthouse adapter merge`.")
    lora.add_argument("--lora-rank", type=int, help="adapter rank (default 0: every weight trains)")
    lora.add_argument("--lora-alpha", type=float, help="adapter scale numerator (default: 2 x rank)")
    lora.add_argument("--lora-targets", nargs="+", metavar="NAME",
                      help="linear layers to adapt (default: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)")
    lora.add_argument("--init-adapter", metavar="DIR",
                      help="start the adapter from this adapter folder (the previous stage of a length curriculum)")
    lora.add_argument("--no-lora-norms", action="store_true", default=None, help="keep the norms frozen too")
    p.add_argument("--max-position-embeddings", type=int,
                   help="positions the model declares (default: the preset's, at least --seq-len); e.g. 524288 for a "
                        "model that serves 512K-token documents. With --init-from, more than the checkpoint has "
                        "extends its context: llama3 RoPE scaling by new/old positions (unless --rope-theta is given)")
    p.add_argument("--rope-theta", type=float,
                   help="RoPE base of the new model (default: the preset's); with --init-from, a new base for the "
                        "checkpoint (context extension by base frequency instead of scaling)")
    p.add_argument("--data", nargs="+", metavar="PATH", help="text files, folders, *.jsonl, or 'stdlib' (Python's own source)")
    p.add_argument("--tasks", nargs="+", choices=["passkey", "kv", "multihop"],
                   help="synthetic tasks, drawn uniformly (repeat one to weight it)")
    p.add_argument("--fillers", nargs="+", choices=list(ALL_FILLERS), help="synthetic haystack kinds")
    p.add_argument("--synthetic-fraction", type=float, help="share of sequences from the synthetic task generator")
    p.add_argument("--answer-loss-weight", type=float, help="loss weight of synthetic answer tokens (others: 1)")
    p.add_argument("--chat-fraction", type=float,
                   help="share of synthetic documents asked as chat turns, as the SDK's documents.ask sends them")
    p.add_argument("--longdoc", metavar="DIR",
                   help="train on long documents of real text: a corpus folder prepared by `python -m "
                        "lighthouse.train.text_sources --out DIR` (questions about it in the chat template; replaces "
                        "--data and the synthetic tasks)")
    p.add_argument("--longdoc-tasks", nargs="+", choices=list(TrainConfig.longdoc_tasks),
                   help="long-document tasks, drawn uniformly (repeat one to weight it)")
    p.add_argument("--longdoc-lm-fraction", type=float,
                   help="share of --longdoc sequences that are plain text windows with no question")
    cur = p.add_mutually_exclusive_group()
    cur.add_argument("--curriculum", action="store_true", default=None,
                     help="start with many short synthetic documents per sequence, growing to --seq-len")
    cur.add_argument("--no-curriculum", action="store_true", default=None, help="turn off the preset's curriculum")
    p.add_argument("--curriculum-start-len", type=int, help="longest synthetic document at step 0 (bytes)")
    p.add_argument("--curriculum-fraction", type=float, help="share of --max-steps over which documents grow to --seq-len")
    p.add_argument("--seq-len", type=int, help="tokens per training sequence")
    p.add_argument("--batch-size", type=int, help="sequences per optimizer step, over all ranks")
    p.add_argument("--micro-batch-size", type=int, help="sequences per forward pass (gradient accumulation makes up the rest)")
    p.add_argument("--lr", type=float, help="peak learning rate (AdamW)")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--decay", choices=["cosine", "linear", "constant"], help="LR decay after warmup")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip", type=float, help="max global gradient norm (0: off)")
    tail = p.add_mutually_exclusive_group()
    tail.add_argument("--dense-tail-steps", type=int, help="final steps trained with every layer dense")
    tail.add_argument("--dense-tail-fraction", type=float, help="... or as a fraction of --max-steps")
    p.add_argument("--time-budget-s", type=float, help="trim --max-steps so the run fits this many seconds (0: no budget)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--save-dtype", choices=["fp32", "bf16"], help="dtype of the final model.safetensors")
    p.add_argument("--data-workers", type=int, help="processes that build batches ahead (default: 0 on CPU, up to 3 on GPU)")
    par = p.add_mutually_exclusive_group()
    par.add_argument("--parallel", choices=["ddp", "fsdp"],
                     help="with several processes (torchrun): ddp replicates the model on every rank (default); fsdp "
                          "shards parameters, gradients and AdamW state (FSDP2, one unit per layer; bf16 compute on "
                          "GPU; sharded DCP checkpoints under OUT/checkpoints, the final model exported as usual)")
    par.add_argument("--fsdp", action="store_true", default=None, help="the same as --parallel fsdp")
    p.add_argument("--activation-checkpointing", action="store_true", default=None,
                   help="recompute each layer's activations in the backward pass (less memory, ~1/3 more compute)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--eval-samples", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--save-every", type=int, help="save a resumable checkpoint every N steps (0: only at the end)")
    p.add_argument("--keep-last", type=int, help="resumable checkpoints to keep")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT has checkpoints")
    p.add_argument("--stop-at-step", type=int, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    """TrainConfig from parsed flags; ConfigError for flags that conflict (the message says what to change)."""
    init_from = getattr(args, "init_from", None)
    if init_from:
        if args.preset is not None:
            raise ConfigError(
                f"--preset {args.preset} conflicts with --init-from: a preset trains a model of its own size from "
                "scratch. Drop --preset; --init-from has its own defaults (see --help), which the usual flags "
                "(--seq-len, --max-steps, --lr, ...) override"
            )
        if args.model is not None:
            raise ConfigError(
                f"--model {args.model} conflicts with --init-from: the model (its sizes, vocabulary and RoPE) comes "
                f"from {init_from}. Drop --model; set the Lighthouse block with --levels, --pooling-factor, --topk "
                "and --full-attn-layers"
            )
        if args.data is None and not getattr(args, "longdoc", None):
            raise ConfigError(
                "--init-from trains on your documents: pass --data with text files, folders or *.jsonl "
                "(or --data none to train on the synthetic retrieval tasks only)"
            )
        cfg = adapt_preset(init_from)
    else:
        preset = args.preset or "tiny"
        cfg = train_preset(preset)
        cfg.out_dir = f"runs/{preset}"
    for flag, field in _OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is not None:
            setattr(cfg, field, value)
    if args.dense_tail_fraction is not None:
        cfg.dense_tail_steps = None
    if args.data is not None:
        cfg.data = [] if args.data == ["none"] else list(args.data)
    if args.tasks:
        cfg.tasks = tuple(args.tasks)
    if args.fillers:
        cfg.fillers = tuple(args.fillers)
    if getattr(args, "longdoc_tasks", None):
        cfg.longdoc_tasks = tuple(args.longdoc_tasks)
    if args.curriculum:
        cfg.curriculum = True
    if args.no_curriculum:
        cfg.curriculum = False
    if getattr(args, "fsdp", None):
        cfg.parallel = "fsdp"
    if args.activation_checkpointing:
        cfg.activation_checkpointing = True
    if args.compile:
        cfg.compile = True
    if args.no_resume:
        cfg.resume = False
    if getattr(args, "lora_targets", None):
        cfg.lora_targets = tuple(args.lora_targets)
    if getattr(args, "no_lora_norms", None):
        cfg.lora_train_norms = False
    if args.no_progress:
        cfg.progress = False
    return cfg


def run(args: argparse.Namespace) -> int:
    from lighthouse.adapter import AdapterError
    from lighthouse.checkpoint import CheckpointError
    from lighthouse.train.evaluation import describe_answer_accuracy
    from lighthouse.train.trainer import Trainer

    try:
        cfg = config_from_args(args)
        trainer = Trainer(cfg)
    except (ConfigError, CheckpointError, AdapterError) as exc:
        print(f"lighthouse train: error: {exc}", file=sys.stderr)
        return 2
    summary = trainer.train()
    if summary.get("stopped_early"):
        print(f"stopped at step {summary['step']} (--stop-at-step); resume with the same command")
        return 0
    ev = summary["eval"]
    last = "n/a (resumed a finished run)" if summary["last"] is None else f"{summary['last']['loss']:.4f}"
    print(f"done: {summary['step']} steps in {summary['time_s']:.0f}s, final train loss {last}, "
          f"eval loss {ev['eval_loss']:.4f}; checkpoint in {cfg.out_dir}")
    print(describe_answer_accuracy(ev, cfg))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lighthouse.train", description="Train a Lighthouse checkpoint.")
    add_arguments(p)
    return run(p.parse_args(argv))
