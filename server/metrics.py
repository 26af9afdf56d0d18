"""Prometheus metrics (named as docs/serving.md lists them), one registry per app: tests build many."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ttft = Histogram("lighthouse_time_to_first_token_seconds", "Time to first token", buckets=_LATENCY_BUCKETS,
                              registry=r)
        self.itl = Histogram("lighthouse_inter_token_latency_seconds", "Time between generated tokens",
                             buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram("lighthouse_e2e_request_latency_seconds", "Request latency, arrival to last token",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("lighthouse_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("lighthouse_generation_tokens", "Tokens generated", registry=r)
        self.prefill_tokens = Counter("lighthouse_prefill_tokens", "Prompt tokens prefilled, by path", ["path"],
                                      registry=r)
        self.running = Gauge("lighthouse_num_requests_running", "Sequences being generated", registry=r)
        self.waiting = Gauge("lighthouse_num_requests_waiting", "Requests queued", registry=r)
        self.kv_usage = Gauge("lighthouse_kv_cache_usage_ratio", "Fraction of the KV cache budget reserved", registry=r)
        self.prefix_cache_hit_tokens = Counter("lighthouse_prefix_cache_hit_tokens",
                                               "Prompt tokens reused from the prefix cache (not prefilled again)",
                                               registry=r)
        self.prefix_cache_usage = Gauge("lighthouse_prefix_cache_usage_ratio",
                                        "Fraction of the KV cache budget held by the prefix cache (evictable)", registry=r)
        self.host_cache_usage = Gauge("lighthouse_host_cache_usage_ratio",
                                      "Fraction of the host-memory tier's budget holding evicted documents", registry=r)
        self.host_cache_hit_tokens = Counter("lighthouse_host_cache_hit_tokens",
                                             "Prompt tokens restored from the host-memory tier (not prefilled again)",
                                             registry=r)
        self.host_cache_bytes = Counter("lighthouse_host_cache_bytes", "Bytes moved by the host-memory tier",
                                        ["direction"], registry=r)
        self.spec_draft_tokens = Counter("lighthouse_spec_decode_num_draft_tokens",
                                         "Draft tokens proposed by prompt lookup and verified", registry=r)
        self.spec_accepted_tokens = Counter("lighthouse_spec_decode_num_accepted_tokens",
                                            "Draft tokens accepted (each also a generated token)", registry=r)
        self._seen: dict[str, float] = {}  # the engine's running totals at the last render
        for path in ("sparse", "dense"):
            self.prefill_tokens.labels(path=path)

    def render(self, stats: dict) -> bytes:
        self.running.set(stats.get("running", 0))
        self.waiting.set(stats.get("waiting", 0))
        self.kv_usage.set(stats.get("kv_cache_usage", 0.0))
        self.prefix_cache_usage.set(stats.get("prefix_cache_usage", 0.0))
        self.host_cache_usage.set(stats.get("host_cache_usage", 0.0))
        for key, counter in (("host_cache_hit_tokens", self.host_cache_hit_tokens),
                             ("host_cache_bytes_to_host", self.host_cache_bytes.labels(direction="to_host")),
                             ("host_cache_bytes_to_device", self.host_cache_bytes.labels(direction="to_device")),
                             ("spec_draft_tokens", self.spec_draft_tokens),
                             ("spec_accepted_tokens", self.spec_accepted_tokens)):
            total = stats.get(key, 0)
            if total > self._seen.get(key, 0):
                counter.inc(total - self._seen.get(key, 0))
            self._seen[key] = total
        return generate_latest(self.registry)
