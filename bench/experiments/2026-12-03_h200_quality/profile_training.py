"""Item 3's profile: where a training step's time goes, dense vs Lighthouse, on the run train_compare timed.

The trainer built from the same flags as recipes/train_compare.py's two runs (h200 preset, 98,304-token sequences,
2 per step, micro-batch 1, Lighthouse L3 p4 k2048 with layers 0 and 7 dense); 3 warm-up steps of each phase, then
3 steps of each under torch.profiler. Prints the wall time per step and the top CUDA kernels of each phase.

    PYTHONPATH=. python bench/experiments/2026-12-03_h200_quality/profile_training.py OUT.txt   # from the repository root
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from recipes.train_compare import resolve, parse_args, trainer_flags
from lighthouse.train.cli import add_arguments, config_from_args
from lighthouse.train.trainer import Trainer


SORT = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"


def main() -> int:
    out = Path(sys.argv[1])
    cuda = torch.cuda.is_available()  # without CUDA: train_compare's --tiny CPU dry run, to check this script
    a = resolve(parse_args(["--out", "/tmp/prof_tc", "--max-steps", "20"] + ([] if cuda else ["--tiny"])))
    flags = trainer_flags(a, Path("/tmp/prof_tc/run"), max_steps=20, tail_steps=10, eval_every=0)
    p = argparse.ArgumentParser()
    add_arguments(p)
    trainer = Trainer(config_from_args(p.parse_args(flags)))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    lines = [f"{torch.cuda.get_device_name() if cuda else 'cpu'} torch {torch.__version__}; trainer flags: {' '.join(flags)}", ""]
    step = 0
    for phase in ("dense", "lighthouse"):
        for _ in range(3):
            trainer._train_step(step, phase)
            step += 1
        sync()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                trainer._train_step(step, phase)
                step += 1
            sync()
        wall = (time.perf_counter() - t0) / 3
        tokens = a.seq_len * a.batch_size
        lines += [f"== {phase}: {wall:.3f} s per step under the profiler ({tokens / wall:,.0f} tokens/s), "
                  f"top kernels over 3 steps", prof.key_averages().table(sort_by=SORT, row_limit=18,
                                                                        max_name_column_width=70), ""]
        print(lines[-3], flush=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
