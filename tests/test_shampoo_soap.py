"""Shampoo and SOAP against naive per-tensor references of the papers' algorithms, written here
with explicit loops over blocks and explicit mode-i unfoldings (float64, 1e-10 relative), on
several param groups with a hyperparameter changed mid-run; plus the pieces (inverse roots
against scipy, blocking), special cases (Shampoo before preconditioning is Adam, the paper's
Algorithm 1) and convergence on a matrix problem."""

from __future__ import annotations

import io
import math

import pytest
import torch

import optimlab
from optimlab.transforms import block_slices, inverse_root
from problems import cooldown, make_net, net_data, split_groups

STEPS = 24


# --- helpers: mode-i unfolding and product, written out --------------------------------------
def unfold(x, i):
    """X_(i): dim i as rows, the other dims (in order) flattened as columns."""
    return x.movedim(i, 0).reshape(x.shape[i], -1)


def mode_product(x, mat, i):
    """x x_i mat: every mode-i fibre of x multiplied by mat."""
    moved = x.movedim(i, 0)
    out = (mat @ moved.reshape(moved.shape[0], -1)).reshape(mat.shape[0], *moved.shape[1:])
    return out.movedim(0, i)


def blocks_of(shape, size):
    """Every block of a tensor: a tuple of (start, stop) per dim, row-major, written as loops."""
    out = [()]
    for n in shape:
        out = [b + ((a, min(a + size, n)),) for b in out for a in range(0, n, size)]
    return out


def index(b):
    return tuple(slice(a, z) for a, z in b)


def root_ref(h, r, eps):
    """(h + eps I)^(-1/r) by the eigendecomposition, eigenvalues clamped at 0."""
    w, v = torch.linalg.eigh(h)
    return v @ torch.diag((w.clamp(min=0) + eps) ** (-1.0 / r)) @ v.T


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


# --- the Shampoo reference ---------------------------------------------------------------------
class ShampooRef:
    """Anil et al.'s blocked, grafted Shampoo as optimlab.Shampoo documents it, one tensor and
    one block at a time."""

    def __init__(self, groups):
        self.groups = groups
        self.state = {}

    def step(self):
        for g in self.groups:
            for p in g["params"]:
                self._param(p, g)

    def _param(self, p, h):
        b1, b2 = h["betas"]
        st = self.state.setdefault(p, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p), "H": {}, "P": {}})
        st["t"] += 1
        t = st["t"]
        g = p.grad
        st["m"] = b1 * st["m"] + (1 - b1) * g
        M = st["m"] / (1 - b1**t)
        st["v"] = b2 * st["v"] + (1 - b2) * g * g if b2 < 1 else st["v"] + g * g
        bc2 = 1 - b2**t if b2 < 1 else 1.0
        A = M / (torch.sqrt(st["v"] / bc2) + h["eps"])
        graft = {"adam": A, "sgd": M, "none": None}[h["grafting"]]
        start, freq = h["start_preconditioning_step"], h["precondition_frequency"]
        precondition = t >= start
        refresh = t >= start and (t - start) % freq == 0

        def grafted(d, a):
            return d if a is None else d * (a.norm() / d.norm())

        if p.ndim < 2:
            D = grafted(A, graft) if precondition else (M if graft is None else graft)
        else:
            D = torch.zeros_like(p)
            k = p.ndim
            for b in blocks_of(p.shape, h["block_size"]):
                gb = g[index(b)]
                for i in range(k):
                    key = (b, i)
                    G = unfold(gb, i)
                    old = st["H"].get(key, torch.zeros(G.shape[0], G.shape[0], dtype=p.dtype))
                    st["H"][key] = b2 * old + (1 - b2) * G @ G.T if b2 < 1 else old + G @ G.T
                    if refresh:
                        st["P"][key] = root_ref(st["H"][key] / bc2, 2 * k, h["matrix_eps"])
                if precondition:
                    d = M[index(b)]
                    for i in range(k):
                        d = mode_product(d, st["P"][(b, i)], i)
                    D[index(b)] = grafted(d, None if graft is None else graft[index(b)])
                else:
                    D[index(b)] = (M if graft is None else graft)[index(b)]
        u = D + h["weight_decay"] * p.detach()
        mu = h["momentum"]
        if mu:
            st["buf"] = u.clone() if t == 1 else mu * st["buf"] + u
            u = u + mu * st["buf"] if h["nesterov"] else st["buf"]
        with torch.no_grad():
            p -= h["lr"] * u


