"""Run one of RULER's sample generators (nvidia-long-context-eval) as its own CLI would, with three stand-ins.

    python -m bench.evals.ruler_generate GENERATOR.py --save_dir D --save_name TASK ... (the generator's own flags)

`ruler_tasks.generate` runs this in a child process per (task, length): the generators are scripts that parse
argv, seed the global `random` and load their haystacks at import time, so each run gets a fresh interpreter,
and a generator that cannot finish (below) is stopped without stopping the harness. The generator writes its
samples as RULER does (SAVE_DIR/TASK/validation.jsonl); nothing in the installed package is edited. Stand-ins:

- tokenizer: `select_tokenizer` returns `ServedTokenizer` over `--tokenizer_path` (the served model's folder), so
  lengths count the served model's tokens; RULER's own choices need NeMo, tiktoken's downloaded encodings or
  `trust_remote_code`.
- NLTK punkt (niah's essay haystacks are cut into sentences to place the needles): its data cannot be downloaded
  here, so unless `nltk.data.find` finds it, `nltk.tokenize.sent_tokenize` is `regex_sentences` below.
- scipy (fwe's one use is `scipy.special.zeta(alpha)`, the Riemann zeta): when scipy is not installed, mpmath's
  zeta (mpmath comes with torch, through sympy) stands in; equal to double precision.

A generator whose smallest haystack does not fit the length retries forever inside a bare `except:` (qa at 4K
with a byte-level tokenizer: one SQuAD paragraph is ~700 tokens, and it starts from 10). Two watches end such
a run with exit code STUCK and a message: 50 failed `generate_input_output` calls in a row, or 50 prompts in a row
counted over the length.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import types
from pathlib import Path

STUCK = 3  # exit code: the generator found no sample that fits
STUCK_AFTER = 50  # failures in a row that mean it never will

# A sentence ends at . ! or ? (and any closing quote or bracket) followed by space and a capital, digit or quote.
_SENTENCE_END = re.compile(r"""(?:(?<=[.!?])|(?<=[.!?]["'”’)\]]))\s+(?=["'“‘(\[]?[A-Z0-9])""")


def regex_sentences(text: str) -> list[str]:
    """`sent_tokenize` without punkt's data: split after sentence-ending punctuation (no abbreviation list)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def sentence_splitter() -> str:
    """Which splitter niah's essays get here: "nltk punkt" when NLTK and its data are installed, else "regex"."""
    try:
        import nltk

        for name in ("tokenizers/punkt_tab", "tokenizers/punkt"):
            try:
                nltk.data.find(name)
                return "nltk punkt"
            except LookupError:
                pass
    except ImportError:
        pass
    return "regex"


def zeta_source() -> str:
    return "scipy" if importlib.util.find_spec("scipy") is not None else "mpmath"


class ServedTokenizer:
    """RULER's tokenizer interface (`text_to_tokens`, `tokens_to_text`) over the served model's tokenizer: ids
    without special tokens, as RULER's HF tokenizer counts (`tokenize`); the server adds BOS or the chat markers.

    Watches for a generator that cannot fit: `max_len` prompts in a row longer than the length end the run."""

    def __init__(self, folder: str, max_len: int | None = None):
        from tokenizers import Tokenizer

        path = Path(folder) / "tokenizer.json" if Path(folder).is_dir() else Path(folder)
        self.tok = Tokenizer.from_file(str(path))
        self.max_len, self.over = max_len, 0

    def text_to_tokens(self, text: str) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if self.max_len is not None:
            self.over = self.over + 1 if len(ids) > self.max_len else 0
            if self.over >= STUCK_AFTER:
                _stuck(f"{self.over} prompts in a row are longer than {self.max_len} tokens")
        return ids

    def tokens_to_text(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


def _stuck(why: str) -> None:
    print(f"\nRULER's generator cannot fit a sample in this length with this tokenizer ({why}): its smallest "
          "haystack is too long", file=sys.stderr, flush=True)
    os._exit(STUCK)  # the generators retry inside bare `except:` clauses, which would catch SystemExit


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def install_stand_ins(argv: list[str]) -> None:
    """Put the stand-ins where the generator's imports find them (sys.modules), before it is loaded."""
    import long_context_eval.data.tokenizer as ruler_tokenizer  # imports tenacity (the `ruler` extra)

    max_len = int(_flag(argv, "--max_seq_length"))
    ruler_tokenizer.select_tokenizer = lambda kind, path: ServedTokenizer(path, max_len)
    sys.modules["tokenizer"] = ruler_tokenizer  # some generators import it by its bare name, after a sys.path hack
    if sentence_splitter() == "regex":
        nltk = types.ModuleType("nltk")
        nltk.tokenize = types.ModuleType("nltk.tokenize")
        nltk.tokenize.sent_tokenize = regex_sentences
        sys.modules.update({"nltk": nltk, "nltk.tokenize": nltk.tokenize})
    if zeta_source() == "mpmath":
        import mpmath

        scipy = types.ModuleType("scipy")
        scipy.special = types.ModuleType("scipy.special")
        scipy.special.zeta = lambda x, q=1: float(mpmath.zeta(x, q))
        sys.modules.update({"scipy": scipy, "scipy.special": scipy.special})


def _watch_failures(fn):
    """`fn` (a generator's generate_input_output), ending the run after STUCK_AFTER exceptions in a row."""
    failures = 0

    def watched(*args, **kwargs):
        nonlocal failures
        try:
            out = fn(*args, **kwargs)
        except BaseException as e:
            failures += 1
            if failures >= STUCK_AFTER:
                _stuck(f"{failures} calls in a row failed: {type(e).__name__}: {e}")
            raise
        failures = 0
        return out

    return watched


def run(script: Path, argv: list[str]) -> None:
    """Load the generator as a module (its import-time code parses `argv`), watch it, and run its main()."""
    install_stand_ins(argv)
    sys.argv = [str(script), *argv]  # its sibling imports (`from constants import TASKS`): ruler_tasks.generator_env
    spec = importlib.util.spec_from_file_location(f"ruler_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate_input_output = _watch_failures(module.generate_input_output)
    module.main()


def main() -> int:
    import long_context_eval.data.synthetic as synthetic

    script = Path(synthetic.__file__).parent / sys.argv[1]
    run(script, sys.argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
