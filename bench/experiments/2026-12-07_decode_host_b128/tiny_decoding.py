"""The engine step_host.py and step_host_nomodel.py time: a 2-layer, 64-wide model on the CPU (the tree on
PYTHONPATH: this one or the old one), B requests of 32 tokens admitted and all decoding (dense, greedy)."""
from dataclasses import replace

import torch

from bench.perf.paper_server import paper_config
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM


def decoding_engine(B: int, max_tokens: int) -> LLMEngine:
    torch.set_num_threads(1)
    cfg = replace(paper_config(4096, layers=2, topk=128), hidden_size=64, intermediate_size=64,
                  num_attention_heads=1, num_key_value_heads=1, head_dim=64, vocab_size=512)
    cfg.lighthouse = replace(cfg.lighthouse, full_attn_layers=[0, 1])
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    eng = LLMEngine(model, None, EngineConfig(prefill="dense", decode="dense", max_num_seqs=B,
                                              kv_cache_bytes=1 << 28))
    sp = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    for i in range(B):
        eng.add_request(f"r{i}", [(i * 7 + j) % 500 + 1 for j in range(32)], sp, RequestOptions())
    while True:  # until every request is admitted and decoding
        outs = eng.step()
        if len(eng.scheduler.running) == B and not eng.scheduler.waiting and len(outs) == B:
            return eng