SHAMPOO_DEFAULTS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum=0.0, nesterov=False,
                        matrix_eps=1e-12, block_size=256, precondition_frequency=10, start_preconditioning_step=10,
                        grafting="adam")

SHAMPOO_CASES = {
    "every-step-adam-grafting": (dict(lr=0.01, start_preconditioning_step=1, precondition_frequency=1), [{}], None),
    "blocked-groups-change": (
        dict(lr=0.01, block_size=4, start_preconditioning_step=3, precondition_frequency=2, weight_decay=0.01),
        [{}, {"grafting": "sgd", "betas": (0.5, 1.0), "momentum": 0.9, "nesterov": True, "block_size": 5,
              "lr": 0.02, "precondition_frequency": 3}],
        {"lr": 0.005, "betas": (0.8, 0.99), "weight_decay": 0.05}),
    "paper-sums-no-grafting": (dict(lr=0.05, betas=(0.0, 1.0), grafting="none", matrix_eps=1e-4, block_size=3,
                                    start_preconditioning_step=1, precondition_frequency=1), [{}], None),
    "heavy-ball-late-start": (dict(lr=0.01, momentum=0.5, start_preconditioning_step=7, precondition_frequency=5,
                                   grafting="none", matrix_eps=1e-6), [{}], {"momentum": 0.8}),
}


def _run_pair(make_ours, make_ref, groups_kw, change, steps=STEPS, dtype=torch.float64):
    x, y = net_data(dtype)
    net_a, net_b = make_net(dtype), make_net(dtype)
    ours = make_ours(split_groups(list(net_a.parameters()), groups_kw))
    ref = make_ref(split_groups(list(net_b.parameters()), groups_kw))
    worst = 0.0
    for step in range(steps):
        if change is not None and step == steps // 2:
            for g in ours.param_groups + ref.groups:
                g.update(change)
        for net, opt in ((net_a, ours), (net_b, ref)):
            for p in net.parameters():
                p.grad = None
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
        for a, b in zip(net_a.parameters(), net_b.parameters()):
            worst = max(worst, rel_err(a.detach(), b.detach()))
    return worst, net_a


@pytest.mark.parametrize("case", sorted(SHAMPOO_CASES))
def test_shampoo_matches_reference(case):
    kwargs, groups, change = SHAMPOO_CASES[case]

    def ref(groups_):
        return ShampooRef([{**SHAMPOO_DEFAULTS, **kwargs, **g} for g in groups_])

    worst, net = _run_pair(lambda gs: optimlab.Shampoo(gs, **kwargs), ref, groups, change)
    assert worst < 1e-10, f"{case}: relative difference {worst:.3g}"
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_shampoo_paper_algorithm_1():
    """Gupta et al.'s Algorithm 1 for one matrix, literally: L_t = eps I + sum G G^T, R_t likewise,
    W <- W - lr L_t^(-1/4) G_t R_t^(-1/4)."""
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(20, 5, generator=g, dtype=torch.float64), torch.randn(20, 4, generator=g, dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(5, 4, dtype=torch.float64))
    opt = optimlab.Shampoo([w], lr=0.1, betas=(0.0, 1.0), matrix_eps=1e-3, grafting="none",
                           start_preconditioning_step=1, precondition_frequency=1)
    W = torch.zeros(5, 4, dtype=torch.float64)
    L, R = 1e-3 * torch.eye(5, dtype=torch.float64), 1e-3 * torch.eye(4, dtype=torch.float64)

    def power(m, e):
        vals, vecs = torch.linalg.eigh(m)
        return vecs @ torch.diag(vals**e) @ vecs.T

    for _ in range(15):
        w.grad = A.T @ (A @ w.detach() - B) / 20
        G = A.T @ (A @ W - B) / 20
        L, R = L + G @ G.T, R + G.T @ G
        W = W - 0.1 * power(L, -0.25) @ G @ power(R, -0.25)
        opt.step()
        assert rel_err(w.detach(), W) < 1e-10


