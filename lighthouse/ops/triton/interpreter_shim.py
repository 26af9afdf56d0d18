"""Make Triton's CPU interpreter round fp32 -> bf16 casts to nearest-even, as the GPU does.

The interpreter (TRITON_INTERPRET=1, used by the CPU tests) truncates such casts, which would make every bf16
result of the kernels differ from the GPU's by up to one unit in the last place, and the bf16 norm scores (which
must match torch bit for bit) wrong. Installed only when the interpreter is active; a no-op otherwise.
"""

from __future__ import annotations

import numpy as np


def install() -> None:
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except Exception:  # pragma: no cover - triton missing or reorganized
        return
    original = getattr(interpreter, "_convert_float", None)
    if original is None or getattr(original, "_lighthouse_rtne", False):
        return

    def convert(input, input_dtype, output_dtype, rounding_mode):  # noqa: A002 - the interpreter's names
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            bits = np.ascontiguousarray(input).astype(np.float32).view(np.uint32)
            out = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
            nan = np.isnan(np.ascontiguousarray(input).astype(np.float32))
            return np.where(nan, np.uint16(0x7FC0), out).astype(np.uint16)
        return original(input, input_dtype, output_dtype, rounding_mode)

    convert._lighthouse_rtne = True
    interpreter._convert_float = convert
