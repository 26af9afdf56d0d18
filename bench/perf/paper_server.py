"""The paper's 270M shape with random weights, served on loopback by the real server, and one streamed completion
timed from the client: what serve_bench, prefill_bench, decode_bench and memory_bench share."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import torch

TAIL = 64



def random_prompt(n: int, seed: int) -> list[int]:
    """n printable-byte token ids drawn from `seed` (a distinct document per seed)."""
    return torch.randint(32, 127, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def paper_config(max_len: int, layers: int = 30, topk: int = 2048):
    from lighthouse.model.config import LighthouseConfig, ModelConfig
    from lighthouse.model.presets import BYTE_VOCAB_SIZE

    return ModelConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=1024, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=8, head_dim=128, max_position_embeddings=max_len,
        rope_theta=10000.0,
        lighthouse=LighthouseConfig(levels=3, pooling_factor=4, topk=topk, scorer="norm",
                                    full_attn_layers=[0, 1, layers - 2, layers - 1], min_seq_len=0),
    )


def make_checkpoint(out: Path, max_len: int, layers: int = 30, topk: int = 2048) -> int:
    from lighthouse.checkpoint import save_checkpoint
    from lighthouse.model import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(paper_config(max_len, layers, topk))
    save_checkpoint(model, None, out, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return n


class Server:
    def __init__(self, settings):
        import uvicorn

        from lighthouse_server.app import create_app

        self.app = create_app(settings)
        self.url = f"http://127.0.0.1:{settings.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=settings.port,
                                                    log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 300:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(60)


def stream_completion(client: httpx.Client, url: str, n_prompt: int, max_tokens: int, *, question: int = 0,
                      **extra) -> dict:
    """One streamed completion with logprobs=0 (a chunk per token). Returns client-side timings.

    Cold by default (`cache_prompt: false`): a TTFT must not be a prefix-cache hit of an earlier run.
    `question` changes the last TAIL tokens (another question about the same document)."""
    ids = [32 + (i * 7919) % 90 for i in range(n_prompt)]  # ASCII byte ids
    for j in range(max(0, n_prompt - TAIL), n_prompt):
        ids[j] = 32 + (j * 7919 + question * 31) % 90
    body = {"prompt": ids, "max_tokens": max_tokens, "temperature": 0, "stream": True, "logprobs": 0,
            "ignore_eos": True, "cache_prompt": False, **extra}
    payload = json.dumps(body)
    t0 = time.perf_counter()
    token_times, error = [], None
    with client.stream("POST", url + "/v1/completions", content=payload,
                       headers={"content-type": "application/json"}) as r:
        if r.status_code != 200:
            r.read()
            return {"error": f"HTTP {r.status_code}: {r.text[:300]}"}
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                error = chunk["error"]["message"]
                break
            for c in chunk.get("choices", []):
                n_tok = len((c.get("logprobs") or {}).get("tokens", []))
                token_times += [time.perf_counter()] * max(n_tok, 0)
    if error or not token_times:
        return {"error": error or "no tokens"}
    out = {"ttft_s": token_times[0] - t0, "tokens": len(token_times), "e2e_s": token_times[-1] - t0}
    if len(token_times) > 1:
        dt = token_times[-1] - token_times[0]
        out["decode_tok_per_s"] = (len(token_times) - 1) / dt
        out["decode_ms_per_token"] = 1000 * dt / (len(token_times) - 1)
    return out
