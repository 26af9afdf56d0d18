"""Speculative decoding by prompt lookup: drafts from the prompt and the output so far (proposer.py), verified in
one batched forward of Q = k + 1 tokens per row (the model runner's `verify`), accepted so that the output
distribution is the model's own (acceptance.py), orchestrated per decode step (step.py)."""
