"""Schemathesis hooks for tests/server/test_server_schemathesis.py (loaded with
SCHEMATHESIS_HOOKS=schemathesis_hooks).

One check replaces the built-in `positive_data_acceptance`, which the test excludes for this reason only: a
schema-valid request must be accepted, except for a 400 whose `code` is one of RUNTIME_ONLY_REFUSALS, limits no
JSON schema can state. Any other 400 (or 422, ...) to valid data fails, through the built-in check itself.
"""

from __future__ import annotations

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

RUNTIME_ONLY_REFUSALS = {
    "context_length_exceeded",  # prompt tokens + max_tokens > max_model_len: tokens, not JSON lengths
    "kv_cache_exceeded",  # n x (prompt + max_tokens) positions > the KV cache
    "invalid_combination",  # a relation between fields: best_of != n, stream_options without stream
    "citations_unavailable",  # citations: true without an uploaded document to cite (server state, not JSON)
    "invalid_grammar",  # a response_format schema, guided_json or guided_regex the grammar library cannot follow
}


@schemathesis.check
def valid_data_accepted_unless_a_runtime_only_limit(ctx, response, case):
    if response.status_code == 400:
        try:
            code = (response.json().get("error") or {}).get("code")
        except ValueError:
            code = None
        if code in RUNTIME_ONLY_REFUSALS or _int64_seed_refused(case):
            return None
    return positive_data_acceptance(ctx, response, case)


def _int64_seed_refused(case) -> bool:
    """A seed just above 2^63 - 1 (the schema's maximum): the generator compares integers that large as floats, in
    which 2^63 + 192 equals the maximum, and so counts it valid; the server compares exactly and refuses it."""
    seed = case.body.get("seed") if isinstance(case.body, dict) else None
    return isinstance(seed, int) and not -(2**63) <= seed <= 2**63 - 1
