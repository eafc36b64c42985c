"""Adafactor (Shazeer and Stern, 2018): factored second moments."""

import math

import numpy as np

from ..hparams import Hyper
from ..kernels import PARALLEL_MIN_SIZE, kernel, prange
from .base import Optimizer
from .layout import Slot

#: a row is summed in spans of this many elements in the parameters' dtype, the spans in float64
_SPAN = 512
#: column sums are accumulated over strips of this many rows in the parameters' dtype, the strips in float64
_STRIP = 16


@kernel(fastmath={"reassoc"})
def _row_sums(p, g, b, i, eps1, zero):
    """sum(g^2 + eps1) and sum(p^2) over row (b, i), as float64.

    Each span is summed in the parameters' dtype, which ``reassoc`` lets LLVM split across SIMD
    lanes (a float64 sum of float32 terms spends most of its time converting them); a span is short,
    so the rounding stays that of a few terms. The row is indexed, not sliced: a view per row costs
    two atomic reference counts, which the threads contend for."""
    s = 0.0
    sq = 0.0
    n = g.shape[2]
    for start in range(0, n, _SPAN):
        x = zero
        y = zero
        for j in range(start, min(start + _SPAN, n)):
            x += g[b, i, j] * g[b, i, j] + eps1
            y += p[b, i, j] * p[b, i, j]
        s += x
        sq += y
    return s, sq


@kernel
def _factored_stats(p, g, r, col_sum, col_w, strip_sum, strip_w, p_sq, out, blocks, b2t, one_minus_b2t, eps1):
    """Pass 1 over p, g (B, R, C), a block of rows at a time: R <- b2 R + (1 - b2) mean_cols(G),
    and per block its partial column sums of G and of g^2 / R_i, and its sum of p^2 (float64).

    Blocks of rows (``blocks`` per matrix) write their own partial rows, so the column sums walk
    memory row by row and the threads never share an accumulator. ``out`` holds one element of
    the parameters' dtype per block: a value stored there is rounded to that dtype, as Keras's mean.
    """
    nb, nr, nc = p.shape
    zero = eps1 - eps1  # 0 in the parameters' dtype
    for k in prange(nb * blocks):
        b = k // blocks
        kb = k % blocks
        for j in range(nc):
            col_sum[k, j] = 0.0
            col_w[k, j] = 0.0
        sq = 0.0
        first, last = kb * nr // blocks, (kb + 1) * nr // blocks
        for start in range(first, last, _STRIP):
            for j in range(nc):
                strip_sum[k, j] = zero
                strip_w[k, j] = zero
            for i in range(start, min(start + _STRIP, last)):
                s, q = _row_sums(p, g, b, i, eps1, zero)
                sq += q
                out[k] = s / nc
                r[b, i] = b2t * r[b, i] + one_minus_b2t * out[k]
                # u^2 = g^2 / v = g^2 mean(R) / (R_i C_j): its sum needs only these column sums
                out[k] = 1.0 / r[b, i]
                inv_r = out[k]
                for j in range(nc):
                    strip_sum[k, j] += g[b, i, j] * g[b, i, j] + eps1
                    strip_w[k, j] += (g[b, i, j] * inv_r) * g[b, i, j]
            for j in range(nc):
                col_sum[k, j] += strip_sum[k, j]
                col_w[k, j] += strip_w[k, j]
        p_sq[k] = sq


@kernel
def _factored_step(p, g, r, c, col_sum, col_w, p_sq, out, r_mean, blocks, one, b2t, one_minus_b2t, eps2, rho, clip):
    """Pass 2 over p, g after ``_factored_stats``: C from the partial sums, then
    p <- p - alpha (g / sqrt(v)) / denom with v = (R_i / mean(R)) C_j computed on the fly."""
    nb, nr, nc = p.shape
    u_sq = 0.0
    for b in range(nb):
        s = 0.0
        for i in range(nr):
            s += r[b, i]
        out[0] = s / nr
        r_mean[b] = out[0]
        for j in range(nc):
            s = 0.0
            w = 0.0
            for kb in range(blocks):
                s += col_sum[b * blocks + kb, j]
                w += col_w[b * blocks + kb, j]
            out[0] = s / nr
            c[b, j] = b2t * c[b, j] + one_minus_b2t * out[0]
            u_sq += w * r_mean[b] / c[b, j]  # sum over column j of g^2 mean(R) / (R_i C_j)
    sq = 0.0
    for k in range(p_sq.shape[0]):
        sq += p_sq[k]
    n = nb * nr * nc
    out[0] = math.sqrt(sq / n)
    alpha = max(eps2, out[0]) * rho
    out[0] = math.sqrt(u_sq / n) / clip
    denom = max(one, out[0])
    for row in prange(nb * nr):
        b = row // nr
        i = row % nr
        rr = r[b, i] / r_mean[b]
        if denom == one:  # u / 1 == u: skip a division per element
            for j in range(nc):
                p[b, i, j] -= alpha * (g[b, i, j] / math.sqrt(rr * c[b, j]))
        else:
            for j in range(nc):
                p[b, i, j] -= alpha * ((g[b, i, j] / math.sqrt(rr * c[b, j])) / denom)


