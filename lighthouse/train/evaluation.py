"""Held-out evaluation of a training run: loss per token and answer accuracy on synthetic questions.

`eval_pass` runs the eval samples once, with the model's Lighthouse layers (dense=False) or every layer dense; the
trainer calls it in the current phase's mode and, in the Lighthouse stage, dense as well (Trainer.evaluate).
"""

from __future__ import annotations

import torch

from lighthouse.model.llama import IGNORE_INDEX


def eval_pass(model, eval_data, cfg, device, autocast, *, dense: bool) -> dict:
    """-> {"loss": nats per token, "acc": exact answers / answers (None without answers), "token_acc": answer
    tokens predicted right / answer tokens, "answers": n}; greedy per position (teacher-forced)."""
    loss_sum, n_tok, correct, n_ans, tok_hits, tok_n = 0.0, 0, 0, 0, 0, 0
    for s in range(0, cfg.eval_samples, cfg.micro_batch_size):
        b = eval_data.batch(list(range(s, min(s + cfg.micro_batch_size, cfg.eval_samples))))
        ids, labels = b["input_ids"].to(device), b["labels"].to(device)
        with autocast():
            logits = model(ids, dense=dense, logits_to_keep=ids.shape[1]).logits
        logits = logits[:, :-1].float()
        target = labels[:, 1:]
        loss_sum += torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX,
                                                      reduction="sum").item()
        n_tok += int((target != IGNORE_INDEX).sum())
        amask = b["answer_mask"][:, 1:].to(device)
        pred = logits.argmax(-1)
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
