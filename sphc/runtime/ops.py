"""The custom ops every generated model calls, and the choice of implementation behind them.

Each op is a ``torch.library.custom_op`` with a fake (meta) implementation and a registered
backward, so ``torch.compile(model, fullgraph=True)`` sees one opaque node per layer on every
device and DDP / autograd see ordinary differentiable ops. Inside, the op runs one of three
implementations, as the layer's ``backend`` says:

* ``"reference"`` — the readable reference code below (``runtime`` semantics, any device): the
  oracle every other implementation is tested against;
* ``"torch"`` — the fast torch path (``fast_tp``, ``fast_linear``; ``fast_pointwise`` for the
  pointwise layers): the same functions without padded work, expanded tensors or layout copies;
* ``"triton"`` — the layer's generated Triton kernels (``register_kernels`` is called by the
  generated module at import): CUDA, or CPU tensors in Triton's interpreter when
  ``TRITON_INTERPRET=1`` was set before the model was loaded;
* ``"auto"`` — Triton on CUDA tensors, the fast torch path elsewhere.

A layer without a kernel for its case runs the fast torch path and says so once (``warn_once``)
— never a silent slow path. Tables (index arrays, CG values) are passed as tensor arguments, so a
module moved with ``.to()`` carries them and the ops stay stateless.
"""

from __future__ import annotations

import warnings

import torch

from sphc.config import backend_default
from sphc.errors import SphcError
from sphc.runtime import fast_linear, fast_tp, launch

BACKENDS = ("auto", "reference", "torch", "triton")
_KERNELS: dict[str, object] = {}
_WARNED: set[str] = set()


def kernel_key(module: str, name: str) -> str:
    """The registry key of kernel set ``name`` (``layout.kernel_name``) of generated module ``module``."""
    return f"{module}.{name}"


def register_kernels(module: str, name: str, kernels: object) -> None:
    """Called by a generated module for each of its kernel sets (same key → same kernels)."""
    _KERNELS[kernel_key(module, name)] = kernels


def check_backend(backend: str | None) -> str:
    """``None`` → ``SPHC_BACKEND`` or ``"auto"``; anything unknown is an error that names the choices."""
    chosen = backend_default() if backend is None else backend
    if chosen not in BACKENDS:
        raise SphcError(f"unknown backend {chosen!r}: expected one of {', '.join(BACKENDS)}")
    return chosen


def warn_once(what: str, message: str) -> None:
    if what not in _WARNED:
        _WARNED.add(what)
        warnings.warn(f"sphc: {message}", RuntimeWarning, stacklevel=3)


def use_triton(backend: str, key: str, x: torch.Tensor, layer: str) -> bool:
    """Whether this call runs generated kernels; errors or warns once where it cannot."""
    if backend in ("reference", "torch") or (backend == "auto" and not x.is_cuda):
        return False
    if key not in _KERNELS:
        warn_once(key, f"{layer} has no Triton kernel for this case; it runs the fast torch path")
        return False
    if not x.is_cuda and not launch.interpreting():
        raise SphcError(
            f"{layer}: backend='triton' on {x.device} tensors needs TRITON_INTERPRET=1 (Triton's CPU "
            "interpreter) set before the model is loaded, or a CUDA device",
            hint="use backend='torch' (or 'auto') on CPU",
        )
    return True


def kernels(key: str):
    return _KERNELS[key]


# --- fused tensor product + uniform projection --------------------------------------------------


def tp_reference(x: torch.Tensor, ref: list[torch.Tensor], L: int, width: int) -> torch.Tensor:
    """The channel-wise CG tensor product (B, C, L, 2L-1, width) of ``runtime.TensorProduct``.

    Each distinct product x[src1] x[src2] is formed once; the CG sums are one sparse matrix (rows:
    output entries, columns: products) times them. ``ref`` = (src1, src2, cg_index, coef).
    """
    src1, src2, cg_index, coef = ref
    B, C = x.shape[:2]
    n_out = L * (2 * L - 1) * width
    if not len(src1):
        return x.new_zeros(B, C, L, 2 * L - 1, width)
    rows = x.reshape(B * C, -1).t().contiguous()  # (input entries, B*C)
    prod = rows.index_select(0, src1) * rows.index_select(0, src2)
    prod = torch.view_as_real(prod).reshape(len(src1), 2 * B * C)  # real: the CG values are real
    cg = torch.sparse_coo_tensor(
        cg_index, coef.to(prod.dtype), (n_out, len(src1)), is_coalesced=True, check_invariants=False
    )
    out = torch.view_as_complex(torch.sparse.mm(cg, prod).view(n_out, B * C, 2))
    return out.t().reshape(B, C, L, 2 * L - 1, width)


