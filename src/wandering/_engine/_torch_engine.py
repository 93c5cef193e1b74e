"""Pure-PyTorch chunked engine (any device): memory O(chunk x d x K).

Forward keeps only the inputs; backward recomputes each chunk of points, so
autograd never holds an (n_smps, K) tensor.
"""

from __future__ import annotations

import torch

# Elements of the (chunk, d, K) temporaries per chunk: ~16 MB at float32.
_CHUNK_ELEMS = 1 << 22


def _chunk_rows(d: int, K: int) -> int:
    return max(1, _CHUNK_ELEMS // max(1, d * K))


def _chunk_terms(xc, c, w, half):
    """z (chunk, d, K), e (chunk, K) with dead pairs (outside support or underflowed) set to 0."""
    diff = xc[:, :, None] - c[None]
    live_sup = None
    if half is not None:
        live_sup = (diff.abs() < half[None]).all(dim=1)
    z = diff / w[None]
    s = (z * z).sum(dim=1)
    e = torch.exp(-s)
    live = e > 0
    if live_sup is not None:
        live &= live_sup
    e = torch.where(live, e, torch.zeros_like(e))
    z = torch.where(live[:, None, :], z, torch.zeros_like(z))  # no inf*0 in backward
    return z, e, live


class _ChunkedBumpSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, c, w, m, half):
        ctx.save_for_backward(x, c, w, m)
        ctx.half = half
        n, d = x.shape
        y = torch.empty(n, dtype=x.dtype, device=x.device)
        step = _chunk_rows(d, m.shape[0])
        for i0 in range(0, n, step):
            _, e, _ = _chunk_terms(x[i0 : i0 + step], c, w, half)
            y[i0 : i0 + step] = e @ m
        return y

    @staticmethod
    def backward(ctx, gy):
        x, c, w, m = ctx.saved_tensors
        half = ctx.half
        n, d = x.shape
        acc = torch.float64 if x.dtype in (torch.float32, torch.float64) else x.dtype
        gc = torch.zeros(c.shape, dtype=acc, device=x.device)
        gw = torch.zeros(w.shape, dtype=acc, device=x.device)
        gm = torch.zeros(m.shape, dtype=acc, device=x.device)
        need_x = ctx.needs_input_grad[0]
        gx = torch.zeros_like(x) if need_x else None
        # Dead pairs have z == 0 and e == 0, so 1/w stays finite for them;
        # live pairs only ever divide by a width that produced a finite z.
        w_safe = torch.where(w != 0, w, torch.ones_like(w))
        step = _chunk_rows(d, m.shape[0])
        with torch.no_grad():
            for i0 in range(0, n, step):
                z, e, _ = _chunk_terms(x[i0 : i0 + step], c, w, half)
                g = gy[i0 : i0 + step]
                ge = g[:, None] * e  # (chunk, K)
                gm += ge.sum(dim=0).to(acc)
                a = (2.0 * ge * m[None])[:, None, :] * z / w_safe[None]  # (chunk, d, K)
                gc += a.sum(dim=0).to(acc)
                gw += (a * z).sum(dim=0).to(acc)
                if need_x:
                    gx[i0 : i0 + step] = -a.sum(dim=2)
        return gx, gc.to(c.dtype), gw.to(w.dtype), gm.to(m.dtype), None


def bump_sum_torch(x, c, w, m, half):
    """Chunked bump sum; ``half`` is the support half-width tensor or None (exact)."""
    return _ChunkedBumpSum.apply(x, c, w, m, half)
