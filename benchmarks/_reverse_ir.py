"""The tile backward's reverse sweep for four states, written in LLVM IR (a variant of
``benchmarks/backward_knockouts.py``, not part of the library).

``fast.numba_tiles._tile_bwd_reverse`` keeps dLoss/dh and the dA sum of each state in
memory (the loop over states has a run-time trip count), three vector stores per update.
Here the loop over time carries them for states n0 .. n0 + 3 in registers (phi nodes), so
that an update stores only its lane of dB; the arithmetic is the same (eq-selective-backward):

    gn = g + dy_t C_t[n];  ga = gn Abar_t h_{t-1};  sdA += ga dt_t;  dB lanes += gn bu_t
    g = gn Abar_t;         pA_t += ga A[n];         pB_t += gn B_t[n]

Arrays as in ``bwd_tiles`` (float32, rows of 16 lanes); ``N`` must be a multiple of 4.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["reverse_block4"]

W = 16
K = 4


def _arr(context, builder, aryty, ary):
    arr = context.make_array(aryty)(context, builder, ary)
    i64 = ir.IntType(64)
    base = builder.ptrtoint(arr.data, i64)
    strides = [builder.extract_value(arr.strides, i) for i in range(aryty.ndim)]
    return base, strides


@intrinsic
def reverse_block4(typingctx, dt, bu, dy, a, g, sdA, abar, ah, dBl, pA, pB, B_row, C_row,
                   L, n0, add):
    """Steps L - 1 ... 0 of the reverse sweep for states n0 .. n0 + 3; ``pA``, ``pB``
    written (or added to, if ``add``); g and sdA of the four states read and written back."""
    sig = types.void(dt, bu, dy, a, g, sdA, abar, ah, dBl, pA, pB, B_row, C_row,
                     types.intp, types.intp, types.boolean)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        vty = ir.VectorType(f32, W)
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        (dt_, bu_, dy_, a_, g_, sdA_, abar_, ah_, dBl_, pA_, pB_, B_, C_, L_, n0_, add_) = args
        tys = signature.args
        A = {name: _arr(context, builder, tys[i], v) for i, (name, v) in enumerate(
            [("dt", dt_), ("bu", bu_), ("dy", dy_), ("a", a_), ("g", g_), ("sdA", sdA_),
             ("abar", abar_), ("ah", ah_), ("dBl", dBl_), ("pA", pA_), ("pB", pB_),
             ("B", B_), ("C", C_)])}
        L_ = context.cast(builder, L_, tys[13], types.int64)
        n0_ = context.cast(builder, n0_, tys[14], types.int64)
        add_ = context.cast(builder, add_, tys[15], types.boolean)

        def c64(v):
            return ir.Constant(i64, v)

        def addr(name, *idx):
            base, strides = A[name]
            off = base
            for ix, st in zip(idx, strides):
                off = builder.add(off, builder.mul(ix, st))
            return off

        def vload(a_int):
            return builder.load(builder.inttoptr(a_int, vty.as_pointer()), align=4)

        def vstore(v, a_int):
            builder.store(v, builder.inttoptr(a_int, vty.as_pointer()), align=4)

        def sload(a_int):
            return builder.load(builder.inttoptr(a_int, f32.as_pointer()), align=4)

        def splat(x):
            v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(i32, 0))
            return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                          ir.Constant(ir.VectorType(i32, W), [0] * W))

        fma_fn = builder.module.globals.get("llvm.fma.v16f32")
        if fma_fn is None:
            fma_fn = ir.Function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                 name="llvm.fma.v16f32")

        def fma(x, y, z):
            return builder.call(fma_fn, [x, y, z])

        ns = [builder.add(n0_, c64(k)) for k in range(K)]
        zero_i = c64(0)
        g0 = [vload(addr("g", n, zero_i)) for n in ns]
        s0 = [vload(addr("sdA", n, zero_i)) for n in ns]
        av = [vload(addr("a", n, zero_i)) for n in ns]
        entry = builder.block
        loop = builder.append_basic_block("rev_loop")
        done = builder.append_basic_block("rev_done")
        builder.cbranch(builder.icmp_signed(">", L_, zero_i), loop, done)
        builder.position_at_end(loop)
        i_phi = builder.phi(i64)
        i_phi.add_incoming(zero_i, entry)
        g_phi = [builder.phi(vty) for _ in range(K)]
        s_phi = [builder.phi(vty) for _ in range(K)]
        for k in range(K):
            g_phi[k].add_incoming(g0[k], entry)
            s_phi[k].add_incoming(s0[k], entry)
        t = builder.sub(builder.sub(L_, c64(1)), i_phi)
        dtv = vload(addr("dt", t, zero_i))
        buv = vload(addr("bu", t, zero_i))
        dyv = vload(addr("dy", t, zero_i))
        zero_v = ir.Constant(vty, [0.0] * W)
        accA, accB = zero_v, zero_v
        g_new, s_new = [], []
        for k in range(K):
            cn = splat(sload(addr("C", t, ns[k])))
            bn = splat(sload(addr("B", t, ns[k])))
            gn = fma(dyv, cn, g_phi[k])
            ga = builder.fmul(gn, vload(addr("ah", t, ns[k], zero_i)))
            s_new.append(fma(ga, dtv, s_phi[k]))
            pdb = addr("dBl", t, ns[k], zero_i)
            vstore(fma(gn, buv, vload(pdb)), pdb)
            g_new.append(builder.fmul(gn, vload(addr("abar", t, ns[k], zero_i))))
            accA = fma(ga, av[k], accA)
            accB = fma(gn, bn, accB)
        ppa = addr("pA", t, zero_i)
        ppb = addr("pB", t, zero_i)
        oldA = builder.select(add_, vload(ppa), zero_v)
        oldB = builder.select(add_, vload(ppb), zero_v)
        vstore(builder.fadd(oldA, accA), ppa)
        vstore(builder.fadd(oldB, accB), ppb)
        i_next = builder.add(i_phi, c64(1))
        i_phi.add_incoming(i_next, builder.block)
        for k in range(K):
            g_phi[k].add_incoming(g_new[k], builder.block)
            s_phi[k].add_incoming(s_new[k], builder.block)
        builder.cbranch(builder.icmp_signed("<", i_next, L_), loop, done)
        builder.position_at_end(done)
        g_out = [builder.phi(vty) for _ in range(K)]
        s_out = [builder.phi(vty) for _ in range(K)]
        for k in range(K):
            g_out[k].add_incoming(g0[k], entry)
            g_out[k].add_incoming(g_new[k], loop)
            s_out[k].add_incoming(s0[k], entry)
            s_out[k].add_incoming(s_new[k], loop)
            vstore(g_out[k], addr("g", ns[k], zero_i))
            vstore(s_out[k], addr("sdA", ns[k], zero_i))
        return context.get_dummy_value()
    return sig, codegen
