"""Quality evaluations: passkey and key-value retrieval (quality_bench, passkey_eval, engine_passkey_eval,
sparse_layers_eval, documents_ask_eval, compact_followup_eval), in-context copying (copy_eval), RULER (ruler and
its ruler_* modules), citations (citations_eval on pass keys, citations_ruler on RULER's samples) and GGUF
conversion parity (gguf_parity). Run each as `python -m bench.evals.NAME --help` from the repository root."""
