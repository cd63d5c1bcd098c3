"""The textbook backward pass on NumPy arrays, laid out for a CPU (the fast path of ``attention_backward``).

The same five lines as the reference in ``attn_course/backward.py``
(``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - rowsum(dP * P))``,
``dQ = dS K * scale``, ``dK = dS^T Q * scale``), arranged for a CPU:

* **Threads over batch elements and heads.** Each head is one job
  (``threads.parallel_for``): it owns its rows of ``dq`` and its own ``dk``,
  ``dv``, so no two threads add into the same numbers.
* **Cache-sized blocks of query rows.** A job walks its queries in blocks whose
  ``(R, S)`` scores take about 2 MiB (``dense.rows_per_block``): the weights of a
  block, its ``dP`` and ``dS`` stay in the caches through the elementwise
  passes, done in place, instead of streaming three ``(L, S)`` arrays through
  main memory. ``dK`` and ``dV`` are sums over the query rows, so each block adds
  its share. The softmax subtracts each row's maximum, as the reference does.
"""

from __future__ import annotations

import numpy as np

from .dense import PARALLEL_MIN_PAIRS, rows_per_block
from .threads import batch_index_tuples, parallel_for

__all__ = ["attention_backward"]


def attention_backward(q, k, v, grad_out, mask, scale: float, batch: tuple[int, ...]):
    """Checked NumPy inputs -> ``(dq, dk, dv)`` of shapes ``(*batch, L, d)``, ``(*batch, S, d)``, ``(*batch, S, dv)``.

    mask: None or boolean, broadcastable to (*batch, L, S) (causal already folded in).
    The results are in the compute dtype (float32 for float16 inputs); the caller
    sums them over the axes where an input was broadcast.
    """
    work = np.float32 if q.dtype == np.float16 else q.dtype
    q, k, v, grad_out = (np.asarray(x, dtype=work) for x in (q, k, v, grad_out))
    L, d = q.shape[-2:]
    S, dv = v.shape[-2:]
    queries = np.broadcast_to(q, (*batch, L, d))  # views: nothing is copied
    keys = np.broadcast_to(k, (*batch, S, d))
    values = np.broadcast_to(v, (*batch, S, dv))
    d_out = np.broadcast_to(grad_out, (*batch, L, dv))
    masks = None if mask is None else np.broadcast_to(mask, (*batch, L, S))
    d_q = np.empty((*batch, L, d), dtype=work)
    d_k = np.zeros((*batch, S, d), dtype=work)
    d_v = np.zeros((*batch, S, dv), dtype=work)
    block_rows = rows_per_block(S, np.dtype(work).itemsize)
    work_scale = np.asarray(scale, dtype=work)

    def job(index):
        q_i, k_i, v_i, do_i = queries[index], keys[index], values[index], d_out[index]
        for start in range(0, L, block_rows):
            rows = slice(start, min(L, start + block_rows))
            p = (q_i[rows] * work_scale) @ k_i.T  # (R, S): the scores, becoming the weights P in place
            if masks is not None:
                np.copyto(p, -np.inf, where=~masks[index][rows])
            row_max = p.max(axis=1, keepdims=True)  # (R, 1)
            row_max[~np.isfinite(row_max)] = 0.0  # a row with nothing allowed: exp(-inf) = 0, not NaN
            np.subtract(p, row_max, out=p)
            np.exp(p, out=p)
            totals = p.sum(axis=1, keepdims=True)
            totals[totals == 0] = 1.0
            p /= totals  # (R, S): P
            d_v[index] += p.T @ do_i[rows]  # (S, dv): dV = P^T dO, this block's share
            d_s = do_i[rows] @ v_i.T  # (R, S): dP = dO V^T
            d_s -= np.sum(d_s * p, axis=1, keepdims=True)  # dP - rowsum(dP * P)
            d_s *= p  # (R, S): dS
            np.matmul(d_s, k_i, out=d_q[index][rows])  # (R, d)
            d_q[index][rows] *= work_scale
            d_k[index] += (d_s.T @ q_i[rows]) * work_scale  # (S, d)

    total_pairs = L * S * int(np.prod(batch, dtype=np.int64))
    parallel_for(job, batch_index_tuples(batch), parallel=total_pairs >= PARALLEL_MIN_PAIRS)
    return d_q, d_k, d_v
