"""recipes/training_summary.py: training.json from a recipe run's stage folders and a throughput profile."""

from __future__ import annotations

import json

from recipes import training_summary


def write_stage(folder, steps, finished):
    folder.mkdir(parents=True)
    rows = [{"type": "train", "step": s, "loss": 10.0 / s, "tokens": s * 1000, "tokens_per_s": 100.0 * s}
            for s in range(5, steps + 1, 5)]
    rows.append({"type": "eval", "step": steps, "eval_loss": 4.0, "dense_eval_loss": 3.5, "answer_acc": 0.25,
                 "answers": 8})
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if finished:
        (folder / "adapter_config.json").write_text("{}")


def test_stages_in_config_order_with_their_last_losses_and_the_throughput(tmp_path, capsys):
    run = tmp_path / "run"
    write_stage(run / "s1_32k-after_select", 150, True)
    write_stage(run / "s1_32k-before_pool", 150, True)
    write_stage(run / "s2_64k", 40, False)
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"device": "X", "torch": "t", "base_65536_lighthouse": {"s_per_step": 1.0,
                                   "tokens_per_s": 65536}, "base_65536_dense": {"s_per_step": 2.5,
                                   "tokens_per_s": 26214}, "base_65536_speedup": 2.5}))
    out = tmp_path / "training.json"
    assert training_summary.main([str(run), "--out", str(out), "--throughput", str(profile)]) == 0
    t = json.loads(out.read_text())
    assert [s["stage"] for s in t["stages"]] == ["s1_32k-after_select", "s1_32k-before_pool", "s2_64k"]
    s2 = t["stages"][2]
    assert (s2["seq_len"], s2["steps"], s2["steps_planned"], s2["finished"], s2["tokens"]) == (65536, 40, 100, False,
                                                                                           40000)
    assert s2["final_train_loss"] == 10.0 / 40 and s2["eval"]["dense_eval_loss"] == 3.5
    assert t["tokens_total"] == 150000 * 2 + 40000
    assert t["throughput"]["65536"] == {"lighthouse_tokens_per_s": 65536, "dense_tokens_per_s": 26214,
                                        "speedup": 2.5}
