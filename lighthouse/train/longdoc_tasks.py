"""The questions of long-document samples (lighthouse.train.longdoc): needle sentences, a question, the answer.

All wording is this project's own; keys are made-up phrases ("the amber harbour"), values are numbers, codes
("KT-4821") or 8 hex digits, drawn from a seeded `random.Random` so a sample is a pure function of its index.

fact        one fact in the document; asked.
facts       3-10 facts of one form (different keys and values); one asked, the rest are distractors.
multivalue  one key given 2-5 values (plus 0-3 facts about other keys); every value asked, listed in document order.
multikey    3-10 facts; 2-4 of them asked in one question, answered in the order asked.
chain       a value passed along 2-4 references ("the X uses the same code as the Y"), plus 1-3 other facts and a
            decoy reference to one of them; the end of the chain asked.

Half the answers are a sentence, half the bare value(s); `Probe.spans` marks each asked value in the answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

LONGDOC_TASKS = ("fact", "facts", "multivalue", "multikey", "chain")


@dataclass
class Probe:
    """What a question sample puts into its document and asks: needles in document order, the question, the answer
    and the character spans of the asked values inside the answer."""

    task: str
    needles: list[str]
    question: str
    answer: str
    spans: list[tuple[int, int]]


_ADJS = ("amber copper velvet hollow northern crooked silent golden rusty painted sunken frozen marble woollen "
         "lantern-lit hidden crimson narrow wandering patient scarlet misty brass humble crystal dusty").split()
_NOUNS = ("harbour orchard observatory ferry granary chapel workshop lighthouse pavilion archive mill garden "
          "carriage bakery greenhouse tavern bridge quarry vineyard library tower cottage shipyard museum").split()
# (thing, things, value kind)
_THINGS = (("access code", "access codes", "code"), ("serial number", "serial numbers", "number"),
           ("locker number", "locker numbers", "number"), ("ticket code", "ticket codes", "hex"),
           ("telephone extension", "telephone extensions", "number"), ("vault combination", "vault combinations", "code"))
_STATE = ("The {thing} of the {key} is {value}.", "The {key} has the {thing} {value}.",
          "Remember that the {thing} for the {key} is {value}.", "For the record, the {key} was given the {thing} {value}.")
_STATE_MANY = ("A {thing} of the {key} is {value}.", "The {key} has, among others, the {thing} {value}.")
_LINK = ("The {key} uses the same {thing} as the {ref}.", "The {thing} of the {key} equals that of the {ref}.")
_ASK = ("What is the {thing} of the {key}?", "Which {thing} does the document give for the {key}?")


def _value(rng: random.Random, kind: str) -> str:
    if kind == "number":
        d = rng.randint(5, 8)
        return str(rng.randrange(10 ** (d - 1), 10**d))
    if kind == "code":
        return f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}-{rng.randrange(1000, 10000)}"
    return "".join(rng.choice("0123456789abcdef") for _ in range(8))


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _answer(parts: list[str], values: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Concatenate text parts and values (alternating: parts[0], values[0], parts[1], ...); the values' spans."""
    text, spans = "", []
    for i, part in enumerate(parts):
        text += part
        if i < len(values):
            spans.append((len(text), len(text) + len(values[i])))
            text += values[i]
    return text, spans


def make_probe(task: str, rng: random.Random) -> Probe:
    """The needles, question and answer of one `task` sample (see the module docstring)."""
    thing, things, kind = rng.choice(_THINGS)
    keys = [f"{a} {n}" for a, n in rng.sample([(a, n) for a in _ADJS for n in _NOUNS], 12)]
    values: list[str] = []
    while len(values) < 12:
        v = _value(rng, kind)
        if v not in values:
            values.append(v)
    state = rng.choice(_STATE)
    fact = lambda k, v: state.format(thing=thing, key=k, value=v)
    sentence = rng.random() < 0.5  # answer in a sentence, else the bare value(s)
    if task in ("fact", "facts"):
        n = 1 if task == "fact" else rng.randint(3, 10)
        asked = rng.randrange(n)
        needles = [fact(keys[i], values[i]) for i in range(n)]
        text, spans = _answer([f"The {thing} of the {keys[asked]} is ", "."] if sentence else ["", ""], [values[asked]])
        return Probe(task, needles, rng.choice(_ASK).format(thing=thing, key=keys[asked]), text, spans)
    if task == "multivalue":
        k, n_other = rng.randint(2, 5), rng.randint(0, 3)
        many = rng.choice(_STATE_MANY)
        placed = [(many.format(thing=thing, key=keys[0], value=v), v) for v in values[:k]]
        placed += [(fact(keys[1 + i], values[k + i]), None) for i in range(n_other)]
        rng.shuffle(placed)
        needles, own = [s for s, _ in placed], [v for _, v in placed if v is not None]  # in document order
        lead = [f"The {things} of the {keys[0]} are "] if sentence else [""]
        text, spans = _answer(lead + [", "] * (k - 2) + [" and ", "."], own)
        question = f"The document gives several {things} for the {keys[0]}. What are all of them?"
        return Probe(task, needles, question, text, spans)
    if task == "multikey":
        n = rng.randint(3, 10)
        asked = rng.sample(range(n), rng.randint(2, min(4, n)))
        needles = [fact(keys[i], values[i]) for i in range(n)]
        names = [f"the {keys[i]}" for i in asked]
        question = f"What are the {things} of {_join(names)}?"
        if sentence:
            parts = [f"The {thing} of {names[0]} is "] + [f", of {k} it is " for k in names[1:]] + ["."]
        else:
            parts = [f"{names[0][0].upper()}{names[0][1:]}: "] + [f"; {k}: " for k in names[1:]] + ["."]
        text, spans = _answer(parts, [values[i] for i in asked])
        return Probe(task, needles, question, text, spans)
    if task == "chain":
        hops, n_other = rng.randint(2, 4), rng.randint(1, 3)
        link = rng.choice(_LINK)
        needles = [fact(keys[0], values[0])]
        needles += [link.format(thing=thing, key=keys[i], ref=keys[i - 1]) for i in range(1, hops + 1)]
        needles += [fact(keys[hops + 1 + i], values[1 + i]) for i in range(n_other)]  # a different value each
        needles.append(link.format(thing=thing, key=keys[-1], ref=keys[hops + 1]))  # a decoy reference
        rng.shuffle(needles)
        text, spans = _answer([f"The {thing} of the {keys[hops]} is ", "."] if sentence else ["", ""], [values[0]])
        question = f"Following the references in the document, what is the {thing} of the {keys[hops]}?"
        return Probe(task, needles, question, text, spans)
    raise ValueError(f"unknown long-document task {task!r}; choose from {', '.join(LONGDOC_TASKS)}")
