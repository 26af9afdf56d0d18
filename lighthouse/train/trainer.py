"""The offline trainer: a Lighthouse stage, then a dense tail on the same optimizer state (the paper's recipe).

One process, or several under torchrun (NCCL on GPU, gloo on CPU), with DDP (`parallel="ddp"`, the default:
every rank holds the whole model) or FSDP2 (`parallel="fsdp"`: parameters, gradients and optimizer state sharded
over the ranks, sharded DCP checkpoints; lighthouse.train.fsdp). A step takes `batch_size` sequences in total:
each rank takes its share of the step's samples and accumulates over micro-batches; the loss is the mean over
every target token of the global batch, so 1 and W processes compute the same gradient.

    trainer = Trainer(train_preset("tiny"))
    summary = trainer.train()   # writes out_dir/{config.json, model.safetensors, ..., metrics.jsonl, loss.png}

With `cfg.init_from` (an HF Llama checkpoint directory) the model and tokenizer are that checkpoint's
(lighthouse.train.init_from) instead of a model preset with random weights and the byte tokenizer: the data is
tokenized with its tokenizer, and every checkpoint written carries that tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from lighthouse.adapter import save_adapter
from lighthouse.checkpoint import save_checkpoint
from lighthouse.model.llama import IGNORE_INDEX, LlamaForCausalLM
from lighthouse.model.lora import has_lora
from lighthouse.model.presets import model_preset
from lighthouse.train import fsdp
from lighthouse.train.config import ConfigError, TrainConfig
from lighthouse.train.data import build_streams, curriculum_samples, default_num_workers, step_loader
from lighthouse.train.init_from import (describe, extend_rope, lighthouse_overrides, load_init_model,
                                        resolve_lighthouse, source_save_dtype)
from lighthouse.train.evaluation import eval_pass
from lighthouse.train.lora_setup import load_adapter_weights, setup_lora, trained_extras
from lighthouse.train.loss import token_losses
from lighthouse.train.metrics import MetricsLog, plot_loss
from lighthouse.train.runtime import autocast, init_distributed, pick_device, sync, use_bf16
from lighthouse.train.state import (checkpoints_dir, clean_partial, latest_checkpoint, load_training_state,
                                    save_training_state)

CALIBRATE_AFTER = 6  # steps timed (in this process) before a time budget sets max_steps; the first two are warm-up


class Trainer:
    def __init__(self, cfg: TrainConfig, model_config=None):
        self.cfg = cfg
        self.rank, self.world = init_distributed(cfg)
        cfg.validate(self.world)
        self.device = pick_device(cfg, self.rank)
        self.sharded = cfg.parallel == "fsdp"  # FSDP2 (lighthouse.train.fsdp)
        self.is_main = self.rank == 0
        self.out = Path(cfg.out_dir)
        torch.manual_seed(cfg.seed)
        self.tokenizer, self.source_generation_config = None, None
        if cfg.init_from:
            model, self.tokenizer, source_config = load_init_model(cfg)
            if cfg.save_dtype is None:
                cfg.save_dtype = source_save_dtype(source_config)
            self.source_generation_config = _read_generation_config(Path(cfg.init_from))
            extended = extend_rope(model, cfg)
            self._log(f"adapting {cfg.init_from}: {describe(model.config)}")
            if extended:
                self._log(extended)
                # the saved tokenizer_config.json states the new length too (transformers warns past it)
                self.tokenizer.model_max_length = max(self.tokenizer.model_max_length, model.config.max_position_embeddings)
            if cfg.lora_rank:
                self._log(setup_lora(model, cfg))
                if cfg.init_adapter:
                    load_adapter_weights(model, cfg.init_adapter)
                    self._log(f"LoRA layers and norms start from {cfg.init_adapter}")
        else:
            mc = model_config or model_preset(cfg.model_preset)
            if cfg.max_position_embeddings is not None:
                mc.max_position_embeddings = cfg.max_position_embeddings
            if cfg.rope_theta is not None:
                mc.rope_theta = cfg.rope_theta
            if lighthouse_overrides(cfg):  # --levels, --topk, ... over the preset's block
                mc.lighthouse = resolve_lighthouse(cfg, mc, adapting=False)
            model = LlamaForCausalLM(mc)
        model.config.max_position_embeddings = max(model.config.max_position_embeddings, cfg.seq_len)
        self.model = model.to(self.device)
        self.model.gradient_checkpointing = cfg.activation_checkpointing
        bf16 = use_bf16(cfg, self.device)
        if self.sharded:  # before the optimizer: it must hold the sharded parameters
            fsdp.shard_model(self.model, self.device, bf16=bf16)
        self.optimizer = _adamw(self.model, cfg)
        self.train_data, self.eval_data = build_streams(cfg, self.tokenizer)
        # bf16 by autocast (DDP, one process) or by FSDP's mixed-precision policy: a fresh context per use
        self.autocast = lambda: autocast(self.device, bf16 and not self.sharded)
        self.metrics = MetricsLog(self.out / "metrics.jsonl", enabled=self.is_main)
        self.step, self.tokens_seen = 0, 0
        self.max_steps, self.switch_step = cfg.max_steps, cfg.max_steps - cfg.tail_steps()
        self.schedule_fixed = not cfg.time_budget_s  # None or 0: no budget
        self._maybe_resume()
        self.train_data.curriculum_samples = curriculum_samples(cfg, self.max_steps)  # resumed max_steps too
        self._batches, self._batches_step = None, -1  # step loader and the step it yields next
        if cfg.compile:
            self.model.compile()
        self.ddp = DDP(self.model) if self.world > 1 and not self.sharded else None

    # ------------------------------------------------------------------ setup
    def _maybe_resume(self) -> None:
        if self.is_main:
            for name in clean_partial(self.out):  # a save or prune that a kill interrupted
                self._log(f"removed {name}, left by an interrupted checkpoint save")
        self._barrier()
        ckpt = latest_checkpoint(self.out) if self.cfg.resume else None
        if ckpt is None:
            if self.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                self.metrics.path.unlink(missing_ok=True)
                stale = checkpoints_dir(self.out)
                if stale.exists():  # starting over: old step dirs would outrank (and prune) the new ones
                    shutil.rmtree(stale)
                    self._log(f"starting over: removed the previous run's {stale}")
                (self.out / "train_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
            return
        if fsdp.is_dcp_checkpoint(ckpt):  # sharded: loads into any number of ranks, sharded or not
            state = fsdp.load_dcp_state(self.model, self.optimizer, ckpt)
        elif self.sharded:
            raise ConfigError(f"{ckpt} was written by the DDP path (safetensors); resume it without --parallel fsdp, "
                              "or start over with --no-resume")
        else:
            state = load_training_state(self.model, self.optimizer, ckpt)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.max_steps, self.switch_step = state["max_steps"], state["switch_step"]
        self.schedule_fixed = state.get("schedule_fixed", True)
        self.metrics.truncate_after(self.step)
        self._log(f"resumed from {ckpt} at step {self.step}")

    def phase(self, step: int) -> str:
        return "lighthouse" if step < self.switch_step else "dense"

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.decay == "constant":
            return cfg.lr
        t = min(1.0, (step - cfg.warmup_steps) / max(1, self.max_steps - cfg.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * t)) if cfg.decay == "cosine" else 1 - t
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)

    # ------------------------------------------------------------------ loop
    def train(self) -> dict:
        cfg = self.cfg
        bar = _progress(cfg.progress and self.is_main, self.step, self.max_steps)
        t_start, last = time.perf_counter(), None
        step_times: list[float] = []
        stop = cfg.stop_at_step if cfg.stop_at_step is not None else self.max_steps
        while self.step < min(self.max_steps, stop):
            step, phase = self.step, self.phase(self.step)
            if step == self.switch_step and step > 0:
                self.metrics.write({"type": "phase", "step": step, "phase": "dense"})
                self._log(f"step {step}: Lighthouse stage done, dense tail starts")
            t0 = time.perf_counter()
            loss, grad_norm, tokens = self._train_step(step, phase)
            dt = time.perf_counter() - t0
            step_times.append(dt)
            self.step += 1
            self.tokens_seen += tokens
            record = {"type": "train", "step": self.step, "phase": phase, "loss": loss, "lr": self.lr_at(step),
                      "grad_norm": grad_norm, "tokens": self.tokens_seen, "tokens_per_s": tokens / dt,
                      "time_s": time.perf_counter() - t_start}
            if self.step % cfg.log_every == 0 or self.step == self.max_steps:
                self.metrics.write(record)
            last = record
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}", phase=phase, tok_s=f"{tokens / dt:,.0f}")
            if not self.schedule_fixed and len(step_times) == CALIBRATE_AFTER:  # timed in this process
                self._fit_time_budget(step_times[2:], time.perf_counter() - t_start)
                bar.total = self.max_steps
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.max_steps:
                self.evaluate()
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.max_steps:
                self.save_state()
        bar.close()
        if self.step < self.max_steps:  # stopped early on purpose (stop_at_step)
            return {"step": self.step, "stopped_early": True, "last": last}
        summary = {"step": self.step, "last": last, "eval": self.evaluate(), "time_s": time.perf_counter() - t_start}
        self.finish()
        return summary

    def _train_step(self, step: int, phase: str) -> tuple[float, float, int]:
        cfg, model = self.cfg, self.ddp or self.model
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        batches = self._step_batches(step)
        weights = [_token_weights(b, cfg.answer_loss_weight) for b in batches]  # (B, N-1), 0 on padding
        counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]
        total = self._all_reduce(torch.tensor(float(sum(counts)))).item()
        w_total = self._all_reduce(torch.tensor(float(sum(w.sum() for w in weights)))).item()
        loss_sum = torch.zeros((), device=self.device)
        self.model.train()
        for i, (b, w) in enumerate(zip(batches, weights)):
            sync = i == len(batches) - 1
            ctx = model.nosync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
            ids, labels = b["input_ids"].to(self.device), b["labels"].to(self.device)
            with ctx, self.autocast():
                ce = token_losses(model, ids, labels, dense=phase == "dense")  # (B, N-1), chunked over positions
                # the global weighted mean; DDP averages gradients over ranks, hence * world
                loss = (ce * w.to(self.device)).sum() * (self.world / w_total)
            loss.backward()
            loss_sum += ce.detach().sum()
        # max_norm inf: the norm without clipping (over sharded gradients too)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean_loss = self._all_reduce(loss_sum).item() / total
        return mean_loss, fsdp.full_value(grad_norm), int(total)

    def _step_batches(self, step: int) -> list[dict]:
        """This rank's micro-batches for `step`, from a loader that builds the following steps ahead."""
        if self._batches is None or self._batches_step != step:
            cfg = self.cfg
            workers = cfg.data_workers if cfg.data_workers is not None else default_num_workers(self.device.type)
            self._batches = step_loader(self.train_data, step, self.max_steps - step, cfg.batch_size,
                                        cfg.micro_batch_size, self.rank, self.world, workers)
            self._batches_step = step
        self._batches_step += 1
        return next(self._batches)

    # ------------------------------------------------------------------ time budget
    def _fit_time_budget(self, lh_step_times: list[float], elapsed: float) -> None:
        """Pick max_steps so the whole run fits cfg.time_budget_s (decided once, then fixed and saved)."""
        cfg = self.cfg
        t_lh = sorted(lh_step_times)[len(lh_step_times) // 2]
        t_dense = self._time_dense_step()
        frac = cfg.tail_steps() / max(1, cfg.max_steps)
        per_step = (1 - frac) * t_lh + frac * t_dense
        # an eval costs ~2 dense steps; evals come every eval_every of the steps that fit (not of the cap
        # cfg.max_steps, which at long sequences reserved the whole budget for evals that never ran), plus one at the end
        t_eval = 2 * t_dense
        per_step += t_eval / cfg.eval_every if cfg.eval_every else 0.0
        avail = cfg.time_budget_s - elapsed - 0.1 * cfg.time_budget_s - t_eval  # 10%: saves, final write
        fit = self.step + int(max(0.0, avail) / per_step)
        fit = self._all_reduce(torch.tensor(float(fit)), op=dist.ReduceOp.MIN).item() if self.world > 1 else fit
        self.max_steps = max(self.step + 1, min(cfg.max_steps, int(fit)))
        tail = cfg.dense_tail_steps if cfg.dense_tail_steps is not None else int(round(self.max_steps * cfg.dense_tail_fraction))
        self.switch_step = max(self.step, self.max_steps - tail)
        self.schedule_fixed = True
        self.train_data.curriculum_samples = curriculum_samples(cfg, self.max_steps)
        self._batches = None  # the loader's workers hold the old schedule: start a new one at the next step
        self.metrics.write({"type": "schedule", "max_steps": self.max_steps, "switch_step": self.switch_step,
                            "lighthouse_step_s": t_lh, "dense_step_s": t_dense, "time_budget_s": cfg.time_budget_s})
        self._log(f"time budget {cfg.time_budget_s:.0f}s: lighthouse step {t_lh:.3f}s, dense step ~{t_dense:.3f}s "
                  f"-> max_steps {self.max_steps}, dense tail from step {self.switch_step}")

    def _time_dense_step(self) -> float:
        """Time one dense forward+backward of a step's worth of micro-batches (gradients discarded)."""
        cfg = self.cfg
        b = self.train_data.batch(list(range(cfg.micro_batch_size)))
        n_micro = cfg.batch_size // (self.world * cfg.micro_batch_size)
        self.model.train()
        sync(self.device)
        t0 = time.perf_counter()
        with self.autocast():
            ce = token_losses(self.model, b["input_ids"].to(self.device), b["labels"].to(self.device), dense=True)
        ce.mean().backward()
        sync(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) * n_micro * 1.05  # + optimizer step

    # ------------------------------------------------------------------ eval / save
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out loss and answer accuracy on synthetic questions, in the current phase's attention mode; in the
        Lighthouse stage also with every layer dense (`dense_eval_loss`, `dense_answer_acc`): the phase's own numbers
        run the question through Lighthouse too, which serving never does (its dense tail), and understate what the
        model retrieves (the bundled checkpoint's stage 2 read 0.01-0.04 in its Lighthouse stage, 0.38-0.41 in its
        dense tail)."""
        phase = self.phase(min(self.step, self.max_steps - 1))
        self.model.eval()
        ev = eval_pass(self.model, self.eval_data, self.cfg, self.device, self.autocast, dense=phase == "dense")
        rec = {"type": "eval", "step": self.step, "phase": phase, "eval_loss": ev["loss"], "answer_acc": ev["acc"],
               "answer_token_acc": ev["token_acc"], "answers": ev["answers"]}
        dense = ""
        if phase != "dense":
            d = eval_pass(self.model, self.eval_data, self.cfg, self.device, self.autocast, dense=True)
            rec.update(dense_eval_loss=d["loss"], dense_answer_acc=d["acc"])
            dense = f"; all layers dense: loss {d['loss']:.4f}, answer accuracy {_fmt(d['acc'])}"
        self.model.train()
        self.metrics.write(rec)
        self._log(f"step {self.step} ({phase}): eval loss {rec['eval_loss']:.4f}, answer accuracy "
                  f"{_fmt(rec['answer_acc'])} ({ev['answers']} answers; per digit {_fmt(rec['answer_token_acc'])}){dense}")
        return rec

    def save_state(self) -> None:
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "max_steps": self.max_steps,
                 "switch_step": self.switch_step, "schedule_fixed": self.schedule_fixed, "phase": self.phase(self.step)}
        if self.sharded:  # every rank writes its shards
            fsdp.save_dcp_state(self.model, self.optimizer, state, self.out, self.cfg.keep_last)
        elif self.is_main:
            save_training_state(self.model, self.optimizer, state, self.out, self.cfg.keep_last, self.tokenizer,
                                base_dir=self.cfg.init_from)
        self._barrier()

    def finish(self) -> None:
        """The final checkpoint (out_dir itself is a checkpoint directory), the state to resume, the PNG."""
        self.save_state()
        model = fsdp.gather_full_model(self.model) if self.sharded else self.model  # collective; None off rank 0
        if self.is_main and has_lora(model):  # out_dir becomes an adapter folder (merge it over the base to serve)
            save_adapter(model, self.out, base_dir=self.cfg.init_from, base_name=Path(self.cfg.init_from).name,
                         extra_trained=trained_extras(model))
            plot_loss(self.metrics.path, self.out / "loss.png", title=f"lighthouse train --init-from "
                      f"{Path(self.cfg.init_from).name} --lora-rank {self.cfg.lora_rank}")
        elif self.is_main:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[self.cfg.save_dtype]
            save_checkpoint(model, self.tokenizer, self.out, dtype=dtype)
            if self.source_generation_config is not None:  # the source's stop ids and sampling defaults stay
                _write_json(self.out / "generation_config.json", self.source_generation_config)
            title = (f"lighthouse train --init-from {Path(self.cfg.init_from).name}" if self.cfg.init_from
                     else f"lighthouse train --preset {self.cfg.model_preset}")
            plot_loss(self.metrics.path, self.out / "loss.png", title=title)
        self._barrier()
        if (self.world > 1 or self.sharded) and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------ distributed helpers
    def _all_reduce(self, t: torch.Tensor, op=None) -> torch.Tensor:
        if self.world == 1:
            return t
        t = t.to(self.device)
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _log(self, msg: str) -> None:
        if self.is_main:
            from tqdm import tqdm

            tqdm.write(f"[lighthouse train] {msg}")


def _read_generation_config(ckpt: Path) -> dict | None:
    """The checkpoint's generation_config.json when it has a readable one (its stop ids matter to serving)."""
    try:
        data = json.loads((ckpt / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _token_weights(batch: dict, answer_weight: float) -> torch.Tensor:
    """Per-target-token loss weights (B, N-1): 1, or `answer_weight` on synthetic answers; 0 on padding."""
    valid = (batch["labels"][:, 1:] != IGNORE_INDEX).float()
    return valid * (1 + (answer_weight - 1) * batch["answer_mask"][:, 1:].float())


def _adamw(model: LlamaForCausalLM, cfg: TrainConfig) -> torch.optim.AdamW:
    trained = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapter (and norms) only
    decay = [p for p in trained if p.dim() >= 2]
    no_decay = [p for p in trained if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def _progress(enabled: bool, initial: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
