"""Structured output: a request's grammar (JSON schema, any JSON object, regex, one of some strings) turned into a
token mask per decode step, so every sampled token keeps the output inside the grammar.

options.StructuredOutput says what a request asks for (parsed at the edge); grammar.py compiles it with llguidance
for the engine's tokenizer (one matcher per sequence); mask.py fills the sequences' bitmasks on the host and applies
them to the logits on the device (also at a verify step's draft positions)."""