def test_shampoo_before_preconditioning_is_adam():
    x, y = net_data()
    nets = [make_net(), make_net()]
    opts = [optimlab.Shampoo(nets[0].parameters(), lr=0.01, start_preconditioning_step=10**6),
            optimlab.Adam(nets[1].parameters(), lr=0.01)]
    for _ in range(20):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
    for a, b in zip(*(n.parameters() for n in nets)):
        assert rel_err(a.detach(), b.detach()) < 1e-12


def test_inverse_root_matches_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    X = torch.randn(6, 9, generator=g, dtype=torch.float64)
    H = X @ X.T
    for r, eps in [(4, 1e-6), (2, 1e-3), (6, 0.0)]:
        ours = inverse_root(H, r, eps)
        theirs = torch.from_numpy(scipy_linalg.fractional_matrix_power((H + eps * torch.eye(6, dtype=H.dtype)).numpy(),
                                                                       -1.0 / r).real)
        assert rel_err(ours, theirs) < 1e-9
    f32 = inverse_root(H.float(), 4, 1e-6, torch.float32)
    assert f32.dtype == torch.float32 and rel_err(f32.double(), inverse_root(H, 4, 1e-6)) < 1e-4


def test_shampoo_blocks_and_state():
    rows, cols = [slice(0, 3), slice(3, 5)], [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert block_slices((5, 7), 3) == [(r, c) for r in rows for c in cols]
    net = make_net(torch.float32)
    x, y = net_data(torch.float32)
    opt = optimlab.Shampoo(net.parameters(), block_size=4, root_dtype="float32", start_preconditioning_step=1)
    ((net(x) - y) ** 2).mean().backward()
    opt.step()
    st = opt.state[net.fc.weight]  # 4 x 18 -> blocks 4x4 (four times) and 4x2
    assert [[f.shape for f in fs] for fs in st["factors"]] == [[(4, 4), (4, 4)]] * 4 + [[(4, 4), (2, 2)]]
    assert all(f.dtype == torch.float32 for fs in st["inverse_roots"] for f in fs)
    assert len(opt.state[net.conv.weight]["factors"]) == 1 and "factors" not in opt.state[net.fc.bias]
    sgd = optimlab.Shampoo(net.parameters(), grafting="sgd")  # SGD grafting keeps no second moment for matrices
    ((net(x) - y) ** 2).mean().backward()
    sgd.step()
    assert "exp_avg_sq" not in sgd.state[net.fc.weight] and "exp_avg_sq" in sgd.state[net.fc.bias]


def _matrix_problem(seed=0):
    """Least squares for a 12 x 8 matrix with badly scaled inputs: min ||A W - B||^2 / n."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(64, 12, generator=g, dtype=torch.float64) * torch.logspace(0, 1, 12, dtype=torch.float64)
    W_star = torch.randn(12, 8, generator=g, dtype=torch.float64)
    return A, A @ W_star, W_star


@pytest.mark.parametrize("name,kwargs", [
    ("shampoo", dict(lr=0.05, block_size=5, start_preconditioning_step=1, precondition_frequency=1)),
    ("shampoo", dict(lr=0.03, grafting="none", betas=(0.9, 0.99), matrix_eps=1e-8)),
    ("soap", dict(lr=0.02, betas=(0.9, 0.999), weight_decay=0.0, precondition_frequency=5))])
def test_converges_on_a_matrix_problem(name, kwargs):
    """The last quarter of the run decays the lr to 0 (problems.cooldown). At a constant lr the
    end point is chaotic: ungrafted Shampoo ended anywhere from 8e-6 to 0.39 from W* with the
    gradients perturbed by one ulp, SOAP up to 6.7e-4; with the decay all three end below 3e-7
    under the same perturbations and on other problem instances."""
    A, B, W_star = _matrix_problem()
    w = torch.nn.Parameter(torch.zeros(12, 8, dtype=torch.float64))
    opt = optimlab.create(name, [w], **kwargs)
    for _ in cooldown(opt, 1500):
        opt.zero_grad()
        ((A @ w - B) ** 2).mean().backward()
        opt.step()
    err = ((w.detach() - W_star).norm() / W_star.norm()).item()
    assert err < 1e-3, f"{name}: relative distance to W* {err:.3g}"


# --- the SOAP reference -------------------------------------------------------------------------
class SOAPRef:
    """The authors' SOAP (nikhilvyas/SOAP) as optimlab.SOAP documents it, one tensor at a time."""

    def __init__(self, groups):
        self.groups = groups
        self.state = {}

    def step(self):
        for g in self.groups:
            for p in g["params"]:
                self._param(p, g)

    def _param(self, p, h):
        b1, b2 = h["betas"]
        sb = b2 if h["shampoo_beta"] is None else h["shampoo_beta"]
        st = self.state.setdefault(p, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p), "L": {}, "Q": {}})
        st["t"] += 1
        t, g = st["t"], p.grad
        dims = [i for i in range(p.ndim) if p.ndim >= 2 and p.shape[i] <= h["max_precond_dim"]]

        def c(k):
            return math.sqrt(1 - b2**k) / (1 - b1**k) if h["correct_bias"] else 1.0

        def rot(x, back=False):
            for i in dims:
                x = mode_product(x, st["Q"][i] if back else st["Q"][i].T, i)
            return x

        if not dims:  # plain Adam
            st["m"] = b1 * st["m"] + (1 - b1) * g
            st["v"] = b2 * st["v"] + (1 - b2) * g * g
            step = c(t) * st["m"] / (st["v"].sqrt() + h["eps"])
        elif t == 1:
            for i in dims:
                G = unfold(g, i)
                st["L"][i] = (1 - sb) * G @ G.T
                st["Q"][i] = torch.linalg.eigh(st["L"][i])[1].flip(1)
            return
        else:
            k = t - 1
            g_rot = rot(g)
            st["m"] = b1 * st["m"] + (1 - b1) * g
            st["v"] = b2 * st["v"] + (1 - b2) * g_rot * g_rot
            step = c(k) * rot(rot(st["m"]) / (st["v"].sqrt() + h["eps"]), back=True)
            for i in dims:
                G = unfold(g, i)
                st["L"][i] = sb * st["L"][i] + (1 - sb) * G @ G.T
            if k % h["precondition_frequency"] == 0:
                for i in dims:
                    Q, L = st["Q"][i], st["L"][i]
                    perm = torch.argsort(torch.diag(Q.T @ L @ Q), descending=True)
                    st["v"] = st["v"].index_select(i, perm)
                    st["Q"][i] = torch.linalg.qr(L @ Q[:, perm])[0]
        with torch.no_grad():
            p -= h["lr"] * step
            p *= 1 - h["lr"] * h["weight_decay"]


