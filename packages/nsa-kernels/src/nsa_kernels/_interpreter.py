"""Compatibility shims for Triton 3.6's interpreter (``TRITON_INTERPRET=1``), used by the CPU tests.

- The interpreter holds a loaded scalar as a one-element array and converts it with ``int(array)``
  when it bounds a ``range``; NumPy >= 2.4 refuses that for one-dimensional arrays, so the shim goes
  through ``.item()``.
- The interpreter stores bfloat16 as raw ``uint16`` and ``tl.dot`` multiplies those integers; the
  shim widens bfloat16 operands to float32 first (exact), which is what the tensor cores compute.
- Every call of a nested ``@triton.jit`` helper re-patches ``triton.language`` (about a quarter of a
  millisecond each, most of the CPU test time); the shim patches once per module of helpers and
  launch.

Both are applied only when the interpreter is on; compiled kernels are untouched.
"""

from __future__ import annotations

import os


def apply() -> None:
    """Patch ``triton.runtime.interpreter`` once, if ``TRITON_INTERPRET=1``."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_nsa_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0].item()))

    patched._nsa_patched = True
    interpreter._patch_lang_tensor = patched

    import numpy as np
    import triton.language as tl

    create_dot = interpreter.InterpreterBuilder.create_dot

    def widen(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        data = (x.data.astype(np.uint32) << 16).view(np.float32)
        return interpreter.TensorHandle(data, tl.float32)

    def dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = dot

    patched_modules: set[int] = set()
    run_grid = interpreter.GridExecutor.__call__

    def run_grid_once(self, *args, **kwargs):
        patched_modules.clear()
        patched_modules.add(id(self.fn.__globals__))
        return run_grid(self, *args, **kwargs)

    def call_helper(self, *args, **kwargs):
        if id(self.fn.__globals__) not in patched_modules:
            interpreter._patch_lang(self.fn)
            patched_modules.add(id(self.fn.__globals__))
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            raise interpreter.InterpreterError(repr(error)) from error

    interpreter.GridExecutor.__call__ = run_grid_once
    interpreter.InterpretedFunction.__call__ = call_helper
