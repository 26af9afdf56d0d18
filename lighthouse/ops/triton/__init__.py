"""Triton kernels for Lighthouse attention (GPU fast path; runs under TRITON_INTERPRET=1 on the CPU for tests).

Files, in pipeline order: pool.py (pyramid + scores, one pass), select.py (cascade + sort), gather.py (gather and
its fused pooling backward), scatter.py (fan-out and its backward); ops.py registers them as torch.library custom
ops with autograd; lighthouse_triton.py assembles the op. Importing this package needs triton.
"""

from lighthouse.ops.triton.geometry import INTERPRETING

if INTERPRETING:
    from lighthouse.ops.triton import interpreter_shim

    interpreter_shim.install()

from lighthouse.ops.triton.lighthouse_triton import (  # noqa: E402
    lighthouse_attention_triton,
    lighthouse_attention_triton_inference,
    lighthouse_select_triton,
)

__all__ = ["lighthouse_attention_triton", "lighthouse_attention_triton_inference", "lighthouse_select_triton"]
