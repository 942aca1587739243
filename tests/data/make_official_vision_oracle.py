"""Make the official-vision oracles in ``tests/data/official_vision/``.

Runs the official model classes of hustvl/Vim (``vim/models_mamba.py``, ``VisionMamba``) and
MzeroMiko/VMamba (``classification/models/vmamba.py``, ``VSSM`` with the v0 flags, and the
archived v0 code of branch ``20240128-achieve``) unmodified on the CPU, in float32 and eval mode,
with tiny random weights, and writes for each case a directory with

- ``model.safetensors``  the state dict under the official key names,
- ``model.pth``          (Vim cases only) ``torch.save({"model": state_dict})`` as the official
                         training scripts save checkpoints,
- ``config.json``        the constructor keyword arguments and what was run,
- ``oracle.npz``         the input images, as (B, C, H, W) and as (B, H, W, C), the logits and the
                         intermediates recorded with forward hooks.

The official code calls compiled CUDA/Triton kernels. This script replaces exactly those with
stand-ins written here in PyTorch and injected through ``sys.modules`` before the official code is
imported:

- ``selective_scan_cuda.fwd``            (the selective-scan kernel of mamba_ssm; VMamba's v0 path
                                          calls the same module),
- ``causal_conv1d_cuda.causal_conv1d_fwd`` (the causal depthwise conv kernel),
- ``mamba_ssm.ops.triton.layer_norm._layer_norm_fwd`` (the launcher of the Triton add+norm
                                          kernel; the official ``LayerNormFn``, ``rms_norm_fn``,
                                          ``layer_norm_fn`` and ``RMSNorm`` above it run as
                                          written).

Two compatibility shims touch no computation: ``transformers.generation`` gets the two output
class names that mamba_ssm 1.1.1's text-generation helper imports (removed in transformers 5), and
nothing else is changed. The stand-ins are checked against the official pure-PyTorch references
(``selective_scan_ref``, ``causal_conv1d_ref``, ``rms_norm_ref``, ``layer_norm_ref``, VMamba's
``selective_scan_torch``) before any model runs; each model runs twice and must give the same
logits; the two VMamba code versions must agree; every state-dict entry must move the logits; and
a NumPy float64 forward written from README.md alone (``numpy_readme_check``) must reproduce
every case from the saved files.

Run once (needs torch, timm, einops, safetensors, transformers, triton importable, fvcore)::

    # the sources, e.g. with git (or any snapshot of the same commits):
    git clone https://github.com/hustvl/Vim /tmp/vim_src            # at dd0358a
    git clone https://github.com/MzeroMiko/VMamba /tmp/vmamba_src    # at 2ed52ea
    git -C /tmp/vmamba_src show 40678b8:classification/models/vmamba/vmamba.py \\
        > /tmp/vmamba_v0_archive.py
    python tests/data/make_official_vision_oracle.py --vim /tmp/vim_src \\
        --vmamba /tmp/vmamba_src --vmamba-archive /tmp/vmamba_v0_archive.py

None of the fetched code is copied into this repository.
"""

import argparse
import json
import os
import sys
import types

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_vision")


# ---------------------------------------------------------------------------------------------
# Stand-in kernels (our code, PyTorch). Each mirrors the forward of the compiled kernel it
# replaces: float32 arithmetic inside, outputs in the input dtype, same return tuple.
# ---------------------------------------------------------------------------------------------

