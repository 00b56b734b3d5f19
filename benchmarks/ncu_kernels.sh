#!/usr/bin/env bash
# Nsight Compute sections (speed of light, memory, occupancy, warp stalls, launch) for the main NSA kernels,
# one launch each, in one forward+backward call at T tokens (VideoNSA shape, random input of attention.py).
# Usage: benchmarks/ncu_kernels.sh OUT_DIR [T]   (needs ncu and GPU performance counters; NCU_KERNELS overrides the
# list, e.g. the Triton kernels that run with the Gluon ones switched off by NSA_KERNELS_TUNING)
set -euo pipefail
out=${1:?output directory}
T=${2:-32768}
kernels=(${NCU_KERNELS:-slc_fwd_kernel_block_async slc_fwd_kernel_merge slc_bwd_kernel_block_async
         slc_bwd_kernel_reduce_dq topk_fwd_kernel_select topk_fwd_kernel_scores_async branch_fwd_kernel_attn_async
         branch_bwd_kernel_dq_async branch_bwd_kernel_dkv_async})
call="import sys, torch; sys.path.insert(0, 'benchmarks'); from attention import NSA, inputs
from nsa_kernels import nsa_func
q, k, v, g = inputs($T); o = nsa_func(q, k, v, g, **NSA); o.backward(torch.randn_like(o)); torch.cuda.synchronize()"
python3 -c "$call"
for kernel in "${kernels[@]}"; do
    ncu --kernel-name "$kernel" --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
        --section Occupancy --section WarpStateStats --section LaunchStats --print-details all \
        python3 -c "$call" > "$out/ncu_$kernel.txt" 2>&1 || echo "ncu failed for $kernel"
    grep -E "Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|L2 Hit Rate|Achieved Occupancy|Theoretical Occupancy|Registers Per Thread|Shared Memory Configuration Size|Block Limit (Registers|Shared Mem)|Warp Cycles Per Issued|ERR" "$out/ncu_$kernel.txt" | sed "s/^/$kernel: /" || true
done
