"""Performance benchmarks: one attention layer (attention_bench), the Triton path's stages (triton_stages_bench),
time to first token and prefill (prefill_bench), decode (decode_bench), KV memory (memory_bench) and the server end
to end (serve_bench). Run each as `python -m bench.perf.NAME --help` from the repository root."""