def tp_reference_backward(
    g: torch.Tensor, x: torch.Tensor, ref: list[torch.Tensor], L: int, width: int
) -> torch.Tensor:
    """grad x of ``tp_reference`` (written out: custom-op bodies run below autograd).

    For a product x[s1] x[s2] reaching output rows with real coefficients C, its gradient is
    G = Σ C g[row] (the transposed sparse matrix), and x[s1] receives conj(x[s2]) G, x[s2] conj(x[s1]) G.
    """
    src1, src2, cg_index, coef = ref
    B, C = x.shape[:2]
    n_out = L * (2 * L - 1) * width
    if not len(src1):
        return torch.zeros_like(x)
    rows = x.reshape(B * C, -1).t().contiguous()
    g_rows = torch.view_as_real(g.reshape(B * C, n_out).t().contiguous()).reshape(n_out, 2 * B * C)
    cg_t = torch.sparse_coo_tensor(
        cg_index.flip(0), coef.to(g_rows.dtype), (len(src1), n_out), check_invariants=False
    ).coalesce()
    gprod = torch.view_as_complex(torch.sparse.mm(cg_t, g_rows).view(len(src1), B * C, 2))
    grad = torch.zeros_like(rows)
    grad.index_add_(0, src1, rows.index_select(0, src2).conj() * gprod)
    grad.index_add_(0, src2, rows.index_select(0, src1).conj() * gprod)
    return grad.t().reshape(x.shape)


def truncate(t: torch.Tensor, L: int) -> torch.Tensor:
    """Keep degrees < L of a padded harmonic tensor (and the matching m range): a view, no copy."""
    L_in = t.shape[2]
    return t[:, :, :L, L_in - L : L_in - 1 + L]