SOAP_DEFAULTS = dict(lr=3e-3, betas=(0.95, 0.95), shampoo_beta=None, eps=1e-8, weight_decay=0.01,
                     precondition_frequency=10, max_precond_dim=10000, correct_bias=True)


def soap_params(dtype=torch.float64, seed=0):
    """Tensors whose Kronecker factors have full rank from the first step (a rank-deficient
    factor has an arbitrary basis of its null space, so no two implementations would agree):
    a square matrix, an 8 x 5 matrix whose long dim is not preconditioned (max_precond_dim=6),
    a 3-D kernel, a vector and a scalar."""
    g = torch.Generator().manual_seed(seed)

    def P(*shape, scale=0.5):
        return torch.nn.Parameter(scale * torch.randn(shape, generator=g, dtype=dtype))

    return {"wb": P(8, 5), "wa": P(6, 6), "k": P(3, 2, 3), "b": P(6), "s": P(scale=1.0)}


def soap_loss(P, seed=1):
    g = torch.Generator().manual_seed(seed)
    dtype = P["wa"].dtype
    X, Y = torch.randn(32, 8, generator=g, dtype=dtype), torch.randn(32, generator=g, dtype=dtype)
    C = torch.randn(2, 3, generator=g, dtype=dtype)
    h = torch.tanh(X @ P["wb"])
    h = torch.tanh(torch.cat([h, X[:, :1]], 1) @ P["wa"] + P["b"])
    k = torch.tanh(torch.einsum("bi,ijk->bjk", h[:, :3], P["k"]))
    out = P["s"] * ((k * C).sum((1, 2)) + h.sum(1))
    return ((out - Y) ** 2).mean()


