"""The warp-specialised Gluon kernels compiled offline for sm_90a at the VideoNSA shape (G = 7, D = 128; no GPU
needed), with what ptxas says of them: registers, spilled bytes, and whether it serialised the warpgroup MMAs.

ptxas serialises every wgmma of a kernel whose registers do not fit (message C7512, "wgmma.mma_async instructions are
serialized"), which makes it about twice as slow (run 34); a producer partition starved of registers spills in its
loop (run 35). Run (without ``TRITON_INTERPRET``): ``python benchmarks/gluon_registers.py [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from triton.runtime.jit import mangle_type

from nsa_kernels import attention_async, dkv_keyrows, selection_async, selection_ws

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
G, HKV, D = 7, 4, 128


def _ptxas_report(kernel, pointers: dict, scalars: dict, descriptors: dict, constants: dict, options: dict) -> str:
    """ptxas's ``-v`` report on ``kernel`` compiled for sm_90a."""
    signature = dict.fromkeys(kernel.arg_names, "constexpr")
    signature |= pointers | scalars | {name: mangle_type(desc) for name, desc in descriptors.items()}
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in pointers}
    constexprs = {(kernel.arg_names.index(name),): value for name, value in constants.items()}
    source = GluonASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.TemporaryDirectory() as folder:
        ptx = os.path.join(folder, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        command = [PTXAS, "-arch=sm_90a", "-v", ptx, "-o", os.path.join(folder, "kernel.cubin")]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
    return result.stdout + result.stderr


def summary(report: str) -> dict:
    """Registers, spilled bytes and serialisation from a ptxas report."""
    return {
        "registers": int(re.search(r"Used (\d+) registers", report).group(1)),
        "spilled_bytes": int(re.search(r"(\d+) bytes spill stores", report).group(1)),
        "serialized": "serialized" in report,
    }


def selection_ws_report() -> str:
    kernel = selection_ws.slc_bwd_kernel_block_ws
    launch = dict(selection_ws.LAUNCH)
    pointers = dict.fromkeys(("q", "k", "v", "do", "gates"), "*bf16")
    pointers |= dict.fromkeys(("lse", "delta", "dk_part", "dv_part"), "*fp32")
    indices = ("part_row", "cu_seqlens", "blk_seq", "blk_start", "csr_ent", "item_row", "item_lo", "item_hi")
    pointers |= dict.fromkeys((*indices, "item_step"), "*i32")
    scalars = dict.fromkeys(("NB", "e_base", "h0", "item_base"), "i32") | dict.fromkeys(("scale", "scale2"), "fp32")
    descriptor = selection_async.partial_descriptor(torch.zeros(1024, D, dtype=torch.bfloat16), 128)
    constants = dict(HQ=HKV * G, HKV=HKV, G=G, D=D, BM=128, BN=64, SB=64, S=32, C=-1, HR=1)
    constants |= {key: launch.pop(key) for key in ("PRODUCER_WARPS", "PRODUCER_REGS", "num_warps")}
    return _ptxas_report(kernel, pointers, scalars, {"dq_desc": descriptor}, constants,
                         {"num_warps": constants["num_warps"], **launch})  # fmt: skip


def keyrows_report() -> str:
    kernel = dkv_keyrows.branch_bwd_kernel_dkv_keyrows
    launch = dict(dkv_keyrows.LAUNCH)
    pointers = {"gates": "*bf16"} | dict.fromkeys(("lse", "delta", "dk", "dv"), "*fp32")
    pointers |= dict.fromkeys(("cu_seqlens", "cu_keys", "ktile_seq", "ktile_start"), "*i32")
    scalars = {"nk_total": "i32", "scale": "fp32", "scale2": "fp32"}
    keys = attention_async.row_descriptor(torch.zeros(100, HKV, D, dtype=torch.bfloat16), dkv_keyrows.KEYS // 2)
    rows = dkv_keyrows.row_descriptor(torch.zeros(100, HKV * G, D, dtype=torch.bfloat16))
    descriptors = {"k_desc": keys, "v_desc": keys, "q_desc": rows, "do_desc": rows}
    constants = dict(HQ=HKV * G, HKV=HKV, G=G, D=D, BM=dkv_keyrows.ROWS, BN=dkv_keyrows.KEYS, MODE=0, C=-1, CL=64,
                     CS=64, W=256, NSPLIT=1, SPAN=0, ACCUMULATE=False, NBUF=2)  # fmt: skip
    constants |= {key: launch.pop(key) for key in ("PRODUCER_REGS", "num_warps")}
    return _ptxas_report(kernel, pointers, scalars, descriptors, constants,
                         {"num_warps": constants["num_warps"], **launch})  # fmt: skip


REPORTS = {"selection_ws": selection_ws_report, "dkv_keyrows": keyrows_report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=sorted(REPORTS), action="append", help="default: all")
    parser.add_argument("--json", action="store_true", help="one JSON object of summaries instead of the reports")
    args = parser.parse_args()
    reports = {name: REPORTS[name]() for name in args.kernel or sorted(REPORTS)}
    if args.json:
        print(json.dumps({name: summary(text) for name, text in reports.items()}))
        return
    for name, text in reports.items():
        print(f"== {name}: {summary(text)}\n{text}")


if __name__ == "__main__":
    main()
