"""The modern optimizers against deliberately naive references of their update rules.

Each reference below is a per-tensor, float64 transcription of optax's formulation (or the
paper's, where the optimizer's docstring says it departs from optax), written from the maths
and sharing no code with optimlab. The table runs optimlab and the reference side by side on
TinyNet (a conv kernel, matrices, biases, a 0-d scale) split into two param groups with
different hyperparameters, with weight decay, a hyperparameter change half-way, and parameters
whose gradient is None on some steps (they are skipped, step counts and all); every step must
agree to 1e-10 relative. The cautious variants (Liang et al. 2024) are referenced the same way.

The second table checks that each elementwise optimizer -- and the layer-wise LAMB, LARS and
NovoGrad and the cautious variants, whose per-tensor norms and counts the compiled kernel takes
from its row layout -- runs on the flat compiled path (``compile=True``) and matches its eager path to
1e-12.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable

import pytest
import torch

import optimlab
from problems import make_net, net_data, split_groups

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# The references: one function per algorithm, updating one parameter ``p`` in place.
# ``g`` is the gradient (negated under maximize), ``st`` the parameter's own state dict, ``h``
# its group's hyperparameters, ``t`` its step count (1 at its first step), ``decay`` whether the
# weight decay applies to it (decay_mask).
# ---------------------------------------------------------------------------------------------
def cautious_mask(u, g):
    """Liang et al. 2024: keep entries where u and g agree, rescale by n / (kept + 1)."""
    keep = (u * g > 0).to(u.dtype)
    return u * keep * (keep.numel() / (keep.sum() + 1))


def maybe_cautious(u, g, h):
    return cautious_mask(u, g) if h.get("cautious") else u


def wd(h, decay):
    return h["weight_decay"] if decay else 0.0


def ref_lion(p, g, st, h, t, decay):
    b1, b2 = h["betas"]
    m = st.setdefault("m", torch.zeros_like(p))
    u = torch.sign((1 - b1) * g + b1 * m)
    st["m"] = b2 * m + (1 - b2) * g
    u = maybe_cautious(u, g, h) + wd(h, decay) * p
    p -= h["lr"] * u


def ref_signsgd(p, g, st, h, t, decay):
    p -= h["lr"] * torch.sign(g + wd(h, decay) * p)


def ref_signum(p, g, st, h, t, decay):
    gg = g + wd(h, decay) * p
    mu = h["momentum"]
    m = st["m"] = mu * st.get("m", torch.zeros_like(p)) + (1 - mu) * gg
    p -= h["lr"] * maybe_cautious(torch.sign(m), g, h)


def ref_adabelief(p, g, st, h, t, decay):
    b1, b2 = h["betas"]
    eps = h["eps"]
    gg = g if h["decoupled_weight_decay"] else g + wd(h, decay) * p
    m = st["m"] = b1 * st.get("m", torch.zeros_like(p)) + (1 - b1) * gg
    s = st["s"] = b2 * st.get("s", torch.zeros_like(p)) + (1 - b2) * (gg - m) ** 2 + eps
    u = (m / (1 - b1**t)) / (torch.sqrt(s / (1 - b2**t)) + eps)
    u = maybe_cautious(u, g, h)
    if h["decoupled_weight_decay"]:
        u = u + wd(h, decay) * p
    p -= h["lr"] * u


def ref_yogi(p, g, st, h, t, decay):
    b1, b2 = h["betas"]
    gg = g + wd(h, decay) * p
    if t == 1:
        st["m"] = torch.full_like(p, h["initial_accumulator_value"])
        st["v"] = torch.full_like(p, h["initial_accumulator_value"])
    m = st["m"] = b1 * st["m"] + (1 - b1) * gg
    v = st["v"] = st["v"] - (1 - b2) * torch.sign(st["v"] - gg**2) * gg**2
    u = (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t)) + h["eps"])
    p -= h["lr"] * maybe_cautious(u, g, h)


def ref_adan(p, g, st, h, t, decay):
    b1, b2, b3 = h["betas"]
    d = g - st["prev"] if t > 1 else torch.zeros_like(p)
    st["prev"] = g.clone()
    m = st["m"] = b1 * st.get("m", torch.zeros_like(p)) + (1 - b1) * g
    v = st["v"] = b2 * st.get("v", torch.zeros_like(p)) + (1 - b2) * d
    n = st["n"] = b3 * st.get("n", torch.zeros_like(p)) + (1 - b3) * (g + b2 * d) ** 2
    u = (m / (1 - b1**t) + b2 * v / (1 - b2**t)) / (torch.sqrt(n / (1 - b3**t)) + h["eps"])
    p -= h["lr"] * (maybe_cautious(u, g, h) + wd(h, decay) * p)


def ref_adopt(p, g, st, h, t, decay):
    b1, b2 = h["betas"]
    gg = g if h["decoupled_weight_decay"] else g + wd(h, decay) * p
    m = st.setdefault("m", torch.zeros_like(p))
    if t == 1:
        st["v"] = gg**2
    else:
        x = gg / torch.clamp(torch.sqrt(st["v"]), min=h["eps"])
        if h["clip_lambda"] is not None:
            c = (t - 1) ** 0.25
            x = torch.clamp(x, -c, c)
        m = st["m"] = b1 * m + (1 - b1) * x
        st["v"] = b2 * st["v"] + (1 - b2) * gg**2
    u = maybe_cautious(m, g, h)
    if h["decoupled_weight_decay"]:
        u = u + wd(h, decay) * p
    p -= h["lr"] * u


def ref_ademamix(p, g, st, h, t, decay):
    b1, b2, b3 = h["betas"]
    alpha, big_t = h["alpha"], h["t_alpha_beta3"]
    if big_t is not None:
        r = min(t, big_t) / big_t
        alpha = alpha * r
        b3 = min(math.exp(math.log(b1) * math.log(b3) / ((1 - r) * math.log(b3) + r * math.log(b1))), b3)
    m1 = st["m1"] = b1 * st.get("m1", torch.zeros_like(p)) + (1 - b1) * g
    m2 = st["m2"] = b3 * st.get("m2", torch.zeros_like(p)) + (1 - b3) * g
    v = st["v"] = b2 * st.get("v", torch.zeros_like(p)) + (1 - b2) * g**2
    u = (m1 / (1 - b1**t) + alpha * m2) / (torch.sqrt(v / (1 - b2**t)) + h["eps"])
    p -= h["lr"] * (maybe_cautious(u, g, h) + wd(h, decay) * p)


def ref_madgrad(p, g, st, h, t, decay):
    gg = g + wd(h, decay) * p
    if t == 1:
        st["x0"], st["G"], st["s"] = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    lamb = (h["lr"] + h["eps"]) * math.sqrt(t)
    st["G"] = st["G"] + lamb * gg**2
    st["s"] = st["s"] + lamb * gg
    z = st["x0"] - st["s"] / (st["G"] ** (1 / 3) + h["eps"])
    p.copy_(h["momentum"] * p + (1 - h["momentum"]) * z)


def trust(p, r, coef=1.0, eps=0.0):
    pn, rn = p.norm(), r.norm()
    return 1.0 if pn == 0 or rn == 0 else coef * pn / (rn + eps)


def ref_lamb(p, g, st, h, t, decay):
    b1, b2 = h["betas"]
    m = st["m"] = b1 * st.get("m", torch.zeros_like(p)) + (1 - b1) * g
    v = st["v"] = b2 * st.get("v", torch.zeros_like(p)) + (1 - b2) * g**2
    r = (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t)) + h["eps"])
    r = maybe_cautious(r, g, h) + wd(h, decay) * p
    p -= h["lr"] * trust(p, r) * r


def ref_lars(p, g, st, h, t, decay):
    r = g + wd(h, decay) * p
    r = h["lr"] * trust(p, r, h["trust_coefficient"], h["eps"]) * r
    b = st["b"] = r + h["momentum"] * st.get("b", torch.zeros_like(p))  # optax's trace
    u = r + h["momentum"] * b if h["nesterov"] else b
    p -= maybe_cautious(u, g, h)


def ref_novograd(p, g, st, h, t, decay):
    b1, b2 = h["betas"]
    sq = (g**2).sum()
    v = st["v"] = sq if t == 1 else b2 * st["v"] + (1 - b2) * sq
    n = g / (torch.sqrt(v) + h["eps"]) + wd(h, decay) * p
    m = st["m"] = n if t == 1 else b1 * st["m"] + n
    p -= h["lr"] * maybe_cautious(m, g, h)


# ---------------------------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    name: str
    cls: str
    ref: Callable
    kwargs: dict[str, Any]
    groups: list[dict[str, Any]]
    change: dict[str, Any]
    steps: int = 40

    def __str__(self):
        return self.name


def C(name, cls, ref, kwargs, groups, change, cautious=True, **kw):
    """A case, plus its cautious twin where the optimizer has the option."""
    out = [Case(name, cls, ref, kwargs, groups, change, **kw)]
    if cautious:
        out.append(Case(name + "-cautious", cls, ref, {**kwargs, "cautious": True}, groups, change, **kw))
    return out


CASES = [
    *C("lion", "Lion", ref_lion, dict(lr=3e-3, weight_decay=0.1), [{}, {"lr": 1e-3, "betas": (0.8, 0.95)}],
       {"lr": 2e-3, "betas": (0.95, 0.98), "weight_decay": 0.3}),
    *C("lion-mask-maximize", "Lion", ref_lion, dict(lr=1e-3, weight_decay=0.5, decay_mask="no_bias_norm",
                                                   maximize=True), [{}, {"weight_decay": 0.0}], {"lr": 5e-4}),
    *C("signsgd", "SignSGD", ref_signsgd, dict(lr=2e-3, weight_decay=0.05), [{}, {"lr": 1e-3, "weight_decay": 0.0}],
       {"lr": 1e-3, "weight_decay": 0.2}, cautious=False),
    *C("signum", "Signum", ref_signum, dict(lr=2e-3, weight_decay=0.05), [{}, {"lr": 1e-3, "momentum": 0.5}],
       {"lr": 1e-3, "momentum": 0.8, "weight_decay": 0.01}),
    *C("adabelief", "AdaBelief", ref_adabelief, dict(lr=3e-3, weight_decay=0.1),
       [{}, {"lr": 1e-3, "betas": (0.8, 0.99), "eps": 1e-10}], {"lr": 2e-3, "betas": (0.85, 0.995), "weight_decay": 0.2}),
    *C("adabelief-coupled", "AdaBelief", ref_adabelief, dict(lr=3e-3, weight_decay=0.1, decoupled_weight_decay=False),
       [{}, {"lr": 1e-3, "eps": 1e-8}], {"lr": 2e-3, "eps": 1e-12}, cautious=False),
    *C("yogi", "Yogi", ref_yogi, dict(lr=1e-2, weight_decay=0.05),
       [{}, {"lr": 5e-3, "betas": (0.8, 0.99), "eps": 1e-4, "initial_accumulator_value": 1e-3}],
       {"lr": 3e-3, "betas": (0.85, 0.995), "eps": 1e-3}),
    *C("adan", "Adan", ref_adan, dict(lr=3e-3, weight_decay=0.1), [{}, {"lr": 1e-3, "betas": (0.9, 0.8, 0.95)}],
       {"lr": 2e-3, "betas": (0.95, 0.9, 0.999), "weight_decay": 0.02}),
    *C("adan-maximize-mask", "Adan", ref_adan, dict(lr=2e-3, weight_decay=0.3, maximize=True, decay_mask="no_bias_norm"),
       [{}, {"eps": 1e-6}], {"lr": 1e-3}, cautious=False),
    *C("adopt", "ADOPT", ref_adopt, dict(lr=3e-3, weight_decay=0.05), [{}, {"lr": 1e-3, "betas": (0.8, 0.99)}],
       {"lr": 2e-3, "betas": (0.85, 0.999), "eps": 1e-8}),
    *C("adopt-decoupled-noclip", "ADOPT", ref_adopt, dict(lr=3e-3, weight_decay=0.1, decoupled_weight_decay=True,
                                                          clip_lambda=None), [{}, {"lr": 1e-3}], {"lr": 2e-3}),
    *C("ademamix", "AdEMAMix", ref_ademamix, dict(lr=2e-3, weight_decay=0.1),
       [{}, {"lr": 1e-3, "betas": (0.8, 0.99, 0.999), "alpha": 2.0}], {"lr": 1e-3, "alpha": 8.0, "weight_decay": 0.2}),
    *C("ademamix-warmup", "AdEMAMix", ref_ademamix, dict(lr=2e-3, t_alpha_beta3=25), [{}, {"t_alpha_beta3": 7}],
       {"lr": 1e-3, "betas": (0.85, 0.999, 0.99)}),
    *C("madgrad", "MADGRAD", ref_madgrad, dict(lr=1e-2, weight_decay=0.05),
       [{}, {"lr": 5e-3, "momentum": 0.5, "eps": 1e-4}], {"lr": 2e-2, "momentum": 0.95}, cautious=False),
    *C("madgrad-maximize", "MADGRAD", ref_madgrad, dict(lr=1e-2, momentum=0.0, maximize=True),
       [{}, {"weight_decay": 0.1}], {"lr": 5e-3}, cautious=False),
    *C("lamb", "LAMB", ref_lamb, dict(lr=1e-2, weight_decay=0.1), [{}, {"lr": 5e-3, "betas": (0.8, 0.99), "eps": 1e-8}],
       {"lr": 2e-2, "betas": (0.85, 0.995), "weight_decay": 0.01}),
    *C("lars", "LARS", ref_lars, dict(lr=2.0, weight_decay=1e-3),
       [{}, {"lr": 1.0, "momentum": 0.5, "trust_coefficient": 1e-2, "eps": 1e-6}],
       {"lr": 3.0, "momentum": 0.95, "weight_decay": 1e-2}),
    *C("lars-nesterov-mask", "LARS", ref_lars, dict(lr=2.0, weight_decay=0.1, nesterov=True, decay_mask="no_bias_norm"),
       [{}, {"momentum": 0.8}], {"lr": 1.0}, cautious=False),
    *C("novograd", "NovoGrad", ref_novograd, dict(lr=1e-2, weight_decay=0.01),
       [{}, {"lr": 5e-3, "betas": (0.95, 0.98), "eps": 1e-8}], {"lr": 3e-3, "betas": (0.8, 0.5), "weight_decay": 0.1}),
    *C("novograd-mask", "NovoGrad", ref_novograd, dict(lr=1e-2, weight_decay=0.1, decay_mask="no_bias_norm"),
       [{}, {"lr": 5e-3}], {"lr": 3e-3}, cautious=False),
]


def _mask(h, p):
    mask = h.get("decay_mask")
    return True if mask is None else mask(None, p)


def run_case(case):
    """optimlab and the reference side by side; the worst relative deviation over all steps."""
    net_a = make_net(F64)
    net_b = copy.deepcopy(net_a)
    opt = getattr(optimlab, case.cls)(split_groups(list(net_a.parameters()), case.groups), **case.kwargs)
    ref_groups = [g["params"] for g in split_groups(list(net_b.parameters()), case.groups)]
    ref_state: dict[int, dict] = {}
    x, y = net_data(F64)
    worst = 0.0
    for step in range(case.steps):
        if step == case.steps // 2:
            for g in opt.param_groups:
                g.update(case.change)
        for net in (net_a, net_b):
            net.zero_grad(set_to_none=True)
            ((net(x) - y) ** 2).mean().backward()
            if step % 3 == 1:
                net.fc.bias.grad = None
                net.scale.grad = None
        opt.step()
        with torch.no_grad():
            for group, params in zip(opt.param_groups, ref_groups):
                h = {k: v for k, v in group.items() if k != "params"}
                for p in params:
                    if p.grad is None:
                        continue
                    st = ref_state.setdefault(id(p), {"t": 0})
                    st["t"] += 1
                    g = -p.grad if h["maximize"] else p.grad
                    case.ref(p, g, st, h, st["t"], _mask(h, p))
        for pa, pb in zip(net_a.parameters(), net_b.parameters()):
            assert torch.isfinite(pa).all(), f"{case.name}: non-finite parameters at step {step}"
            worst = max(worst, ((pa - pb).abs().max() / pb.abs().max().clamp_min(1e-12)).item())
    return worst


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(case):
    worst = run_case(case)
    assert worst <= 1e-10, f"{case.name}: max relative deviation from the reference {worst:.3g}"


def test_table_covers_every_new_optimizer():
    covered = {c.cls for c in CASES}
    cautious = {c.cls for c in CASES if c.kwargs.get("cautious")}
    for name in ("lion", "signsgd", "signum", "adabelief", "yogi", "adan", "adopt", "ademamix", "madgrad", "lamb",
                 "lars", "novograd"):
        cls = optimlab.REGISTRY[name].cls.__name__
        assert cls in covered, f"no reference case for {cls}"
        if "cautious" in optimlab.REGISTRY[name].defaults:
            assert cls in cautious, f"no cautious reference case for {cls}"


def test_cautious_masks_and_rescales():
    """The transform on its own, with a hand-computed mask (and as a building block for Adam)."""
    from optimlab.transforms import cautious, scale_by_adam

    w = torch.nn.Parameter(torch.zeros(4, dtype=F64))
    u = optimlab.core.Updates([w], [torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=F64)], {}, [None], 1,
                              updates=[torch.tensor([2.0, 1.0, -1.0, 4.0], dtype=F64)])
    cautious().update(u, {})
    # kept: entries 0 and 3 (same sign as g); scale 4 / (2 + 1)
    torch.testing.assert_close(u.updates[0], torch.tensor([2.0, 0.0, 0.0, 4.0], dtype=F64) * 4 / 3)
    u2 = optimlab.core.Updates([w], [torch.tensor([1.0, -2.0], dtype=F64)], {}, [None], 1,
                               updates=[torch.tensor([2.0, 1.0], dtype=F64)])
    cautious(rescale=False).update(u2, {})
    torch.testing.assert_close(u2.updates[0], torch.tensor([2.0, 0.0], dtype=F64))
    assert cautious(rescale=False).elementwise and not cautious().elementwise
    # C-Adam from the pieces: never moves a coordinate uphill
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=F64))
    opt = optimlab.ChainOptimizer([p], [scale_by_adam(), cautious()], dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8))
    for grad in ([1.0, 1.0], [-1.0, 1.0]):
        before = p.detach().clone()
        p.grad = torch.tensor(grad, dtype=F64)
        opt.step()
        assert ((p.detach() - before) * p.grad <= 0).all()


# ---------------------------------------------------------------------------------------------
# compile=True: the flat compiled path gives the eager numbers.
# ---------------------------------------------------------------------------------------------
ELEMENTWISE = {  # name -> (kwargs, groups, change): every group runs the same chain
    "Lion": (dict(lr=3e-3, weight_decay=0.1), [{}, {"lr": 1e-3, "betas": (0.8, 0.95)}], {"lr": 2e-3, "weight_decay": 0.3}),
    "SignSGD": (dict(lr=2e-3, weight_decay=0.05), [{}, {"lr": 1e-3}], {"lr": 1e-3, "weight_decay": 0.2}),
    "Signum": (dict(lr=2e-3, weight_decay=0.05), [{}, {"momentum": 0.5}], {"lr": 1e-3, "momentum": 0.8}),
    "AdaBelief": (dict(lr=3e-3, weight_decay=0.1), [{}, {"betas": (0.8, 0.99), "eps": 1e-10}], {"lr": 2e-3}),
    "Yogi": (dict(lr=1e-2, weight_decay=0.05), [{}, {"eps": 1e-4, "initial_accumulator_value": 1e-3}],
             {"lr": 3e-3, "betas": (0.85, 0.995)}),
    "Adan": (dict(lr=3e-3, weight_decay=0.1), [{}, {"betas": (0.9, 0.8, 0.95)}], {"lr": 2e-3, "weight_decay": 0.02}),
    "ADOPT": (dict(lr=3e-3, weight_decay=0.05), [{}, {"betas": (0.8, 0.99)}], {"lr": 2e-3, "eps": 1e-8}),
    "AdEMAMix": (dict(lr=2e-3, weight_decay=0.1, t_alpha_beta3=25), [{}, {"alpha": 2.0, "t_alpha_beta3": 7}],
                 {"lr": 1e-3, "alpha": 8.0}),
    "MADGRAD": (dict(lr=1e-2, weight_decay=0.05), [{}, {"momentum": 0.5, "eps": 1e-4}], {"lr": 2e-2}),
    # layer-wise and cautious chains: per-tensor reductions inside the compiled kernel
    "LAMB": (dict(lr=5e-3, weight_decay=0.1), [{}, {"betas": (0.8, 0.99), "eps": 1e-8}], {"lr": 2e-3}),
    "LARS": (dict(lr=3.0, weight_decay=1e-3, eps=1e-9), [{}, {"momentum": 0.5, "trust_coefficient": 2e-3}],
             {"lr": 1.0, "nesterov": True}),
    "Lion-cautious": (dict(lr=3e-3, weight_decay=0.1, cautious=True), [{}, {"lr": 1e-3}], {"lr": 2e-3}),
    "LAMB-cautious": (dict(lr=5e-3, weight_decay=0.1, cautious=True), [{}, {"lr": 1e-3}], {"lr": 2e-3}),
    "Adan-cautious-max": (dict(lr=3e-3, cautious=True, maximize=True), [{}, {"lr": 1e-3}], {"lr": 2e-3}),
    "NovoGrad": (dict(lr=1e-2, weight_decay=0.05), [{}, {"betas": (0.95, 0.98), "eps": 1e-8}], {"lr": 5e-3}),
    "NovoGrad-cautious": (dict(lr=1e-2, cautious=True), [{}, {"lr": 3e-3}], {"lr": 5e-3}),
}
PER_TENSOR_STATE = {"exp_avg_sq"}  # NovoGrad's: one number per tensor (0-d), not shaped like p


def flat_buckets(opt):
    return [b for lay in opt._engine._layouts.values() for b in lay.buckets] if opt._engine else []


@pytest.mark.parametrize("cls", sorted(ELEMENTWISE))
def test_compiled_matches_eager(cls):
    kwargs, groups, change = ELEMENTWISE[cls]
    nets = [make_net(F64) for _ in range(2)]
    opt_cls = getattr(optimlab, cls.split("-")[0])
    opts = [opt_cls(split_groups(list(net.parameters()), groups), compile=flag, **kwargs)
            for net, flag in zip(nets, (True, False))]
    x, y = net_data(F64)
    for step in range(20):
        for net, opt in zip(nets, opts):
            if step == 10:
                for g in opt.param_groups:
                    g.update(change)
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            if step % 3 == 1:
                net.fc.bias.grad = None
            opt.step()
    assert flat_buckets(opts[0]), f"{cls} did not run on the flat compiled path"
    for a, b in zip(*(net.parameters() for net in nets)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    for pa, pb in zip(*(net.parameters() for net in nets)):
        sa, sb = opts[0].state[pa], opts[1].state[pb]
        assert sa.keys() == sb.keys()
        for k, v in sa.items():
            if isinstance(v, torch.Tensor) and k != "step":  # the count: a 0-d tensor, as in torch
                want = () if cls.startswith("NovoGrad") and k in PER_TENSOR_STATE else pa.shape
                assert v.shape == want, f"{cls}: state {k} has shape {v.shape}, expected {want}"
                torch.testing.assert_close(v, sb[k], rtol=1e-12, atol=0)
