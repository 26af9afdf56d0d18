"""Held-out evaluation of a training run: loss per token and answer accuracy on synthetic questions.

`eval_pass` runs the eval samples once, with the model's Lighthouse layers (dense=False) or every layer dense; the
trainer calls it in the current phase's mode and, in the Lighthouse stage, dense as well (Trainer.evaluate).
"""

from __future__ import annotations

from lighthouse.model.llama import IGNORE_INDEX
from lighthouse.train.loss import loss_and_predictions


def eval_pass(model, eval_data, cfg, device, autocast, *, dense: bool) -> dict:
    """-> {"loss": nats per token, "acc": exact answers / answers (None without answers), "token_acc": answer
    tokens predicted right / answer tokens, "answers": n}; greedy per position (teacher-forced)."""
    loss_sum, n_tok, correct, n_ans, tok_hits, tok_n = 0.0, 0, 0, 0, 0, 0
    for s in range(0, cfg.eval_samples, cfg.micro_batch_size):
        b = eval_data.batch(list(range(s, min(s + cfg.micro_batch_size, cfg.eval_samples))))
        ids, labels = b["input_ids"].to(device), b["labels"].to(device)
        with autocast():
            loss, pred = loss_and_predictions(model, ids, labels, dense=dense)  # chunked: any length
        target = labels[:, 1:]
        loss_sum += loss
        n_tok += int((target != IGNORE_INDEX).sum())
        amask = b["answer_mask"][:, 1:].to(device)
        c, n = answer_accuracy(pred, target, amask)
        correct, n_ans = correct + c, n_ans + n
        tok_hits += int(((pred == target) & amask).sum())
        tok_n += int(amask.sum())
    return {"loss": loss_sum / max(1, n_tok), "acc": correct / n_ans if n_ans else None,
            "token_acc": tok_hits / tok_n if tok_n else None, "answers": n_ans}


def answer_accuracy(pred, target, mask) -> tuple[int, int]:
    """(answers whose every token is predicted right, answers): an answer is a contiguous run of mask."""
    correct = n = 0
    for p_row, t_row, m_row in zip(pred, target, mask):
        idx = m_row.nonzero().flatten().tolist()
        if not idx:
            continue
        runs, start = [], idx[0]
        for a, b in zip(idx, idx[1:] + [None]):
            if b != a + 1:
                runs.append((start, a + 1))
                start = b
        for a, b in runs:
            n += 1
            correct += bool((p_row[a:b] == t_row[a:b]).all())
    return correct, n


# where the tiny model first retrieved pass keys: ~3,000 dense steps of 16 x 512 tokens on one CPU core
_TINY_EVIDENCE = "bench/results/2026-11-28_cpu_tiny_passkey_echo"
_TASK_ANSWERS = {"passkey": "pass keys", "kv": "looked-up values", "multihop": "multi-hop answers"}


def describe_answer_accuracy(rec: dict, cfg) -> str:
    """The closing line's account of an eval record (`Trainer.evaluate`) of a run with TrainConfig `cfg`: what
    answer accuracy counts, and why it reads 0 (or n/a) when it does."""
    acc, n = rec.get("answer_acc"), rec.get("answers") or 0
    if acc is None:
        return ("answer accuracy n/a: the eval data has no synthetic questions (--synthetic-fraction 0); the eval "
                "loss is the run's measure")
    kinds = ", ".join(dict.fromkeys(_TASK_ANSWERS.get(t, t) for t in cfg.tasks))
    line = (f"answer accuracy {acc:.2f}: {round(acc * n)} of {n} answers exactly right ({kinds} in "
            f"{cfg.eval_samples} held-out synthetic sequences; an answer counts when the model, reading the document, "
            f"predicts every one of its tokens; per token {rec.get('answer_token_acc') or 0.0:.2f})")
    if acc == 0:
        line += (f". 0 is expected after {rec.get('step', '?')} steps: retrieval is learned late (the tiny model "
                 f"first retrieved pass keys after ~3,000 steps, {_TINY_EVIDENCE}); until then the eval loss shows "
                 "the progress")
    return line