@kernel(parallel=False)
def _adafactor_vector(p, g, v, out, one, b2t, one_minus_b2t, eps1, eps2, rho, clip):
    n = p.shape[0]
    p_sq = 0.0
    u_sq = 0.0
    for i in range(n):
        p_sq += p[i] * p[i]
        v[i] = b2t * v[i] + one_minus_b2t * (g[i] * g[i] + eps1)
        u = g[i] / math.sqrt(v[i])
        u_sq += u * u
    out[0] = math.sqrt(p_sq / n)
    alpha = max(eps2, out[0]) * rho
    out[0] = math.sqrt(u_sq / n) / clip
    denom = max(one, out[0])
    for i in range(n):
        p[i] -= alpha * ((g[i] / math.sqrt(v[i])) / denom)


def _rows(shape):
    return int(np.prod(shape[:-1])) if len(shape) >= 2 else 0


def _cols(shape):
    return int(np.prod(shape[:-2])) * shape[-1] if len(shape) >= 2 else 0


def _unfactored(shape):
    return int(np.prod(shape)) if len(shape) < 2 else 0


def _blocks(rows: int, cols: int) -> int:
    """Row blocks per matrix in the statistics pass: at least 16K elements each (a parallel
    chunk's worth), at most 64. Fixed by the shape alone, so results do not depend on the thread count."""
    return max(1, min(64, rows, rows * cols // 16384))


class Adafactor(Optimizer):
    r"""Adafactor: second moments stored as row and column averages for matrices.

    With :math:`t` the step, :math:`\hat\beta_{2,t} = 1 - t^{d}` (``beta_2_decay`` :math:`d`),
    :math:`\rho_t = \min(\eta, 1/\sqrt t)` and :math:`\alpha_t = \max(\epsilon_2, \operatorname{RMS}(p))\,\rho_t`:

    .. math::
        G &= g^2 + \epsilon_1 \\
        R &\leftarrow \hat\beta_{2,t} R + (1-\hat\beta_{2,t}) \operatorname{mean}_{cols} G, \quad
        C \leftarrow \hat\beta_{2,t} C + (1-\hat\beta_{2,t}) \operatorname{mean}_{rows} G \\
        v &= \frac{R}{\operatorname{mean}(R)} \otimes C
             \quad (\text{tensors of rank} < 2: v \leftarrow \hat\beta_{2,t} v + (1-\hat\beta_{2,t}) G) \\
        u &= g / \sqrt v, \qquad p \leftarrow p - \alpha_t\, u / \max(1, \operatorname{RMS}(u)/d_{clip})

    For rank > 2 the last two axes are factored and the leading axes batched.
    As in Keras, the learning rate only enters through :math:`\rho_t` and ``relative_step`` changes nothing
    beyond that. Unlike Keras, which keeps ``v`` at full size, optlab never stores a factored
    parameter's ``v``: the step recomputes it element by element from :math:`R` and :math:`C` (the
    paper's sublinear memory), so an ``(r, c)`` matrix keeps :math:`r + c` numbers of state and the
    ``velocity`` slot holds the tensors of rank < 2 alone. A step makes two parallel passes over ``p``
    and ``g``: the statistics (with :math:`\sum u^2 = \operatorname{mean}(R) \sum_j C_j^{-1} \sum_i g_{ij}^2 / R_i`,
    from per-column sums), then the update. A state saved when ``v`` was stored at full size still
    loads: that ``v`` was a function of :math:`R` and :math:`C`, overwritten before being read, and is dropped.
    Reference: Shazeer and Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
    arXiv:1804.04235.
    """

    registry_name = "adafactor"
    beta_2_decay = Hyper(-0.8, high=0.0, doc="exponent d of the second-moment decay 1 - t^d")
    epsilon_1 = Hyper(1e-30, low=0.0, low_open=True, doc="added to the squared gradient")
    epsilon_2 = Hyper(1e-3, low=0.0, doc="lower bound of the parameter RMS in the step size")
    clip_threshold = Hyper(1.0, low=0.0, low_open=True, doc="threshold d_clip of the update RMS")
    relative_step = Hyper(True, kind=bool, doc="cap the learning rate at 1/sqrt(t)")

    def slots(self):
        # averages of g^2 + epsilon_1 over the rows and columns of matrices; v for tensors of rank < 2
        return {
            "row": Slot(0.0, _rows, nonnegative=True),
            "col": Slot(0.0, _cols, nonnegative=True),
            "velocity": Slot(0.0, _unfactored, nonnegative=True),
        }

    def set_state(self, meta, arrays, *, restore_learning_rate=False):
        """``Optimizer.set_state``, which also takes a state saved with a full-size ``v`` (see above)."""
        arrays = _without_factored_velocity(meta, arrays)
        super().set_state(meta, arrays, restore_learning_rate=restore_learning_rate)

    def _factor_scratch(self, nb: int, blocks: int, nc: int, dtype) -> tuple:
        """Per-block partial sums and rounding cells for one matrix shape, kept across steps."""
        cache = self.__dict__.setdefault("_factor_scratches", {})
        key = (nb, blocks, nc, np.dtype(dtype))
        if key not in cache:
            k = nb * blocks
            cache[key] = (
                np.empty((k, nc)),  # partial column sums of G
                np.empty((k, nc)),  # partial column sums of g^2 / R_i
                np.empty((k, nc), dtype),  # the same over a strip of rows, in the parameters' dtype
                np.empty((k, nc), dtype),
                np.empty(k),  # partial sums of p^2
                np.empty(k, dtype),  # one rounding cell per block
                np.empty(nb, dtype),  # mean(R) per matrix
            )
        return cache[key]

    def update(self, param, grad, state, lr, step, seg):
        dt = param.dtype.type
        one, t = dt(1.0), dt(step)
        rho = dt(min(lr, one / dt(math.sqrt(t))))
        b2t = one - t ** dt(self.beta_2_decay)
        decay = (b2t, one - b2t)
        eps1, eps2, clip = dt(self.epsilon_1), dt(self.epsilon_2), dt(self.clip_threshold)
        rows, cols = seg.views(state["row"], "row"), seg.views(state["col"], "col")
        vs = seg.views(state["velocity"], "velocity")
        cell = np.empty(1, param.dtype)
        for p, g, r, c, v, shape in zip(seg.views(param), seg.views(grad), rows, cols, vs, seg.shapes):
            if len(shape) < 2:
                _adafactor_vector(p.reshape(-1), g.reshape(-1), v, cell, one, *decay, eps1, eps2, rho, clip)
                continue
            if p.size == 0:
                continue
            nb, nr, nc = int(np.prod(shape[:-2])), shape[-2], shape[-1]
            blocks = _blocks(nr, nc)
            col_sum, col_w, strip_sum, strip_w, p_sq, out, r_mean = self._factor_scratch(nb, blocks, nc, param.dtype)
            p3, g3, r2, c2 = p.reshape(nb, nr, nc), g.reshape(nb, nr, nc), r.reshape(nb, nr), c.reshape(nb, nc)
            parallel = p.size >= PARALLEL_MIN_SIZE  # chosen here: the kernels' first axis is the batch
            stats = _factored_stats.parallel if parallel else _factored_stats.serial
            stats(p3, g3, r2, col_sum, col_w, strip_sum, strip_w, p_sq, out, blocks, *decay, eps1)
            apply = _factored_step.parallel if parallel else _factored_step.serial
            apply(p3, g3, r2, c2, col_sum, col_w, p_sq, out, r_mean, blocks, one, *decay, eps2, rho, clip)


def _without_factored_velocity(meta, arrays):
    """``arrays`` with a full-size ``slot/velocity`` (a state saved when factored parameters kept
    their ``v``) cut to the parameters of rank < 2. Nothing is lost: that ``v`` was
    ``(R / mean(R)) outer C``, recomputed from ``R`` and ``C`` at every step before being read.
    Anything else is passed on as it is, for ``set_state`` to validate."""
    try:
        shapes = [tuple(int(d) for d in s) for s in meta["shapes"]]
        velocity = arrays["slot/velocity"]
        full = sum(math.prod(s) for s in shapes)
        if not meta.get("built") or velocity.shape != (full,) or all(len(s) < 2 for s in shapes):
            return arrays
    except (TypeError, KeyError, ValueError, AttributeError):
        return arrays  # not the old layout: set_state says what is wrong
    offsets = np.cumsum([0] + [math.prod(s) for s in shapes])
    kept = [velocity[offsets[k] : offsets[k + 1]] for k, s in enumerate(shapes) if len(s) < 2]
    return {**arrays, "slot/velocity": np.concatenate(kept) if kept else velocity[:0]}
