"""Chat messages -> prompt token ids, where only the template's own markup can be a special token.

The template is rendered with each message's content replaced by a placeholder (private-use characters around
the message's index), so rendering costs the same whatever the content's size and never sees it. Then the special
tokens of the template's own text are found (by the tokenizer, with their offsets), and everything between two of
them, template text and the messages' content joined as rendered, is encoded as plain text
(`lighthouse.tokenizer.plain_text_encoder`): `<|eot_id|>` written in a message is twelve characters, never the end
of a turn. Roles were checked against CHAT_ROLES by the schema, so they add no markup either. Since a tokenizer
splits its input at special tokens before anything else, a benign chat gets exactly the ids of the whole rendered
template (the tests check the byte tokenizer, a ChatML one and SmolLM2's).
"""

from __future__ import annotations

import re

from jinja2 import TemplateError

from lighthouse.tokenizer import plain_text_encoder
from lighthouse_server.errors import APIError

_OPEN, _CLOSE = "\ue000", "\ue001"  # Unicode private use: in no template
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


class ChatTemplate:
    """One tokenizer's chat template; `render` and `encode` run off the event loop (they take a core)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.encode_plain = plain_text_encoder(tokenizer)
        decoder = getattr(tokenizer, "added_tokens_decoder", {})
        self.special_ids = {i for i, t in decoder.items() if getattr(t, "special", False)}

    def render(self, roles: list[str], add_generation_prompt: bool = True) -> str:
        """The template's text with message i's content as a placeholder."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions", param="messages")
        msgs = [{"role": role, "content": f"{_OPEN}{i}{_CLOSE}"} for i, role in enumerate(roles)]
        try:
            return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt,
                                                      tokenize=False)
        except TemplateError as exc:  # the template's own refusal (raise_exception): roles out of order, say
            raise APIError(400, f"this model's chat template refused the messages: {exc}", param="messages") from None

    def encode(self, rendered: str, contents: list[str]) -> list[int]:
        """Ids of `rendered` with each placeholder replaced by its message's content, where only the template's
        text can yield special tokens."""
        parts = _PLACEHOLDER.split(rendered)  # template, index, template, index, ..., template
        ids: list[int] = []
        run: list[str] = []  # text since the last special token
        for k, part in enumerate(parts):
            if k % 2:
                run.append(contents[int(part)])
                continue
            pos = 0
            for token, start, end in self._specials(part):
                ids += self.encode_plain("".join(run) + part[pos:start])
                ids.append(token)
                run, pos = [], end
            run.append(part[pos:])
        return ids + self.encode_plain("".join(run))

    def _specials(self, text: str) -> list[tuple[int, int, int]]:
        """(id, start, end) of each special token the tokenizer finds in the template's `text`."""
        if not text:
            return []
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(i, a, b) for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if i in self.special_ids]
