"""In-context copying of a checkpoint: the loss on a random block's second occurrence vs its first.

    python -m bench.evals.copy_eval --checkpoint DIR [DIR ...]

Passkey retrieval needs content-based copying (an induction head): find the earlier occurrence of the current
context and continue it. This measures that ability directly, without the passkey format: a model that copies has
a second-occurrence loss near 0; one that does not has equal losses (about log 36 = 3.6 nats per character).
Two layouts: "pairs" (`block|block` lines, the echo filler's) and "far" (487 characters of random words, then the
same 487 again). tests/model/test_default_checkpoint_retrieval.py holds the bundled checkpoint to it.
"""

from __future__ import annotations

import argparse
import random
import string
import sys

import torch
import torch.nn.functional as F

from lighthouse.checkpoint import load_checkpoint
from lighthouse.tokenizer import BOS_ID

ALPHABET = string.ascii_lowercase + string.digits


def _losses(model, text: str, second: list[bool]) -> tuple[float, float]:
    ids = torch.tensor([[BOS_ID, *text.encode("ascii")]], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(ids, dense=True).logits[0, :-1].float()
    ce = F.cross_entropy(logits, ids[0, 1:], reduction="none").cpu()
    rep = torch.tensor(second)
    return float(ce[~rep].mean()), float(ce[rep].mean())


def pairs_text(rng: random.Random, n_lines: int = 24) -> tuple[str, list[bool]]:
    text, second = "", []
    for _ in range(n_lines):
        s = "".join(rng.choices(ALPHABET, k=rng.randint(8, 32)))
        text += s + "|" + s + "\n"
        second += [False] * (len(s) + 1) + [True] * len(s) + [False]
    return text, second


def far_text(rng: random.Random) -> tuple[str, list[bool]]:
    words = " ".join("".join(rng.choices(ALPHABET, k=rng.randint(3, 8))) for _ in range(90))[:487]
    return words + words, [False] * len(words) + [True] * len(words)


LAYOUTS = {"pairs": pairs_text, "far": far_text}


def copy_losses(model, layout: str, seed: int = 0) -> tuple[float, float]:
    """Mean loss in nats per character on the first and on the second occurrence of the blocks of `layout`."""
    return _losses(model, *LAYOUTS[layout](random.Random(seed)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", nargs="+", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    for path in args.checkpoint:
        model, _ = load_checkpoint(path, device=args.device, dtype=torch.float32, load_tokenizer=False)
        model.eval()
        for name in LAYOUTS:
            first, second = copy_losses(model, name)
            print(f"{path}: {name:5s} first occurrence {first:.3f}  second occurrence {second:.3f} nats/char", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
