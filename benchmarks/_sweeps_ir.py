"""The tile backward's two sweeps for blocks of states, written in LLVM IR (variants of
``benchmarks/backward_knockouts.py``, not part of the library).

``fast.numba_tiles._tile_bwd_forward`` and ``_tile_bwd_reverse`` keep each state's h,
dLoss/dh and dA sum in memory (the loop over states has a run-time trip count): a load and
a store per update and per quantity.  Here the loop over time carries them for states
n0 .. n0 + K - 1 in registers (phi nodes), so that an update stores only what the other
sweep reads (its records) and its lanes of dB or dC.  The arithmetic is the tile kernel's:

forward sweep (:func:`forward_block4`, :func:`forward_block8`; the rows' exponential
``fast_exp2_normal``)::

    Abar = 2^(dt_t a2[n]);  ah = Abar h;  h = ah + bu_t B_t[n]
    records Abar, ah;       dC lanes += dy_t h;  y_t += h C_t[n]

reverse sweep (:func:`reverse_block4`, eq-selective-backward)::

    gn = g + dy_t C_t[n];  ga = gn ah_t;  sdA += ga dt_t;  dB lanes += gn bu_t
    g = gn Abar_t;         pA_t += ga A[n];         pB_t += gn B_t[n]

Arrays as in ``bwd_tiles`` (float32, rows of 16 lanes); ``N`` must be a multiple of K.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from fast._row_sweep import Vectors

__all__ = ["forward_block4", "forward_block8", "reverse_block4"]

W = 16  # lanes: channels of a tile
_VTY = ir.VectorType(ir.FloatType(), W)


class _Builder(Vectors):
    """:class:`fast._row_sweep.Vectors` in float32, and the arguments ``L``, ``n0``, ``add``
    of the sweeps below."""

    def __init__(self, context, builder, names, tys, args):
        super().__init__(context, builder, types.float32, names, tys, args)

    @classmethod
    def start(cls, context, builder, signature, args, K, names):
        """The builder for an intrinsic whose arguments are the arrays ``names`` and then
        ``L``, ``n0`` and ``add``: ``(builder, L, [n0 .. n0 + K - 1], add)`` as LLVM values."""
        tys, m = signature.args, len(names)
        x = cls(context, builder, names, tys[:m], args[:m])
        L, n0 = (context.cast(builder, args[i], tys[i], types.int64) for i in (m, m + 1))
        add = context.cast(builder, args[m + 2], tys[m + 2], types.boolean)
        return x, L, [builder.add(n0, x.c64(k)) for k in range(K)], add

    def add_or_write(self, acc, add, name, *idx):
        """``name[idx] = acc``, or ``+= acc`` if ``add``."""
        zero_v = ir.Constant(_VTY, [0.0] * W)
        old = self.b.select(add, self.load(name, *idx), zero_v)
        self.store(self.fadd(old, acc), name, *idx)


def _reverse(K):
    @intrinsic
    def reverse(typingctx, dt, bu, dy, a, g, sdA, abar, ah, dBl, pA, pB, B_row, C_row,
                L, n0, add):
        """Steps L - 1 ... 0 of the reverse sweep for states n0 .. n0 + K - 1; ``pA``, ``pB``
        written (or added to, if ``add``); g and sdA of the K states read and written back."""
        sig = types.void(dt, bu, dy, a, g, sdA, abar, ah, dBl, pA, pB, B_row, C_row,
                         types.intp, types.intp, types.boolean)

        def codegen(context, builder, signature, args):
            x, L_, ns, add_ = _Builder.start(
                context, builder, signature, args, K,
                ["dt", "bu", "dy", "a", "g", "sdA", "abar", "ah", "dBl", "pA", "pB", "B", "C"])
            zero = x.c64(0)
            av = [x.load("a", n, zero) for n in ns]

            def body(i, phis):
                gs, ss = phis[:K], phis[K:]
                t = builder.sub(builder.sub(L_, x.c64(1)), i)
                dtv, buv, dyv = (x.load(name, t, zero) for name in ("dt", "bu", "dy"))
                accA = accB = ir.Constant(_VTY, [0.0] * W)
                g_new, s_new = [], []
                for k, n in enumerate(ns):
                    gn = x.fma(dyv, x.broadcast("C", t, n), gs[k])
                    ga = x.fmul(gn, x.load("ah", t, n, zero))
                    s_new.append(x.fma(ga, dtv, ss[k]))
                    x.store(x.fma(gn, buv, x.load("dBl", t, n, zero)), "dBl", t, n, zero)
                    g_new.append(x.fmul(gn, x.load("abar", t, n, zero)))
                    accA = x.fma(ga, av[k], accA)
                    accB = x.fma(gn, x.broadcast("B", t, n), accB)
                x.add_or_write(accA, add_, "pA", t, zero)
                x.add_or_write(accB, add_, "pB", t, zero)
                return g_new + s_new

            carried = ([x.load("g", n, zero) for n in ns]
                       + [x.load("sdA", n, zero) for n in ns])
            out = x.loop(L_, carried, body, "rev_loop")
            for k, n in enumerate(ns):
                x.store(out[k], "g", n, zero)
                x.store(out[K + k], "sdA", n, zero)
            return context.get_dummy_value()
        return sig, codegen
    return reverse


def _forward(K):
    @intrinsic
    def forward(typingctx, dt, bu, dy, a2, h, y, abar, ah, dCl, B_row, C_row, terms, L, n0,
                add):
        """Steps 0 ... L - 1 of the backward's forward sweep for states n0 .. n0 + K - 1,
        every ``dt a2`` in [-125, 0] (``fast_exp2_normal``); ``y`` written (or added to, if
        ``add``); h of the K states read and written back.  ``terms``: a float32 array of
        ``fast._fastexp.exp2_terms``."""
        sig = types.void(dt, bu, dy, a2, h, y, abar, ah, dCl, B_row, C_row, terms,
                         types.intp, types.intp, types.boolean)

        def codegen(context, builder, signature, args):
            x, L_, ns, add_ = _Builder.start(
                context, builder, signature, args, K,
                ["dt", "bu", "dy", "a2", "h", "y", "abar", "ah", "dCl", "B", "C", "terms"])
            zero = x.c64(0)
            a2v = [x.load("a2", n, zero) for n in ns]
            consts = [x.broadcast("terms", x.c64(i)) for i in range(8)]

            def exp2(v):  # fast_exp2_normal, operation for operation
                return x.exp2(v, consts, True)

            def body(t, hs):
                dtv, buv, dyv = (x.load(name, t, zero) for name in ("dt", "bu", "dy"))
                acc = ir.Constant(_VTY, [0.0] * W)
                h_new = []
                for k, n in enumerate(ns):
                    e = exp2(x.fmul(dtv, a2v[k]))
                    ahv = x.fmul(e, hs[k])
                    hv = x.fma(buv, x.broadcast("B", t, n), ahv)
                    x.store(e, "abar", t, n, zero)
                    x.store(ahv, "ah", t, n, zero)
                    x.store(x.fma(dyv, hv, x.load("dCl", t, n, zero)), "dCl", t, n, zero)
                    acc = x.fma(hv, x.broadcast("C", t, n), acc)
                    h_new.append(hv)
                x.add_or_write(acc, add_, "y", t, zero)
                return h_new

            out = x.loop(L_, [x.load("h", n, zero) for n in ns], body, "fwd_loop")
            for k, n in enumerate(ns):
                x.store(out[k], "h", n, zero)
            return context.get_dummy_value()
        return sig, codegen
    return forward


#: K states per block: the reverse sweep carries 2K vectors (g, the dA sum), the forward
#: sweep K states and K poles
reverse_block4 = _reverse(4)
forward_block4 = _forward(4)
forward_block8 = _forward(8)
