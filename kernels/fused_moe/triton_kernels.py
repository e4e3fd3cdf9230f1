"""Triton kernels of the GPU MoE path: three launches per layer.

1. `route_align_kernel` (one program): sigmoid routing with correction bias, top-k,
   renormalise x scale, shared-expert slots appended, then the pairs grouped by expert and
   padded to BLOCK_M (routing.moe_align_block_size's output up to the order of pairs
   within an expert).
2. `gate_up_silu_kernel`: grouped GEMM x @ w13[e].T with silu(gate) * up in the epilogue;
   its programs also zero the fp32 accumulator and counters the next kernel reduces into.
3. `down_reduce_kernel`: grouped GEMM act @ w2[e].T, times the routing weight, atomically
   added into the fp32 [M, H] accumulator; whichever program adds a token's last (k-th)
   contribution to a column tile casts that tile into the output.
Every size comes from tensor shapes (no host reads), so the sequence is CUDA-graph safe.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def route_align_kernel(
    logits_ptr, bias_ptr, topk_weights_ptr, topk_ids_ptr,
    sorted_ids_ptr, block_expert_ptr, num_post_ptr, cursor_ptr,
    num_tokens, num_experts, stride_logits, max_padded, max_blocks, scale,
    TOP_K: tl.constexpr, NUM_SHARED: tl.constexpr, HAS_BIAS: tl.constexpr,
    RENORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_KS: tl.constexpr, NUM_BINS: tl.constexpr, ROWS: tl.constexpr, FILL: tl.constexpr,
):  # fmt: skip
    slots = TOP_K + NUM_SHARED
    num_pairs = num_tokens * slots
    cols = tl.arange(0, BLOCK_E)
    kcols = tl.arange(0, BLOCK_KS)
    bins = tl.arange(0, NUM_BINS)  # experts + shared slots (NUM_BINS >= both)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=cols < num_experts, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_E], tl.float32)
    is_shared = (kcols >= TOP_K) & (kcols < slots)
    tl.store(cursor_ptr + bins, tl.zeros([NUM_BINS], tl.int32))
    tl.debug_barrier()

    # Phase 1: route ROWS tokens at a time; count pairs per expert (cursor_ptr = counts).
    for start in range(0, num_tokens, ROWS):
        rows = start + tl.arange(0, ROWS)
        rmask = rows < num_tokens
        lmask = rmask[:, None] & (cols[None, :] < num_experts)
        lptrs = logits_ptr + rows[:, None] * stride_logits + cols[None, :]
        scores = tl.sigmoid(tl.load(lptrs, mask=lmask, other=0.0).to(tl.float32))
        choice = tl.where(cols[None, :] < num_experts, scores + bias[None, :], float("-inf"))
        ids = tl.zeros([ROWS, BLOCK_KS], tl.int32)
        weights = tl.zeros([ROWS, BLOCK_KS], tl.float32)
        for j in tl.static_range(TOP_K):
            # Leftmost maximum = ties go to the lower expert index, as in the spec.
            best = tl.argmax(choice, axis=1, tie_break_left=True).to(tl.int32)
            hit = cols[None, :] == best[:, None]
            picked = tl.sum(tl.where(hit, scores, 0.0), axis=1)  # unbiased score
            ids = tl.where(kcols[None, :] == j, best[:, None], ids)
            weights = tl.where(kcols[None, :] == j, picked[:, None], weights)
            choice = tl.where(hit, float("-inf"), choice)
        if RENORMALIZE:
            weights = weights / (tl.sum(weights, axis=1)[:, None] + 1e-20)
        weights = tl.where(is_shared[None, :], 1.0, weights * scale)
        ids = tl.where(is_shared[None, :], num_experts + kcols[None, :] - TOP_K, ids)
        pmask = rmask[:, None] & (kcols[None, :] < slots)
        offs = rows[:, None] * slots + kcols[None, :]
        tl.store(topk_ids_ptr + offs, ids, mask=pmask)
        tl.store(topk_weights_ptr + offs, weights, mask=pmask)
        tl.atomic_add(cursor_ptr + ids, 1, mask=pmask, sem="relaxed")
    tl.debug_barrier()

    # Phase 2: padded per-expert offsets, block owners, padding sentinels.
    counts = tl.load(cursor_ptr + bins, volatile=True)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    total = tl.sum(padded, axis=0)
    tl.store(num_post_ptr, total)
    for b0 in range(0, max_blocks, FILL):
        blocks = b0 + tl.arange(0, FILL)
        first = blocks * BLOCK_M
        owner = tl.sum((ends[None, :] <= first[:, None]).to(tl.int32), axis=1)
        owner = tl.where(first < total, owner, -1)
        tl.store(block_expert_ptr + blocks, owner, mask=blocks < max_blocks)
    for p0 in range(0, max_padded, FILL):
        offs_p = p0 + tl.arange(0, FILL)
        tl.store(sorted_ids_ptr + offs_p, num_pairs, mask=offs_p < max_padded)
    tl.debug_barrier()  # counts read by every thread before the cursors overwrite them
    tl.store(cursor_ptr + bins, starts)
    tl.debug_barrier()  # sentinels and cursors in place before the scatter

    # Phase 3: each pair takes the next slot of its expert's run (atomics hand out
    # distinct slots; order within an expert is then arbitrary, which no result depends on).
    for start in range(0, num_tokens, ROWS):
        rows = start + tl.arange(0, ROWS)
        pmask = (rows[:, None] < num_tokens) & (kcols[None, :] < slots)
        offs = rows[:, None] * slots + kcols[None, :]
        ids = tl.load(topk_ids_ptr + offs, mask=pmask, other=0)
        slot = tl.atomic_add(cursor_ptr + ids, 1, mask=pmask, sem="relaxed")
        tl.store(sorted_ids_ptr + slot, offs, mask=pmask)


@triton.jit
def _block_coords(pid, num_blocks, num_tiles_n, GROUP_M: tl.constexpr):
    """Grouped program order: GROUP_M consecutive row blocks share weight tiles in L2."""
    per_group = GROUP_M * num_tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(num_blocks - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_size, (pid % per_group) // group_size


@triton.jit
def gate_up_silu_kernel(
    x_ptr, w13_ptr, act_ptr, sorted_ids_ptr, block_expert_ptr, num_post_ptr,
    acc_ptr, counter_ptr, acc_numel, counter_numel,
    width, hidden, num_pairs, slots, max_blocks,
    stride_xm, stride_we, stride_wn, stride_am,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, ZERO_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    # Zero the next kernel's reduction buffers here: saves a memset launch.
    step = tl.num_programs(0) * ZERO_BLOCK
    for z in range(pid * ZERO_BLOCK, acc_numel, step):
        offs_z = z + tl.arange(0, ZERO_BLOCK)
        tl.store(acc_ptr + offs_z, tl.zeros([ZERO_BLOCK], tl.float32), mask=offs_z < acc_numel)
    for z in range(pid * ZERO_BLOCK, counter_numel, step):
        offs_z = z + tl.arange(0, ZERO_BLOCK)
        tl.store(
            counter_ptr + offs_z, tl.zeros([ZERO_BLOCK], tl.int32), mask=offs_z < counter_numel
        )

    pid_m, pid_n = _block_coords(pid, max_blocks, tl.cdiv(width, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_post_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    pair = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = pair < num_pairs
    token = (pair // slots).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + token[:, None] * stride_xm + offs_k[None, :]
    # w13[e] is [2N, H] row-major; load [BLOCK_K, BLOCK_N] tiles of its transpose.
    g_ptrs = w13_ptr + expert * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]
    u_ptrs = g_ptrs + width * stride_wn
    nmask = offs_n < width
    gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        kmask = offs_k < hidden - k0
        a = tl.load(a_ptrs, mask=valid[:, None] & kmask[None, :], other=0.0)
        wmask = kmask[:, None] & nmask[None, :]
        gate = tl.dot(
            a, tl.load(g_ptrs, mask=wmask, other=0.0), gate, input_precision=DOT_PRECISION
        )
        up = tl.dot(a, tl.load(u_ptrs, mask=wmask, other=0.0), up, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    act = gate * tl.sigmoid(gate) * up  # silu(gate) * up, fused epilogue
    act_ptrs = act_ptr + pair[:, None].to(tl.int64) * stride_am + offs_n[None, :]
    tl.store(act_ptrs, act.to(act_ptr.dtype.element_ty), mask=valid[:, None] & nmask[None, :])


@triton.jit
def down_reduce_kernel(
    act_ptr, w2_ptr, topk_weights_ptr, out_ptr, acc_ptr, counter_ptr,
    sorted_ids_ptr, block_expert_ptr, num_post_ptr,
    width, hidden, num_pairs, slots, max_blocks,
    stride_am, stride_we, stride_wh, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_tiles_h = tl.cdiv(hidden, BLOCK_N)
    pid_m, pid_n = _block_coords(pid, max_blocks, num_tiles_h, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_post_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    pair = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = pair < num_pairs
    token = (pair // slots).to(tl.int64)
    offs_h = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    hmask = offs_h < hidden
    a_ptrs = act_ptr + pair[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    # w2[e] is [H, N] row-major; load [BLOCK_K, BLOCK_N] tiles of its transpose.
    b_ptrs = w2_ptr + expert * stride_we + offs_h[None, :] * stride_wh + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, width, BLOCK_K):
        kmask = offs_k < width - k0
        a = tl.load(a_ptrs, mask=valid[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=kmask[:, None] & hmask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    acc *= tl.load(topk_weights_ptr + pair, mask=valid, other=0.0)[:, None]

    # Top-k reduction: fp32 atomics, then the last of a token's `slots` contributions to
    # this column tile writes it out (threadfence-reduction pattern).
    omask = valid[:, None] & hmask[None, :]
    sum_ptrs = acc_ptr + token[:, None] * hidden + offs_h[None, :]
    tl.atomic_add(sum_ptrs, acc, mask=omask, sem="relaxed")
    tl.debug_barrier()  # every thread's adds precede this program's counter release
    done = tl.atomic_add(counter_ptr + token * num_tiles_h + pid_n, 1, mask=valid, sem="acq_rel")
    last = valid & (done == slots - 1)
    fmask = last[:, None] & hmask[None, :]
    total = tl.load(sum_ptrs, mask=fmask, other=0.0, volatile=True)
    out_ptrs = out_ptr + token[:, None] * stride_om + offs_h[None, :]
    tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=fmask)
