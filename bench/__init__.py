"""Benchmarks and evaluations of this repository (not installed: run from the repository root).

    python -m bench.perf.prefill_bench --out DIR            # performance: latency, throughput, memory (bench/perf/)
    python -m bench.evals.quality_bench --quick --out DIR   # quality: retrieval, RULER, parity (bench/evals/)

Each script is a module of this package and imports what it shares the same way (`from bench.perf.paper_server
import ...`); none edits sys.path. Results go to bench/results/ (its README.md indexes them); one-off experiment
scripts, kept as they ran, to bench/experiments/. Training recipes are in recipes/ at the repository root, and the
checks that pass or fail are tests under tests/ (the GPU ones marked `gpu`).
"""