IO_DTYPES = {"": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def rounded(x: torch.Tensor, io: str) -> torch.Tensor:
    """x as the kernels read it when inputs are stored in ``io`` (bf16 / fp16): each part rounded."""
    if not io:
        return x
    return torch.view_as_complex(torch.view_as_real(x).to(IO_DTYPES[io]).to(x.real.dtype))


def _tp_project_reference(x, u, ref, L_tp):
    return torch.einsum("bclmt,ltu->bclmu", truncate(tp_reference(x, ref, L_tp, u.shape[1]), u.shape[0]), u)


def _tp_project_reference_backward(g, x, u, ref, L_tp):
    L, width = u.shape[0], u.shape[1]
    t = truncate(tp_reference(x, ref, L_tp, width), L)
    gu = torch.einsum("bclmt,bclmu->ltu", t.conj(), g)
    gt = x.new_zeros(x.shape[0], x.shape[1], L_tp, 2 * L_tp - 1, width)
    truncate(gt, L).copy_(torch.einsum("bclmu,ltu->bclmt", g, u.conj()))
    return tp_reference_backward(gt, x, ref, L_tp, width), gu


def _tables(tab: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    from sphc.runtime.tp_kernels import TABLE_NAMES

    return dict(zip(TABLE_NAMES, tab))


@torch.library.custom_op("sphc::tp_project", mutates_args=())
def tp_project(
    x: torch.Tensor, u: torch.Tensor, ref: list[torch.Tensor], fast: list[torch.Tensor], tab: list[torch.Tensor],
    L_tp: int, key: str, backend: str, io: str,
) -> torch.Tensor:  # fmt: skip
    """a[b,c,l,m,:] = Σ_col TP(x)[b,c,l,m,col] U[l,col,:] for l < L = u.shape[0], TP never stored.

    Each implementation reads its own tables: ``ref`` the reference's (per product term; empty unless
    the backend is "reference"), ``fast`` the fast path's (per path), ``tab`` the kernels'. ``io`` =
    "bfloat16" / "float16" stores x in that dtype for the kernel (fp32 accumulation); the other paths
    round x the same way, so every backend computes the same function.
    """
    if use_triton(backend, key, x, key):
        return kernels(key).forward(x, u, _tables(tab), io=IO_DTYPES[io])
    if backend == "reference":
        return _tp_project_reference(rounded(x, io), u, ref, L_tp).contiguous()
    return fast_tp.tp_project(rounded(x, io), u, fast, L_tp)


@tp_project.register_fake
def _(x, u, ref, fast, tab, L_tp, key, backend, io):
    L = u.shape[0]
    return x.new_empty(x.shape[0], x.shape[1], L, 2 * L - 1, u.shape[2])


@torch.library.custom_op("sphc::tp_project_backward", mutates_args=())
def tp_project_backward(
    g: torch.Tensor, x: torch.Tensor, u: torch.Tensor, ref: list[torch.Tensor], fast: list[torch.Tensor],
    tab: list[torch.Tensor], L_tp: int, key: str, backend: str, io: str,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Gradients of ``tp_project`` (for rounded inputs: the straight-through gradient of the rounding)."""
    if use_triton(backend, key, x, key):
        return kernels(key).backward(g, x, u, _tables(tab), io=IO_DTYPES[io])
    if backend == "reference":
        gx, gu = _tp_project_reference_backward(g, rounded(x, io), u, ref, L_tp)
    else:
        gx, gu = fast_tp.tp_project_backward(g, rounded(x, io), u, fast, L_tp)
    return gx.contiguous(), gu.contiguous()


@tp_project_backward.register_fake
def _(g, x, u, ref, fast, tab, L_tp, key, backend, io):
    return x.new_empty(x.shape), u.new_empty(u.shape)


def _tp_setup(ctx, inputs, output):
    x, u, ref, fast, tab, L_tp, key, backend, io = inputs
    ctx.save_for_backward(x, u, *ref, *fast, *tab)
    ctx.meta = (len(ref), len(fast), L_tp, key, backend, io)


def _tp_backward(ctx, g):
    n_ref, n_fast, L_tp, key, backend, io = ctx.meta
    x, u, *rest = ctx.saved_tensors
    ref, fast, tab = rest[:n_ref], rest[n_ref : n_ref + n_fast], rest[n_ref + n_fast :]
    gx, gu = tp_project_backward(g.contiguous(), x, u, ref, fast, tab, L_tp, key, backend, io)
    return gx, gu, [None] * len(ref), [None] * len(fast), [None] * len(tab), None, None, None, None


tp_project.register_autograd(_tp_backward, setup_context=_tp_setup)


@torch.library.custom_op("sphc::tensor_product", mutates_args=())
def tensor_product(
    x: torch.Tensor,
    ref: list[torch.Tensor],
    fast: list[torch.Tensor],
    L: int,
    width: int,
    key: str,
    backend: str,
) -> torch.Tensor:
    """The unfused tensor product (a TensorProduct not followed by GenConv): no Triton kernel."""
    if backend == "triton" or (backend == "auto" and x.is_cuda):
        warn_once(
            key,
            f"{key}: a TensorProduct not followed by GenConv has no Triton kernel (only the fused "
            "TensorProduct → GenConv has one); it runs the fast torch path",
        )
    if backend == "reference":
        return tp_reference(x, ref, L, width).contiguous()
    return fast_tp.tensor_product(x, fast, L, width)


@tensor_product.register_fake
def _(x, ref, fast, L, width, key, backend):
    return x.new_empty(x.shape[0], x.shape[1], L, 2 * L - 1, width)


@torch.library.custom_op("sphc::tensor_product_backward", mutates_args=())
def tensor_product_backward(
    g: torch.Tensor, x: torch.Tensor, ref: list[torch.Tensor], fast: list[torch.Tensor], L: int, width: int,
    backend: str,
) -> torch.Tensor:  # fmt: skip
    if backend == "reference":
        return tp_reference_backward(g, x, ref, L, width).contiguous()
    return fast_tp.tensor_product_backward(g, x, fast, L, width)


@tensor_product_backward.register_fake
def _(g, x, ref, fast, L, width, backend):
    return x.new_empty(x.shape)


def _tpu_setup(ctx, inputs, output):
    x, ref, fast, L, width, key, backend = inputs
    ctx.save_for_backward(x, *ref, *fast)
    ctx.meta = (len(ref), L, width, backend)


def _tpu_backward(ctx, g):
    n_ref, L, width, backend = ctx.meta
    x, *rest = ctx.saved_tensors
    ref, fast = rest[:n_ref], rest[n_ref:]
    gx = tensor_product_backward(g.contiguous(), x, ref, fast, L, width, backend)
    return gx, [None] * len(ref), [None] * len(fast), None, None, None, None


tensor_product.register_autograd(_tpu_backward, setup_context=_tpu_setup)


# --- per-degree linear maps ------------------------------------------------------------------------


def order_mask(L: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (L, 2L−1): entry [l, L−1+m] is True where the order m exists at degree l (|m| <= l)."""
    l = torch.arange(L, device=device)[:, None]
    m = torch.arange(2 * L - 1, device=device)[None, :] - (L - 1)
    return m.abs() <= l


def _orders_only(x: torch.Tensor, L: int) -> torch.Tensor:
    """x with the entries of orders |m| > l replaced by zeros (the kernels never read them)."""
    return torch.where(order_mask(L, x.device)[None, None, :, :, None], x, torch.zeros((), dtype=x.dtype))


def degree_linear_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y[b,k,l,m,v] = Σ_{c,t} x[b,c,l,m,t] w[l,c,t,k,v] on |m| <= l; zero (and blind to x) elsewhere."""
    return torch.einsum("bclmt,lctkv->bklmv", _orders_only(x, w.shape[0]), w)


@torch.library.custom_op("sphc::degree_linear", mutates_args=())
def degree_linear(x: torch.Tensor, w: torch.Tensor, key: str, backend: str) -> torch.Tensor:
    """One grouped complex linear map per degree: S2Conv, SO3Conv, ZonalConv, GenConv (V∘X), FullGenConv."""
    if use_triton(backend, key, x, key):
        return kernels(key).forward(x, w)
    if backend == "reference":
        return degree_linear_reference(x, w).contiguous()  # the fake promises a contiguous result
    return fast_linear.degree_linear(x, w)


@degree_linear.register_fake
def _(x, w, key, backend):
    L = w.shape[0]
    return x.new_empty(x.shape[0], w.shape[3], L, 2 * L - 1, w.shape[4])


@torch.library.custom_op("sphc::degree_linear_backward", mutates_args=())
def degree_linear_backward(
    g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, key: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton(backend, key, x, key):
        return kernels(key).backward(g, x, w)
    if backend != "reference":
        return fast_linear.degree_linear_backward(g, x, w)
    L = w.shape[0]
    g, x = _orders_only(g, L), _orders_only(x, L)
    gx = torch.einsum("bklmv,lctkv->bclmt", g, w.conj())
    return gx.contiguous(), torch.einsum("bclmt,bklmv->lctkv", x.conj(), g).contiguous()


@degree_linear_backward.register_fake
def _(g, x, w, key, backend):
    return x.new_empty(x.shape), w.new_empty(w.shape)  # contiguous, like both implementations


def _dl_setup(ctx, inputs, output):
    x, w, key, backend = inputs
    ctx.save_for_backward(x, w)
    ctx.meta = (key, backend)


def _dl_backward(ctx, g):
    x, w = ctx.saved_tensors
    gx, gw = degree_linear_backward(g.contiguous(), x, w, *ctx.meta)
    return gx, gw, None, None


degree_linear.register_autograd(_dl_backward, setup_context=_dl_setup)
