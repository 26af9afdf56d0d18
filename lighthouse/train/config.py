"""Training configuration and named presets.

tiny     CPU, about a minute: the 2-layer model on 1K-token synthetic sequences (tests use it).
default  the recipe for the bundled checkpoint (recipes/train_default.sh): the `default` model at 16K context on
         one H200, ~9 minutes (a 455 s time budget sets the step count), Lighthouse stage for 40% of the steps, then
         the dense tail. Passkey-heavy tasks over `echo`, `copy`, `repeat` and `sentences` filler, with a curriculum
         of short documents over the first 80% of steps and a constant LR as in the paper: the checkpoint it made
         retrieves 5-digit passkeys at 2K-16K (bench/results/2026-11-28_h200_default_recipe/).
h200     a longer single-H200 run of the larger `h200` model at 32K context.

`adapt_preset()` holds the defaults of `lighthouse train --init-from HF_DIR` (adapting an existing HF Llama: a
fine-tuning learning rate, the user's documents only); it is not in TRAIN_PRESETS because its model comes from
the checkpoint, not from a model preset.

The schedule follows the paper: stage 1 trains with Lighthouse layers, stage 2 (the dense tail) continues the
same optimizer state and LR schedule with every layer dense.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A training configuration that cannot run; the message says which flag to change."""