SOAP_CASES = {
    "paper-defaults": (dict(max_precond_dim=6), [{}], None),
    "groups-change": (dict(lr=0.01, max_precond_dim=6, precondition_frequency=3),
                      [{}, {"betas": (0.9, 0.99), "shampoo_beta": 0.8, "weight_decay": 0.0, "lr": 0.005,
                            "correct_bias": False}],
                      {"lr": 0.02, "betas": (0.8, 0.9), "weight_decay": 0.1, "eps": 1e-6}),
    "refresh-every-step": (dict(lr=0.005, max_precond_dim=6, precondition_frequency=1, shampoo_beta=0.5), [{}],
                           None),
    "nothing-rotated-is-adam": (dict(max_precond_dim=1), [{}], {"lr": 0.01}),
}


@pytest.mark.parametrize("case", sorted(SOAP_CASES))
def test_soap_matches_reference(case):
    kwargs, groups, change = SOAP_CASES[case]
    Pa, Pb = soap_params(), soap_params()
    ours = optimlab.SOAP(split_groups(list(Pa.values()), groups), **kwargs)
    ref = SOAPRef([{**SOAP_DEFAULTS, **kwargs, **g} for g in split_groups(list(Pb.values()), groups)])
    for step in range(30):
        if change is not None and step == 15:
            for g in ours.param_groups + ref.groups:
                g.update(change)
        for P, opt in ((Pa, ours), (Pb, ref)):
            for p in P.values():
                p.grad = None
            soap_loss(P).backward()
            opt.step()
        for name in Pa:
            err = rel_err(Pa[name].detach(), Pb[name].detach())
            assert err < 1e-10, f"{case}: {name} differs by {err:.3g} after step {step + 1}"


def test_soap_first_step_sets_up_the_basis():
    P = soap_params()
    before = {k: v.detach().clone() for k, v in P.items()}
    opt = optimlab.SOAP(list(P.values()), max_precond_dim=6)
    soap_loss(P).backward()
    opt.step()
    for k in ("wa", "wb", "k"):  # rotated tensors do not move on their first step (nor decay)
        assert torch.equal(P[k].detach(), before[k])
    assert not torch.equal(P["b"].detach(), before["b"])  # plain Adam moves at once
    st = opt.state[P["wb"]]
    assert st["factors"][0] is None and st["eigenbases"][0] is None  # 8 > max_precond_dim
    Q = st["eigenbases"][1]
    assert torch.allclose(Q.T @ Q, torch.eye(5, dtype=Q.dtype), atol=1e-12)


def test_soap_state_dict_round_trip_is_bit_exact():
    P, P2 = soap_params(), soap_params(seed=5)
    opt = optimlab.SOAP(list(P.values()), max_precond_dim=6, precondition_frequency=2)

    def train(P, opt, n):
        for _ in range(n):
            opt.zero_grad()
            soap_loss(P).backward()
            opt.step()

    train(P, opt, 5)
    buf = io.BytesIO()
    torch.save({"P": {k: v.detach() for k, v in P.items()}, "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    with torch.no_grad():
        for k in P2:
            P2[k].copy_(ckpt["P"][k])
    opt2 = optimlab.SOAP(list(P2.values()), max_precond_dim=6, precondition_frequency=2)
    opt2.load_state_dict(ckpt["opt"])
    train(P, opt, 7)
    train(P2, opt2, 7)
    for k in P:
        assert torch.equal(P[k], P2[k]), k


def test_soap_and_shampoo_keep_state_in_the_params_dtype():
    for dtype in (torch.float32, torch.float64):
        P = soap_params(dtype)
        for opt in (optimlab.SOAP(list(P.values()), max_precond_dim=6),
                    optimlab.Shampoo(list(P.values()), start_preconditioning_step=1, root_dtype="float64")):
            for _ in range(3):
                opt.zero_grad()
                soap_loss(P).backward()
                opt.step()
            for p in P.values():
                for k, v in opt.state[p].items():
                    if k == "step":  # the count: a float32 scalar whatever the params' dtype, as in torch
                        continue
                    for t in (v if isinstance(v, list) else [v]):
                        for x in (t if isinstance(t, list) else [t]):
                            assert not isinstance(x, torch.Tensor) or x.dtype == dtype
            assert all(torch.isfinite(p).all() for p in P.values())