def _expand_bc(M, batch, dim, dstate, seqlen):
    """B or C as (batch, dim, dstate, seqlen) from (D, N), (B, N, L) or grouped (B, G, N, L)."""
    import torch  # noqa: PLC0415
    if M.dim() == 2:                                   # (D, N) constant over time
        return M.float()[None, :, :, None].expand(batch, dim, dstate, seqlen)
    if M.dim() == 3:                                   # (B, N, L): one group
        M = M[:, None]
    groups = M.shape[1]                                # channel d uses group d // (dim // groups)
    return torch.repeat_interleave(M.float(), dim // groups, dim=1)   # (B, D, N, L)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Stand-in for ``selective_scan_cuda.fwd`` (mamba_ssm csrc/selective_scan).

    u, delta, z: (B, D, L); A: (D, N) real; B, C: (D, N) or (B, N, L) or (B, G, N, L);
    D, delta_bias: (D,). Returns ``[out, x]`` or ``[out, x, out_z]`` like the kernel:
    out = y + D*u (B, D, L) in u's dtype, out_z = out * silu(z), and x (B, D, n_chunks, 2N) the
    per-chunk scan carries (product of exp(delta*A), state) interleaved, so that
    ``x[:, :, -1, 1::2]`` is the last state as ``SelectiveScanFn`` reads it.
    """
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415
    if A.is_complex():
        raise NotImplementedError("stand-in selective scan: complex A is not needed here")
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    dtype_in = u.dtype
    u32 = u.float()
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = torch.where(dt <= 20.0, torch.log1p(torch.exp(dt)), dt)   # kernel: linear above 20
    A32 = A.float()
    Bf = _expand_bc(B, batch, dim, dstate, seqlen)
    Cf = _expand_bc(C, batch, dim, dstate, seqlen)
    h = torch.zeros(batch, dim, dstate, dtype=torch.float32)
    a_run = torch.ones(batch, dim, dstate, dtype=torch.float32)
    chunk = 2048                                       # kChunkSize of the kernel
    carries = []
    ys = []
    for t in range(seqlen):
        dA = torch.exp(dt[:, :, t, None] * A32)                        # (B, D, N)
        h = dA * h + (dt[:, :, t, None] * Bf[..., t]) * u32[:, :, t, None]
        a_run = a_run * dA
        ys.append((h * Cf[..., t]).sum(-1))                            # (B, D)
        if t % chunk == chunk - 1 or t == seqlen - 1:
            carries.append(torch.stack([a_run, h], dim=-1).reshape(batch, dim, 2 * dstate))
            a_run = torch.ones_like(a_run)
    y = torch.stack(ys, dim=-1)                                        # (B, D, L)
    if D is not None:
        y = y + D.float()[:, None] * u32
    x = torch.stack(carries, dim=2)                                    # (B, D, n_chunks, 2N)
    out = y.to(dtype_in)
    if z is None:
        return [out, x]
    out_z = (y * F.silu(z.float())).to(dtype_in)
    return [out, x, out_z]


def causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, final_states_out,
                      silu_activation):
    """Stand-in for ``causal_conv1d_cuda.causal_conv1d_fwd`` (causal-conv1d 1.4 csrc).

    x: (B, D, L); weight: (D, W); bias: (D,) or None. out[..., t] = bias + sum_k
    weight[:, k] * x[..., t - (W - 1) + k] (zeros before t = 0), then SiLU if asked.
    """
    import torch.nn.functional as F  # noqa: PLC0415
    if seq_idx is not None or initial_states is not None or final_states_out is not None:
        raise NotImplementedError("stand-in causal conv: seq_idx / states are not needed here")
    dim, width = weight.shape
    seqlen = x.shape[-1]
    out = F.conv1d(x.float(), weight.float()[:, None, :],
                   None if bias is None else bias.float(), padding=width - 1, groups=dim)
    out = out[..., :seqlen]
    if silu_activation:
        out = F.silu(out)
    return out.to(x.dtype)


def layer_norm_fwd(x, weight, bias, eps, residual=None, x1=None, weight1=None, bias1=None,
                   dropout_p=0.0, rowscale=None, out_dtype=None, residual_dtype=None,
                   is_rms_norm=False, return_dropout_mask=False):
    """Stand-in for ``_layer_norm_fwd`` of mamba_ssm/ops/triton/layer_norm.py (the Triton launch).

    x, residual: (M, N). The kernel adds the residual in float32, stores that sum as residual_out
    (in residual_dtype) when there is a residual or residual_dtype differs from x's dtype,
    normalises it (LayerNorm, or RMSNorm without mean) and writes y in out_dtype or x's dtype.
    Returns (y, y1, mean, rstd, residual_out or x, seeds, dropout_mask, dropout_mask1).
    """
    import torch  # noqa: PLC0415
    if x1 is not None or weight1 is not None or bias1 is not None or rowscale is not None \
            or dropout_p > 0.0:
        raise NotImplementedError("stand-in layer norm: x1/weight1/rowscale/dropout not needed")
    if residual is not None:
        residual_dtype = residual.dtype
    xf = x.float()
    if residual is not None:
        xf = xf + residual.float()
    store_residual = residual is not None or (residual_dtype is not None
                                              and residual_dtype != x.dtype)
    residual_out = xf.to(residual_dtype if residual_dtype is not None else x.dtype) \
        if store_residual else None
    if is_rms_norm:
        mean = None
        var = (xf * xf).mean(-1)
        rstd = 1.0 / torch.sqrt(var + eps)
        xhat = xf * rstd[:, None]
    else:
        mean = xf.mean(-1)
        xbar = xf - mean[:, None]
        var = (xbar * xbar).mean(-1)
        rstd = 1.0 / torch.sqrt(var + eps)
        xhat = xbar * rstd[:, None]
    y = xhat * weight.float()
    if bias is not None:
        y = y + bias.float()
    y = y.to(x.dtype if out_dtype is None else out_dtype)
    return (y, None, mean, rstd, residual_out if residual_out is not None else x,
            None, None, None)


def _unavailable(name):
    def fn(*args, **kwargs):
        raise NotImplementedError(f"stand-in kernel {name} is forward-only (eval oracle)")
    return fn


def install_stand_ins():
    """Put the stand-in kernel modules into sys.modules (before any official import)."""
    ss = types.ModuleType("selective_scan_cuda")
    ss.fwd = selective_scan_fwd
    ss.bwd = _unavailable("selective_scan_cuda.bwd")
    ss.__doc__ = "stand-in for the mamba_ssm CUDA extension (make_official_vision_oracle.py)"
    sys.modules["selective_scan_cuda"] = ss
    cc = types.ModuleType("causal_conv1d_cuda")
    cc.causal_conv1d_fwd = causal_conv1d_fwd
    cc.causal_conv1d_bwd = _unavailable("causal_conv1d_cuda.causal_conv1d_bwd")
    cc.causal_conv1d_update = _unavailable("causal_conv1d_cuda.causal_conv1d_update")
    cc.__doc__ = "stand-in for the causal-conv1d CUDA extension (make_official_vision_oracle.py)"
    sys.modules["causal_conv1d_cuda"] = cc
    # mamba_ssm 1.1.1's generation helper imports two names transformers 5 no longer has.
    import transformers.generation as tg  # noqa: PLC0415
    for old, new in (("GreedySearchDecoderOnlyOutput", "GenerateDecoderOnlyOutput"),
                     ("SampleDecoderOnlyOutput", "GenerateDecoderOnlyOutput")):
        if not hasattr(tg, old):
            setattr(tg, old, getattr(tg, new))


def patch_triton_layer_norm():
    import mamba_ssm.ops.triton.layer_norm as ln  # noqa: PLC0415
    ln._layer_norm_fwd = layer_norm_fwd
    return ln


# ---------------------------------------------------------------------------------------------
# Checks of the stand-ins against the official pure-PyTorch references.
# ---------------------------------------------------------------------------------------------

def _maxrel(a, b):
    import torch  # noqa: PLC0415
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def check_stand_ins(vmamba_dir):
    import torch  # noqa: PLC0415
    from causal_conv1d.causal_conv1d_interface import (  # noqa: PLC0415
        causal_conv1d_fn, causal_conv1d_ref)
    from mamba_ssm.ops.selective_scan_interface import (  # noqa: PLC0415
        mamba_inner_fn, mamba_inner_ref, selective_scan_fn, selective_scan_ref)
    ln = patch_triton_layer_norm()
    report = {}
    g = torch.Generator().manual_seed(123)

    def rn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    Bz, D, L, N = 2, 12, 23, 5
    for kind in ("const", "var3", "var4"):
        for with_z in (False, True):
            u, delta, z = rn(Bz, D, L), rn(Bz, D, L, scale=0.5), rn(Bz, D, L)
            A = -torch.exp(rn(D, N, scale=0.5))
            if kind == "const":
                Bm, Cm = rn(D, N), rn(D, N)
            elif kind == "var3":
                Bm, Cm = rn(Bz, N, L), rn(Bz, N, L)
            else:
                Bm, Cm = rn(Bz, 3, N, L), rn(Bz, 3, N, L)
            Dv, bias = rn(D), rn(D, scale=0.5)
            zz = z if with_z else None
            got, last = selective_scan_fn(u, delta, A, Bm, Cm, Dv, zz, bias, True, True)
            ref, last_ref = selective_scan_ref(u, delta, A, Bm, Cm, Dv, zz, bias, True, True)
            report[f"selective_scan_fn_vs_ref_{kind}_z{int(with_z)}"] = max(
                _maxrel(got, ref), _maxrel(last, last_ref))
    # VMamba's pure-torch scan (csms6s.selective_scan_torch), K groups of B/C.
    sys.path.insert(0, os.path.join(vmamba_dir, "classification", "models"))
    import csms6s  # noqa: PLC0415
    K, Dk = 4, 6
    u, delta = rn(Bz, K * Dk, L), rn(Bz, K * Dk, L, scale=0.5)
    A = -torch.exp(rn(K * Dk, N, scale=0.5))
    Bm, Cm, Dv, bias = rn(Bz, K, N, L), rn(Bz, K, N, L), rn(K * Dk), rn(K * Dk, scale=0.5)
    got = csms6s.selective_scan_fn(u, delta, A, Bm, Cm, Dv, bias, True, True, "mamba")
    ref = csms6s.selective_scan_torch(u, delta, A, Bm, Cm, Dv, bias, True, True)
    report["vmamba_selective_scan_fn_mamba_vs_torch"] = _maxrel(got, ref)
    # causal conv
    for act in (None, "silu"):
        x, w, b = rn(Bz, D, L), rn(D, 4), rn(D)
        report[f"causal_conv1d_fn_vs_ref_{act}"] = _maxrel(
            causal_conv1d_fn(x, w, b, activation=act), causal_conv1d_ref(x, w, b, activation=act))
    # the fused Mamba inner function (fast path) against its official unfused reference
    d_model, d_inner, rank = 8, 16, 2
    xz = rn(Bz, 2 * d_inner, L)
    args = (xz, rn(d_inner, 1, 4, scale=0.5), rn(d_inner, scale=0.1),
            rn(rank + 2 * N, d_inner, scale=0.3), rn(d_inner, rank, scale=0.5),
            rn(d_model, d_inner, scale=0.3), None, -torch.exp(rn(d_inner, N, scale=0.5)))
    kw = dict(D=rn(d_inner), delta_bias=rn(d_inner, scale=0.5), delta_softplus=True)
    report["mamba_inner_fn_vs_mamba_inner_ref"] = _maxrel(mamba_inner_fn(*args, **kw),
                                                          mamba_inner_ref(*args, **kw))
    # add + norm: official rms_norm_fn / layer_norm_fn (stand-in launch) against their refs
    M, H = 7, 10
    x, res, w, b = rn(3, M, H), rn(3, M, H), 1 + rn(H, scale=0.2), rn(H, scale=0.1)
    for name, fn, ref, bb in (("rms", ln.rms_norm_fn, ln.rms_norm_ref, None),
                              ("layer", ln.layer_norm_fn, ln.layer_norm_ref, b)):
        for with_res in (False, True):
            r = res if with_res else None
            y, ro = fn(x, w, bb, residual=r, eps=1e-5, prenorm=True, residual_in_fp32=True)
            y_ref, ro_ref = ref(x, w, bb, residual=r, eps=1e-5, prenorm=True, upcast=True)
            y2 = fn(x, w, bb, residual=r, eps=1e-5, prenorm=False, residual_in_fp32=True)
            report[f"{name}_norm_fn_vs_ref_res{int(with_res)}"] = max(
                _maxrel(y, y_ref), _maxrel(ro, ro_ref), _maxrel(y2, y_ref))
            assert ro.dtype == torch.float32
    worst = max(report.values())
    assert worst < 2e-6, report
    return report


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def _np(t):
    return t.detach().cpu().contiguous().numpy()


def sensitivity(model, named_params, images, base_logits, seed=7):
    """Relative change of the logits when the entries of one parameter are shuffled.

    A shuffle keeps the values and breaks their arrangement, as a layout bug would; every
    parameter must move the logits well beyond the 1e-4 tolerance of the tests.
    """
    import torch  # noqa: PLC0415
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for name, p in named_params.items():
            saved = p.detach().clone()
            flat = saved.reshape(-1)
            p.copy_(flat[torch.randperm(flat.numel(), generator=g)].reshape(p.shape))
            new = model(images)
            p.copy_(saved)
            out[name] = float((new - base_logits).abs().max() / base_logits.abs().max())
    return out


def save_case(case_dir, state_dict, config, arrays, pth=False):
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from safetensors.torch import save_file  # noqa: PLC0415
    os.makedirs(case_dir, exist_ok=True)
    sd = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    save_file(sd, os.path.join(case_dir, "model.safetensors"),
              metadata={"format": "pt", "source": config["source"]})
    if pth:
        torch.save({"model": sd}, os.path.join(case_dir, "model.pth"))
    config = dict(config)
    config["state_dict"] = {k: list(v.shape) for k, v in sd.items()}
    config["oracle_npz"] = {k: [list(np.shape(v)), str(np.asarray(v).dtype)]
                            for k, v in arrays.items()}
    with open(os.path.join(case_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
        f.write("\n")
    np.savez_compressed(os.path.join(case_dir, "oracle.npz"), **arrays)


# ---------------------------------------------------------------------------------------------
# Vim
# ---------------------------------------------------------------------------------------------

def _inv_softplus(y):
    import torch  # noqa: PLC0415
    return y + torch.log(-torch.expm1(-y))          # softplus(_inv_softplus(y)) == y


def perturb_vim(model, seed):
    """Move every parameter the official init leaves at round values, and scale the head."""
    import torch  # noqa: PLC0415
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            rn = torch.randn(p.shape, generator=g)
            if name.endswith("norm.weight") or name == "norm_f.weight":
                p.copy_(1.0 + 0.2 * rn)                    # RMSNorm weights start at 1
            elif name in ("cls_token", "pos_embed"):
                p.copy_(0.5 * rn)                          # trunc_normal(0.02): make them count
            elif name.endswith("A_log") or name.endswith("A_b_log"):
                p.add_(0.3 * rn)                           # log(1..N)
            elif name.endswith(".D") or name.endswith(".D_b"):
                p.copy_(0.5 + 0.3 * rn)                    # ones; smaller so the scan dominates
            elif name.endswith("dt_proj.bias") or name.endswith("dt_proj_b.bias"):
                p.copy_(_inv_softplus(0.2 + 0.8 * torch.rand(p.shape, generator=g)))
            elif name.endswith("x_proj.weight") or name.endswith("x_proj_b.weight"):
                p.mul_(3.0)                                # B, C of order one
            elif name == "head.weight" or name.endswith("in_proj.weight") \
                    or name.endswith("out_proj.weight"):
                p.copy_(rn / p.shape[1] ** 0.5)           # O(1) mixer outputs and logits
            elif name.endswith(".bias"):
                p.copy_(0.1 * rn)                          # zeros (patch_embed, head)
    return model


def run_vim(vim_dir, case, kwargs, image_hw, batch, seed):
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415
    for p in (os.path.join(vim_dir, "vim"), os.path.join(vim_dir, "mamba-1p1p1"),
              os.path.join(vim_dir, "causal-conv1d")):
        if p not in sys.path:
            sys.path.insert(0, p)
    patch_triton_layer_norm()
    import models_mamba  # noqa: PLC0415
    from mamba_ssm.modules import mamba_simple  # noqa: PLC0415
    from mamba_ssm.ops.triton.layer_norm import rms_norm_fn  # noqa: PLC0415

    torch.manual_seed(seed)
    model = models_mamba.VisionMamba(**kwargs)
    perturb_vim(model, seed + 1)
    model.eval()
    # the fused path must be the one that runs: bimamba v2 through mamba_inner_fn_no_out_proj
    assert all(layer.mixer.use_fast_path and layer.mixer.bimamba_type == "v2"
               for layer in model.layers)

    g = torch.Generator().manual_seed(seed + 2)
    images = torch.randn(batch, kwargs.get("channels", 3), *image_hw, generator=g)

    rec = {}
    inner_calls = []
    official_inner = mamba_simple.mamba_inner_fn_no_out_proj

    def recording_inner(*a, **k):
        out = official_inner(*a, **k)
        inner_calls.append(out.detach().clone())
        return out

    mamba_simple.mamba_inner_fn_no_out_proj = recording_inner
    def put(key):                    # forward hook; returns None so the output is kept
        def hook(m, args, out):
            if isinstance(out, tuple):   # Block returns (hidden_states, residual)
                rec[key + "_hidden"], rec[key + "_residual"] = (o.detach().clone() for o in out)
            else:
                rec[key] = out.detach().clone()
        return hook

    def put_in(key):                 # forward pre-hook on the first positional input
        def hook(m, args):
            rec[key] = args[0].detach().clone()
        return hook

    hooks = [model.patch_embed.register_forward_hook(put("patch_embed"))]
    for i, layer in enumerate(model.layers):
        hooks += [layer.register_forward_pre_hook(put_in(f"layer{i}_in_hidden")),
                  layer.mixer.register_forward_pre_hook(put_in(f"layer{i}_mixer_in")),
                  layer.register_forward_hook(put(f"layer{i}"))]
    hooks.append(model.head.register_forward_pre_hook(put_in("features")))
    with torch.no_grad():
        logits = model(images)
        first_inner = list(inner_calls)
        inner_calls.clear()
        logits2 = model(images)
    for h in hooks:
        h.remove()
    mamba_simple.mamba_inner_fn_no_out_proj = official_inner
    assert torch.equal(logits, logits2), "two runs of the official model differ"
    assert len(first_inner) == 2 * len(model.layers)

    depth = len(model.layers)
    with torch.no_grad():
        norm_f_out = rms_norm_fn(rec[f"layer{depth - 1}_hidden"], model.norm_f.weight, None,
                                 residual=rec[f"layer{depth - 1}_residual"], eps=model.norm_f.eps,
                                 prenorm=False, residual_in_fp32=True)
    M = rec["patch_embed"].shape[1]
    pos = M // 2
    assert torch.equal(norm_f_out[:, pos], rec["features"])
    assert rec["layer0_in_hidden"].shape[1] == M + 1

    arrays = {"images_nchw": _np(images), "images_nhwc": _np(images.permute(0, 2, 3, 1)),
              "logits": _np(logits), "features": _np(rec["features"]),
              "patch_embed": _np(rec["patch_embed"]), "tokens_in": _np(rec["layer0_in_hidden"]),
              "norm_f_out": _np(norm_f_out), "cls_position": np.array(pos)}
    for i in range(depth):
        arrays[f"layer{i}_mixer_in"] = _np(rec[f"layer{i}_mixer_in"])
        arrays[f"layer{i}_hidden"] = _np(rec[f"layer{i}_hidden"])
        arrays[f"layer{i}_residual"] = _np(rec[f"layer{i}_residual"])
        arrays[f"layer{i}_y_fwd"] = _np(first_inner[2 * i])
        arrays[f"layer{i}_y_bwd"] = _np(first_inner[2 * i + 1])

    params = dict(model.named_parameters())
    sens = sensitivity(model, params, images, logits)
    assert set(params) == set(model.state_dict()), "state dict holds more than parameters"
    config = {
        "model": "VisionMamba",
        "source": "hustvl/Vim@dd0358ad1e42701f22afbefa0717cc8825cf9f45 vim/models_mamba.py",
        "kwargs": kwargs, "batch": batch, "image_hw": list(image_hw), "seed": seed,
        "dtype": "float32", "mode": "eval", "torch": torch.__version__,
        "cls_position": pos, "num_patches": M,
        "min_logit_sensitivity": min(sens.values()),
    }
    return model.state_dict(), config, arrays, sens


# ---------------------------------------------------------------------------------------------
# VMamba
# ---------------------------------------------------------------------------------------------

ARCHIVE_TO_MAIN = (("patch_embed.proj.", "patch_embed.0."), ("patch_embed.norm.", "patch_embed.2."),
                   ("norm.", "classifier.norm."), ("head.", "classifier.head."))


def main_to_release_names(sd):
    """Current-main VSSM names -> names of the released v0 checkpoints (the archived code)."""
    import re  # noqa: PLC0415
    out = {}
    for k, v in sd.items():
        nk = k
        for old, new in ARCHIVE_TO_MAIN:
            if k.startswith(new):
                nk = old + k[len(new):]
        nk = re.sub(r"^(layers\.\d+\.blocks\.\d+\.)norm\.", r"\1ln_1.", nk)
        nk = re.sub(r"^(layers\.\d+\.blocks\.\d+\.)op\.", r"\1self_attention.", nk)
        out[nk] = v
    return out


def perturb_vmamba(model, seed):
    import torch  # noqa: PLC0415
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.Linear):             # trunc_normal(0.02) -> O(1) signal
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight.shape[1] ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.Conv2d) and name.startswith("patch_embed"):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        for name, p in model.named_parameters():
            rn = torch.randn(p.shape, generator=g)
            if name.endswith("A_logs"):
                p.add_(0.3 * rn)
            elif name.endswith("Ds"):
                p.copy_(0.5 + 0.3 * rn)                    # ones; smaller so the scan dominates
            elif name.endswith("dt_projs_bias"):
                p.copy_(_inv_softplus(0.2 + 0.8 * torch.rand(p.shape, generator=g)))
            elif name.endswith("x_proj_weight"):
                p.mul_(3.0)                                # B, C of order one
    return model


def run_vmamba(vmamba_dir, archive_file, case, kwargs, image_hw, batch, seed):
    import importlib.util  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415
    models_dir = os.path.join(vmamba_dir, "classification", "models")
    if models_dir not in sys.path:
        sys.path.insert(0, models_dir)

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    vm_main = load("vmamba_main", os.path.join(models_dir, "vmamba.py"))
    vm_arch = load("vmamba_v0_archive", archive_file)

    torch.manual_seed(seed)
    init = vm_main.VSSM(**kwargs)
    perturb_vmamba(init, seed + 1)
    release_sd = main_to_release_names(init.state_dict())

    # The released v0 checkpoints carry the archived code's names; current main renames them on
    # load (VSSM._load_from_state_dict). Load the release-named dict into a fresh main model.
    model = vm_main.VSSM(**kwargs)
    missing = model.load_state_dict(dict(release_sd), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    model.eval()
    for layer in model.layers:                       # the v0 forward, not a partial of it
        for blk in layer.blocks:
            assert blk.op.forward.__func__ is vm_main.SS2Dv0.forwardv0

    arch = vm_arch.VSSM(patch_size=kwargs["patch_size"], in_chans=kwargs["in_chans"],
                        num_classes=kwargs["num_classes"], depths=kwargs["depths"],
                        dims=kwargs["dims"], d_state=kwargs["ssm_d_state"],
                        drop_path_rate=kwargs["drop_path_rate"])
    arch.load_state_dict(dict(release_sd), strict=True)
    arch.eval()

    g = torch.Generator().manual_seed(seed + 2)
    images = torch.randn(batch, kwargs["in_chans"], *image_hw, generator=g)

    rec = {}
    scan_calls = []
    ss_mod = sys.modules["selective_scan_cuda"]
    official_fwd = ss_mod.fwd

    def recording_fwd(u, delta, A, B, C, D, z, delta_bias, softplus):
        res = official_fwd(u, delta, A, B, C, D, z, delta_bias, softplus)
        scan_calls.append(dict(u=u.clone(), delta=delta.clone(), A=A.clone(), B=B.clone(),
                               C=C.clone(), D=D.clone(), delta_bias=delta_bias.clone(),
                               out=res[0].clone()))
        return res

    def put(key):                    # forward hook; returns None so the output is kept
        def hook(m, args, out):
            rec[key] = out.detach().clone()
        return hook

    def put_in(key):                 # forward pre-hook on the first positional input
        def hook(m, args):
            rec[key] = args[0].detach().clone()
        return hook

    hooks = [model.patch_embed.register_forward_hook(put("patch_embed"))]
    for s, layer in enumerate(model.layers):
        for j, blk in enumerate(layer.blocks):
            p = f"stage{s}_block{j}"
            hooks += [blk.norm.register_forward_hook(put(f"{p}_norm")),
                      blk.op.out_norm.register_forward_pre_hook(put_in(f"{p}_ss2d_merged")),
                      blk.op.out_proj.register_forward_pre_hook(put_in(f"{p}_ss2d_gated")),
                      blk.op.register_forward_hook(put(f"{p}_op")),
                      blk.register_forward_hook(put(f"{p}_out"))]
        if not isinstance(layer.downsample, torch.nn.Identity):
            hooks.append(layer.downsample.register_forward_hook(put(f"stage{s}_downsample")))
    hooks += [model.classifier.norm.register_forward_hook(put("final_norm")),
              model.classifier.head.register_forward_pre_hook(put_in("features"))]
    ss_mod.fwd = recording_fwd
    with torch.no_grad():
        logits = model(images)
        first_scan = scan_calls[0]
        logits2 = model(images)
        logits_arch = arch(images)
    ss_mod.fwd = official_fwd
    for h in hooks:
        h.remove()
    assert torch.equal(logits, logits2), "two runs of the official model differ"
    arch_vs_main = _maxrel(logits_arch, logits)
    assert arch_vs_main < 1e-6, arch_vs_main

    arrays = {"images_nchw": _np(images), "images_nhwc": _np(images.permute(0, 2, 3, 1)),
              "logits": _np(logits), "logits_archive": _np(logits_arch)}
    for k, v in rec.items():
        arrays[k] = _np(v)
    for k in ("u", "delta", "B", "C", "out"):                # stage 0, block 0, first image
        arrays[f"stage0_block0_scan_{k}"] = _np(first_scan[k][:1])
    arrays["stage0_block0_scan_A"] = _np(first_scan["A"])
    arrays["stage0_block0_scan_D"] = _np(first_scan["D"])
    arrays["stage0_block0_scan_delta_bias"] = _np(first_scan["delta_bias"])

    params = dict(model.named_parameters())
    sens_main = sensitivity(model, params, images, logits)
    rename = main_to_release_names({k: None for k in params})
    sens = {rel: sens_main[k] for k, rel in zip(params, rename)}
    config = {
        "model": "VSSM",
        "source": ("MzeroMiko/VMamba@2ed52ead062a51a64521ed3871d52914bf532876 "
                   "classification/models/vmamba.py (forward_type='v0'); key names of the "
                   "released v0 checkpoints = archived code 20240128-achieve@"
                   "40678b81e70f7369c008af5bc3612ade48afb27e "
                   "classification/models/vmamba/vmamba.py"),
        "kwargs": kwargs, "batch": batch, "image_hw": list(image_hw), "seed": seed,
        "dtype": "float32", "mode": "eval", "torch": torch.__version__,
        "key_names": "released v0 checkpoint names (archived code); current main renames them",
        "release_to_main_key_prefixes": {
            "patch_embed.proj.": "patch_embed.0.", "patch_embed.norm.": "patch_embed.2.",
            "layers.{i}.blocks.{j}.ln_1.": "layers.{i}.blocks.{j}.norm.",
            "layers.{i}.blocks.{j}.self_attention.": "layers.{i}.blocks.{j}.op.",
            "norm.": "classifier.norm.", "head.": "classifier.head."},
        "logits_archive_vs_main_maxrel": arch_vs_main,
        "min_logit_sensitivity": min(sens.values()),
    }
    return release_sd, config, arrays, sens


# ---------------------------------------------------------------------------------------------
# Independent check of the README: the forward passes as README.md describes them, written again
# in NumPy float64 from the saved files alone, must reproduce the oracle (logits and the
# per-layer outputs compared below).
# ---------------------------------------------------------------------------------------------

def numpy_readme_check(out_dir, case):
    """Max relative error of the NumPy float64 forward against the case's oracle."""
    import numpy as np  # noqa: PLC0415
    from safetensors.numpy import load_file  # noqa: PLC0415

    def silu(x):
        return x / (1 + np.exp(-x))

    def softplus(x):
        return np.where(x <= 20, np.log1p(np.exp(np.minimum(x, 20))), x)

    def scan(u, delta, A, Bm, Cm, Dv, delta_bias, groups):
        """u, delta (Dch, L); A (Dch, N); Bm, Cm (G, N, L); channel d uses group d // (Dch/G)."""
        dch, L = u.shape
        dt = softplus(delta + delta_bias[:, None])
        g = np.arange(dch) // (dch // groups)
        h = np.zeros(A.shape)
        ys = np.zeros((dch, L))
        for t in range(L):
            h = np.exp(dt[:, t, None] * A) * h + dt[:, t, None] * Bm[g, :, t] * u[:, t, None]
            ys[:, t] = (h * Cm[g, :, t]).sum(-1)
        return ys + Dv[:, None] * u

    def rms(x, w, eps=1e-5):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def ln(x, w, b, eps=1e-5):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + eps) * w + b

    def patchify(img, W, b, stride):
        """img (H, W, C); W (D, C, p, p) -> (gh, gw, D), patches in row-major order."""
        p = W.shape[-1]
        gh, gw = (img.shape[0] - p) // stride + 1, (img.shape[1] - p) // stride + 1
        out = np.zeros((gh, gw, W.shape[0]))
        for r in range(gh):
            for c in range(gw):
                patch = img[r * stride:r * stride + p, c * stride:c * stride + p, :]
                out[r, c] = np.einsum("dcij,ijc->d", W, patch) + b
        return out

    def mamba_direction(xz, conv_w, conv_b, xproj, dtw, dtb, A, Dv):
        """One direction of mamba_inner_fn_no_out_proj on xz (2E, L)."""
        E = xz.shape[0] // 2
        x, z = xz[:E], xz[E:]
        L, K = x.shape[1], conv_w.shape[-1]
        xp = np.concatenate([np.zeros((E, K - 1)), x], 1)
        xc = np.stack([(xp[:, t:t + K] * conv_w[:, 0, :]).sum(-1) for t in range(L)], 1)
        xc = silu(xc + conv_b[:, None])
        xdbl = xproj @ xc                                            # (R + 2N, L)
        R, N = dtw.shape[1], A.shape[1]
        y = scan(xc, dtw @ xdbl[:R], A, xdbl[R:R + N][None], xdbl[R + N:][None], Dv, dtb, 1)
        return y * silu(z)

    def rel(a, ref):
        return float(np.abs(a - ref).max() / np.abs(ref).max())

    d = os.path.join(out_dir, case)
    with open(os.path.join(d, "config.json")) as f:
        kw = json.load(f)["kwargs"]
    sd = {k: v.astype(np.float64)
          for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    z = np.load(os.path.join(d, "oracle.npz"))
    worst = 0.0
    for bi, img in enumerate(z["images_nhwc"].astype(np.float64)):
        if case.startswith("vim"):
            tok = patchify(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                           kw["stride"])
            tok = tok.reshape(-1, tok.shape[-1])                     # (M, D) row-major
            pos = tok.shape[0] // 2
            hidden = np.concatenate([tok[:pos], sd["cls_token"][0], tok[pos:]], 0) \
                + sd["pos_embed"][0]
            residual = None
            for i in range(kw["depth"]):
                p = f"layers.{i}.mixer."
                residual = hidden if residual is None else residual + hidden
                xz = sd[p + "in_proj.weight"] @ rms(residual, sd[f"layers.{i}.norm.weight"]).T
                yf = mamba_direction(xz, sd[p + "conv1d.weight"], sd[p + "conv1d.bias"],
                                     sd[p + "x_proj.weight"], sd[p + "dt_proj.weight"],
                                     sd[p + "dt_proj.bias"], -np.exp(sd[p + "A_log"]), sd[p + "D"])
                yb = mamba_direction(xz[:, ::-1], sd[p + "conv1d_b.weight"],
                                     sd[p + "conv1d_b.bias"],
                                     sd[p + "x_proj_b.weight"], sd[p + "dt_proj_b.weight"],
                                     sd[p + "dt_proj_b.bias"], -np.exp(sd[p + "A_b_log"]),
                                     sd[p + "D_b"])
                hidden = ((yf + yb[:, ::-1]) / 2).T @ sd[p + "out_proj.weight"].T
                worst = max(worst, rel(hidden, z[f"layer{i}_hidden"][bi]),
                            rel(residual, z[f"layer{i}_residual"][bi]),
                            rel(yf, z[f"layer{i}_y_fwd"][bi]), rel(yb, z[f"layer{i}_y_bwd"][bi]))
            feat = rms(residual + hidden, sd["norm_f.weight"])[pos]
        else:
            x = patchify(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                         kw["patch_size"])
            x = ln(x, sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"])
            N = kw["ssm_d_state"]
            for s_, depth in enumerate(kw["depths"]):
                for j in range(depth):
                    p = f"layers.{s_}.blocks.{j}."
                    xn = ln(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
                    p += "self_attention."
                    h, w, _ = xn.shape
                    L = h * w
                    xz = xn @ sd[p + "in_proj.weight"].T
                    E = xz.shape[-1] // 2
                    xi, gate = xz[..., :E], silu(xz[..., E:])
                    xpad = np.pad(xi, ((1, 1), (1, 1), (0, 0)))
                    xc = sum(xpad[a:a + h, b:b + w] * sd[p + "conv2d.weight"][:, 0, a, b]
                             for a in range(3) for b in range(3))
                    xc = silu(xc + sd[p + "conv2d.bias"])
                    s0 = xc.reshape(L, E).T                          # row-major
                    s1 = xc.transpose(1, 0, 2).reshape(L, E).T       # column-major
                    xs = np.stack([s0, s1, s0[:, ::-1], s1[:, ::-1]])  # (K, E, L)
                    R = sd[p + "dt_projs_weight"].shape[-1]
                    xdbl = np.einsum("kdl,kcd->kcl", xs, sd[p + "x_proj_weight"])
                    dts = np.einsum("krl,kdr->kdl", xdbl[:, :R], sd[p + "dt_projs_weight"])
                    ys = scan(xs.reshape(4 * E, L), dts.reshape(4 * E, L),
                              -np.exp(sd[p + "A_logs"]), xdbl[:, R:R + N], xdbl[:, R + N:],
                              sd[p + "Ds"], sd[p + "dt_projs_bias"].reshape(-1), 4)
                    ys = ys.reshape(4, E, L)

                    def from_col(y, E=E, h=h, w=w):
                        return y.reshape(E, w, h).transpose(0, 2, 1).reshape(E, h * w)

                    y = ys[0] + ys[2][:, ::-1] + from_col(ys[1]) + from_col(ys[3][:, ::-1])
                    y = ln(y.T, sd[p + "out_norm.weight"], sd[p + "out_norm.bias"])
                    x = x + (y.reshape(h, w, E) * gate) @ sd[p + "out_proj.weight"].T
                    worst = max(worst, rel(x, z[f"stage{s_}_block{j}_out"][bi]))
                if s_ < len(kw["depths"]) - 1:
                    p = f"layers.{s_}.downsample."
                    x = np.concatenate([x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
                                        x[1::2, 1::2]], -1)
                    x = ln(x, sd[p + "norm.weight"], sd[p + "norm.bias"]) \
                        @ sd[p + "reduction.weight"].T
            feat = ln(x, sd["norm.weight"], sd["norm.bias"]).mean((0, 1))
        logits = sd["head.weight"] @ feat + sd["head.bias"]
        worst = max(worst, rel(logits, z["logits"][bi]))
    return worst


# ---------------------------------------------------------------------------------------------

VIM_BASE = dict(rms_norm=True, residual_in_fp32=True, fused_add_norm=True, final_pool_type="mean",
                if_abs_pos_embed=True, if_rope=False, if_rope_residual=False, bimamba_type="v2",
                if_cls_token=True, if_divide_out=True, use_middle_cls_token=True,
                use_double_cls_token=False, norm_epsilon=1e-5, drop_rate=0.0,
                drop_path_rate=0.1, channels=3)

VIM_CASES = {
    # the preset vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2
    # at tiny sizes: 4 x 4 = 16 patches, class token at 8
    "vim_tiny": (dict(VIM_BASE, img_size=32, patch_size=8, stride=8, embed_dim=32, depth=4,
                      d_state=8, num_classes=10), (32, 32), 2, 1000),
    # like the *_stride8_* presets: overlapping patches, 5 x 5 = 25 patches (odd), class token at 12
    "vim_stride": (dict(VIM_BASE, img_size=24, patch_size=8, stride=4, embed_dim=32, depth=2,
                        d_state=8, num_classes=10), (24, 24), 2, 2000),
}

VMAMBA_CASES = {
    # vanilla_vmamba_tiny (the v0 checkpoints' config, vmambav0_tiny_224.yaml) at tiny sizes;
    # a non-square image so that H and W cannot be confused: 4 x 6 tokens, then 2 x 3.
    "vmamba_v0_tiny": (dict(depths=[2, 2], dims=24, drop_path_rate=0.2, patch_size=4, in_chans=3,
                            num_classes=10, ssm_d_state=8, ssm_ratio=2.0, ssm_dt_rank="auto",
                            ssm_act_layer="silu", ssm_conv=3, ssm_conv_bias=True,
                            ssm_drop_rate=0.0, ssm_init="v0", forward_type="v0", mlp_ratio=0.0,
                            mlp_act_layer="gelu", mlp_drop_rate=0.0, gmlp=False, patch_norm=True,
                            norm_layer="ln", downsample_version="v1", patchembed_version="v1",
                            use_checkpoint=False, posembed=False, imgsize=224),
                       (16, 24), 2, 3000),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vim", required=True, help="checkout of hustvl/Vim")
    parser.add_argument("--vmamba", required=True, help="checkout of MzeroMiko/VMamba")
    parser.add_argument("--vmamba-archive", required=True,
                        help="classification/models/vmamba/vmamba.py of VMamba commit 40678b8")
    parser.add_argument("--out", default=OUT_DIR)
    args = parser.parse_args(argv)

    import torch  # noqa: PLC0415
    torch.set_num_threads(1)
    for p in (os.path.join(args.vim, "mamba-1p1p1"), os.path.join(args.vim, "causal-conv1d")):
        sys.path.insert(0, p)
    install_stand_ins()
    checks = check_stand_ins(args.vmamba)
    summary = {"stand_in_checks_maxrel": checks, "cases": {}}
    for case, (kwargs, hw, batch, seed) in VIM_CASES.items():
        sd, config, arrays, sens = run_vim(args.vim, case, kwargs, hw, batch, seed)
        assert min(sens.values()) > 1e-3, sens
        save_case(os.path.join(args.out, case), sd, config, arrays, pth=(case == "vim_tiny"))
        summary["cases"][case] = {"logit_sensitivity": sens}
    for case, (kwargs, hw, batch, seed) in VMAMBA_CASES.items():
        sd, config, arrays, sens = run_vmamba(args.vmamba, args.vmamba_archive, case, kwargs, hw,
                                              batch, seed)
        assert min(sens.values()) > 1e-3, sens
        save_case(os.path.join(args.out, case), sd, config, arrays)
        summary["cases"][case] = {"logit_sensitivity": sens,
                                  "archive_vs_main": config["logits_archive_vs_main_maxrel"]}
    summary["numpy_readme_forward_maxrel"] = {
        case: numpy_readme_check(args.out, case)
        for case in summary["cases"]}
    assert max(summary["numpy_readme_forward_maxrel"].values()) < 1e-5, summary
    with open(os.path.join(args.out, "checks.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    print(json.dumps({"stand_in_checks_maxrel": checks,
                      "numpy_readme_forward_maxrel": summary["numpy_readme_forward_maxrel"]},
                     indent=1))
    for case, s in summary["cases"].items():
        print(case, "min logit sensitivity", min(s["logit_sensitivity"].values()))


if __name__ == "__main__":
    main()