@dataclass
class TrainConfig:
    model_preset: str | None = "tiny"  # None with init_from: the model comes from the checkpoint
    out_dir: str = "runs/tiny"
    seed: int = 0
    # adapt an existing HF Llama checkpoint directory instead of training the model preset from scratch
    init_from: str | None = None
    # overrides of the model's `lighthouse` block (None: the model preset's; with init_from, the checkpoint's own
    # block if it has one, else the defaults of lighthouse.train.init_from.default_lighthouse)
    lighthouse_levels: int | None = None
    lighthouse_pooling_factor: int | None = None
    lighthouse_topk: int | None = None
    lighthouse_scorer: str | None = None
    lighthouse_full_attn_layers: list[int] | None = None
    lighthouse_min_seq_len: int | None = None
    lighthouse_rope: str | None = None  # before_pool | after_select (where the Lighthouse layers apply RoPE)
    # the model's positions and RoPE base (None: the preset's; positions are at least seq_len either way): a model
    # meant to serve 512K-token documents declares >= 524288 positions, with a RoPE base chosen for that length;
    # with init_from they extend the checkpoint's context (lighthouse.train.init_from.extend_rope)
    max_position_embeddings: int | None = None
    rope_theta: float | None = None
    # data
    seq_len: int = 1024
    data: list[str] = field(default_factory=list)  # files, folders, *.jsonl, or "stdlib"
    synthetic_fraction: float = 1.0  # share of sequences made by the synthetic generator (1.0 when no data)
    tasks: tuple[str, ...] = ("passkey", "kv", "multihop")  # drawn uniformly; repeat a task to weight it
    fillers: tuple[str, ...] = ("repeat", "sentences", "alnum", "copy")  # haystack kinds (see train.synthetic)
    full_doc_fraction: float = 0.5  # synthetic sequences that are one document filling the whole sequence
    answer_loss_weight: float = 1.0  # loss weight of synthetic answer tokens (the rest weigh 1)
    chat_fraction: float = 0.0  # synthetic documents asked as chat turns (the SDK's documents.ask layout)
    # long documents of real text (lighthouse.train.longdoc): a corpus folder that `python -m
    # lighthouse.train.text_sources --out DIR` prepared; when set, every sequence is a question about a long document
    # in the tokenizer's chat template (tasks below) or, a longdoc_lm_fraction share, a plain window of the text
    longdoc: str | None = None
    longdoc_tasks: tuple[str, ...] = ("fact", "facts", "multivalue", "multikey", "chain")  # repeat one to weight it
    longdoc_lm_fraction: float = 0.1
    # curriculum: early steps pack many short synthetic documents (at most curriculum_start_len bytes) into each
    # sequence; the longest allowed document grows geometrically to seq_len over curriculum_fraction of max_steps
    curriculum: bool = False
    curriculum_start_len: int = 512
    curriculum_fraction: float = 0.5
    # batch: `batch_size` sequences per optimizer step in total, over all ranks and accumulation micro-steps
    batch_size: int = 8
    micro_batch_size: int = 4
    # optimizer / schedule
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    decay: str = "cosine"  # cosine | linear | constant (the paper: constant after warmup)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    max_steps: int = 60
    dense_tail_steps: int | None = None  # the dense adaptation tail, in steps ...
    dense_tail_fraction: float = 0.25  # ... or as a fraction of max_steps (used when dense_tail_steps is None)
    time_budget_s: float | None = None  # trim max_steps so the run fits (measured after a few steps)
    # LoRA (with init_from): train rank-r adapters on the linear layers (+ the norms) instead of every weight; the
    # checkpoints and the output are adapter folders (lighthouse.adapter: small, merged over the base at serving)
    lora_rank: int = 0  # 0: every weight trains
    lora_alpha: float | None = None  # None: 2 x lora_rank
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_train_norms: bool = True
    init_adapter: str | None = None  # start the LoRA layers (and norms) from this adapter folder (a previous stage)
    # execution
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    data_workers: int | None = None  # processes building batches ahead (None: 0 on CPU, up to 3 on GPU)
    # ddp: every rank holds the whole model; fsdp: FSDP2 shards parameters, gradients and optimizer state (one unit
    # per decoder layer + the root; bf16 compute through its mixed-precision policy; DCP training checkpoints)
    parallel: str = "ddp"
    activation_checkpointing: bool = False
    compile: bool = False
    # evaluation, logging, checkpoints
    eval_every: int = 20
    eval_samples: int = 8
    log_every: int = 1
    save_every: int = 0  # 0: only the final checkpoint
    keep_last: int = 2
    resume: bool = True  # continue from the latest checkpoint in out_dir/checkpoints when there is one
    stop_at_step: int | None = None  # stop early without changing the schedule (to test resume)
    save_dtype: str | None = "fp32"  # None (init_from only): the dtype the source checkpoint was stored in
    progress: bool = True

    def tail_steps(self, max_steps: int | None = None) -> int:
        n = self.max_steps if max_steps is None else max_steps
        if self.dense_tail_steps is not None:
            return max(0, min(n, self.dense_tail_steps))
        return int(round(n * self.dense_tail_fraction))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, world_size: int = 1) -> None:
        if self.batch_size % (self.micro_batch_size * world_size):
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size}) "
                f"x world size ({world_size})"
            )
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"parallel must be ddp or fsdp (got {self.parallel!r})")
        if self.decay not in ("cosine", "linear", "constant"):
            raise ConfigError(f"decay must be cosine, linear or constant (got {self.decay!r})")
        if not 0.0 <= self.dense_tail_fraction <= 1.0:
            raise ConfigError(f"dense_tail_fraction must be in [0, 1] (got {self.dense_tail_fraction})")
        if not 0.0 <= self.chat_fraction <= 1.0:
            raise ConfigError(f"chat_fraction must be in [0, 1] (got {self.chat_fraction})")
        self._validate_longdoc()
        if not 0.0 <= self.curriculum_fraction <= 1.0:
            raise ConfigError(f"curriculum_fraction must be in [0, 1] (got {self.curriculum_fraction})")
        if self.save_dtype not in ("fp32", "bf16") and not (self.save_dtype is None and self.init_from):
            raise ConfigError(f"save_dtype must be fp32 or bf16 (got {self.save_dtype!r})")
        if self.seq_len < 512:
            raise ConfigError(f"seq_len must be at least 512 (got {self.seq_len})")
        if self.max_position_embeddings is not None and self.max_position_embeddings < self.seq_len:
            raise ConfigError(f"max_position_embeddings ({self.max_position_embeddings}) must be >= seq_len "
                              f"({self.seq_len}): raise it or drop it")
        if self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be >= 0 (got {self.lora_rank}); 0 trains every weight")
        if self.lora_rank and not self.init_from:
            raise ConfigError("--lora-rank adapts an existing checkpoint: pass --init-from DIR as well, or drop it")
        if self.init_adapter and not self.lora_rank:
            raise ConfigError("--init-adapter continues training an adapter: pass --lora-rank (its rank) as well")
        if self.lora_rank and self.parallel == "fsdp":
            raise ConfigError("--lora-rank trains with --parallel ddp (the adapter is small); drop --parallel fsdp")
        if self.rope_theta is not None and not self.rope_theta > 0:
            raise ConfigError(f"rope_theta must be > 0 (got {self.rope_theta})")

    def _validate_longdoc(self) -> None:
        if self.longdoc is None:
            return
        from lighthouse.train.longdoc import LONGDOC_TASKS, MIN_SEQ_LEN

        if not Path(self.longdoc).is_dir():
            raise ConfigError(f"longdoc corpus {self.longdoc!r} is not a folder: prepare it with `python -m "
                              f"lighthouse.train.text_sources --out {self.longdoc}` or fix --longdoc")
        unknown = [t for t in self.longdoc_tasks if t not in LONGDOC_TASKS]
        if unknown or not self.longdoc_tasks:
            raise ConfigError(f"--longdoc-tasks {' '.join(self.longdoc_tasks) or '(none)'}: choose from "
                              f"{' '.join(LONGDOC_TASKS)}")
        if not 0.0 <= self.longdoc_lm_fraction <= 1.0:
            raise ConfigError(f"longdoc_lm_fraction must be in [0, 1] (got {self.longdoc_lm_fraction})")
        if self.seq_len < MIN_SEQ_LEN:
            raise ConfigError(f"--longdoc needs --seq-len >= {MIN_SEQ_LEN} (got {self.seq_len})")
        if self.data:
            raise ConfigError(f"--longdoc replaces --data ({' '.join(self.data)}): pass --data none, or drop --longdoc")
        if self.curriculum:
            raise ConfigError("--longdoc sequences have no in-sequence curriculum: pass --no-curriculum and grow "
                              "--seq-len over stages instead")


TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(
        model_preset="tiny", seq_len=1024, batch_size=8, micro_batch_size=4, lr=3e-3, warmup_steps=10,
        max_steps=120, dense_tail_fraction=0.25, eval_every=40, eval_samples=8,
    ),
    "default": TrainConfig(
        model_preset="default", seq_len=16384, batch_size=8, micro_batch_size=8, lr=2e-3, decay="constant",
        warmup_steps=100, max_steps=8000, dense_tail_fraction=0.6, time_budget_s=455.0, eval_every=250,
        eval_samples=16, log_every=5, save_every=500, keep_last=2, synthetic_fraction=0.95, data=["stdlib"],
        full_doc_fraction=0.5, seed=1234, tasks=("passkey", "passkey", "passkey", "kv"),
        fillers=("echo", "copy", "repeat", "sentences"), answer_loss_weight=10.0, curriculum=True,
        curriculum_fraction=0.8, save_dtype="bf16",
    ),
    "h200": TrainConfig(
        model_preset="h200", seq_len=32768, batch_size=32, micro_batch_size=4, lr=1.5e-3, min_lr_ratio=0.1,
        warmup_steps=200, max_steps=6000, dense_tail_fraction=0.3, eval_every=250, eval_samples=16, log_every=10,
        save_every=500, keep_last=3, synthetic_fraction=0.8, data=["stdlib"], activation_checkpointing=True,
        seed=1234, fillers=("copy", "copy", "repeat", "sentences", "alnum"), answer_loss_weight=10.0,
    ),
}


def train_preset(name: str) -> TrainConfig:
    if name not in TRAIN_PRESETS:
        raise ConfigError(f"unknown training preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}")
    return copy.deepcopy(TRAIN_PRESETS[name])


def adapt_preset(init_from: str) -> TrainConfig:
    """The defaults of `lighthouse train --init-from HF_DIR`: a pretrained model is fine-tuned, not trained anew,
    so the learning rate is a fine-tuning one (1e-4, cosine to 1e-5, no weight decay), on the user's documents
    only (synthetic_fraction 0; `--data none` trains on synthetic retrieval tasks instead), 8K-token sequences,
    500 steps of which the last 30% are the dense tail, saved in the source checkpoint's dtype."""
    return TrainConfig(
        model_preset=None, init_from=init_from, out_dir=f"runs/{_dir_name(init_from)}-lighthouse", seq_len=8192,
        batch_size=8, micro_batch_size=1, lr=1e-4, min_lr_ratio=0.1, warmup_steps=20, decay="cosine",
        weight_decay=0.0, max_steps=500, dense_tail_fraction=0.3, eval_every=100, eval_samples=8, save_every=100,
        keep_last=2, synthetic_fraction=0.0, data=[], save_dtype=None,
    )


def _dir_name(path: str) -> str:
    return Path(path).resolve().name or "init"
