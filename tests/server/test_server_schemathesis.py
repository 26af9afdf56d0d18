"""/openapi.json tells the truth: `schemathesis run`, as a user would run it, over every operation of a real server
(uvicorn on loopback, API key on, the tiny checkpoint), with a fixed seed and a bounded number of examples, finds
no 5xx and no mismatch between the schema and what the server sends or accepts.

Every check runs (`--checks all`), with one exception: the built-in `positive_data_acceptance` is replaced by
`valid_data_accepted_unless_a_runtime_only_limit` (schemathesis_hooks.py beside this file), which fails on exactly
the same responses except a 400 whose `code` names a limit no JSON schema can state (prompt tokens + max_tokens over the
context; best_of != n). Coverage, fuzzing and stateful phases; about 1,200 requests in 25-40 s on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


pytest.importorskip("schemathesis")

KEY = "sk-schemathesis"
SEED = 1
MAX_EXAMPLES = 30  # per operation and phase


@pytest.fixture(scope="module")
def api(tiny_checkpoint, loopback_server, settings_for):
    ckpt = tiny_checkpoint
    # a short context keeps every generated max_tokens cheap and makes the context limit reachable
    s = settings_for(ckpt, api_key=KEY, max_model_len=64, max_num_seqs=4, max_body_mb=1.0, served_model_name="tiny")
    with loopback_server(s) as server:
        yield server


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(api, tmp_path):
    tests_dir = Path(__file__).resolve().parent
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join([str(tests_dir), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{api.url}/openapi.json",
           "--checks", "all", "--exclude-checks", "positive_data_acceptance",  # replaced; see the module docstring
           "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--generation-database", "none",
           "--header", f"Authorization: Bearer {KEY}", "--no-color", "--report-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=480, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "No issues found" in out, out[-8000:]
    assert "Selected: 14/14" in out and "Tested: 14" in out, out[-3000:]  # every operation (5 of /v1/documents)


def test_the_schema_documents_what_the_server_sends(api):
    doc = httpx.get(f"{api.url}/openapi.json").json()
    ops = {(m, p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert all("422" not in op["responses"] for op in ops.values())
    completions = ops[("post", "/v1/completions")]["responses"]
    assert {"200", "400", "401", "404", "413", "429", "500", "503"} <= set(completions)
    assert completions["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert set(completions["200"]["content"]) == {"application/json", "text/event-stream"}
    assert set(ops[("get", "/metrics")]["responses"]["200"]["content"]) == {"text/plain"}
    schemas = doc["components"]["schemas"]
    assert schemas["CompletionRequest"]["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 63  # max_model_len - 1
    assert schemas["CompletionRequest"]["properties"]["prompt"]["anyOf"][0]["minLength"] == 1
    assert schemas["ChatCompletionRequest"]["properties"]["messages"]["minItems"] == 1
    assert {"required": ["prompt"]} in schemas["TokenizeRequest"]["oneOf"]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    # and the server refuses what the schema refuses, with the status the schema gives
    auth = {"Authorization": f"Bearer {KEY}"}
    for path, body in [("/v1/completions", {"prompt": ""}), ("/v1/chat/completions", {"messages": []}),
                       ("/tokenize", {})]:
        r = httpx.post(api.url + path, json=body, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["param"] in ("prompt", "messages"), r.text
