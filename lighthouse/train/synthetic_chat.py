"""Synthetic retrieval documents in the chat layout that the SDK's `documents.ask` sends.

A plain synthetic document ends with its questions in running text ("... The pass key is 12345."). Asked through
`client.documents.ask(document, question)`, the same document arrives as chat turns instead (the byte tokenizer's
template, lighthouse.tokenizer.CHAT_TEMPLATE):

    BOS [<|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|>]
    <|start_header_id|>user<|end_header_id|>\\n\\n{document}\\n\\nQuestion: {question}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n{lead-in}{answer}.<|eot_id|>

`chat_ids` turns a SyntheticDoc into those token ids, exactly `length` long (filler of the document's own kind is
prepended to the document to fill up), with the answer's token span for the answer-weighted loss.
"""

from __future__ import annotations

import random

from lighthouse.tokenizer import BOS_ID, END_HEADER_ID, EOS_ID, EOT_ID, START_HEADER_ID
from lighthouse.train.synthetic import SyntheticDoc, make_filler

# the SDK's default system prompt (lighthouse_client.documents.DEFAULT_SYSTEM); half the chat documents carry it
SDK_SYSTEM = "Answer the question using only the document. Be concise."
# room a plain document leaves for the chat markers, the system prompt and the restated question (at most ~170)
CHAT_RESERVE = 200


def _header(role: str) -> list[int]:
    return [START_HEADER_ID, *role.encode("ascii"), END_HEADER_ID, *b"\n\n"]


def chat_ids(doc: SyntheticDoc, length: int, rng: random.Random, system: str | None) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, answer spans): BOS, the chat turns, EOS; exactly `length` ids. ValueError if the document is too long."""
    if doc.chat_qa is None:
        raise ValueError(f"a {doc.task or 'text'} document has no question for the chat layout")
    question, lead, answer = doc.chat_qa
    head = [BOS_ID] + (_header("system") + list(system.encode("ascii")) + [EOT_ID] if system else []) + _header("user")
    body = doc.text[: doc.body_end].encode("ascii")
    asked = [*b"\n\nQuestion: ", *question.encode("ascii"), EOT_ID, *_header("assistant"), *lead.encode("ascii")]
    tail = [*b".", EOT_ID, EOS_ID]
    gap = length - (len(head) + len(body) + len(asked) + len(answer) + len(tail))
    if gap < 0:
        raise ValueError(f"the chat layout needs {length - gap} ids for this document; only {length} are free")
    pad, _ = make_filler(rng, doc.filler or "repeat", gap)  # more of the same filler in front of the document
    ids = head + list(pad.encode("ascii")) + list(body) + asked
    start = len(ids)
    ids += list(answer.encode("ascii")) + tail
    return ids, [(start, start + len(answer))]
