"""The OpenAI-compatible HTTP server over the Lighthouse engine (HTTP, auth, limits, streaming; no tensors)."""
