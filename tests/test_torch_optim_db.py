"""optimlab's classes with torch names, held to what torch's own optimizer suite checks.

Every configuration and error input comes from torch's ``optim_db``
(``torch.testing._internal.common_optimizers``, shipped in the wheel; it needs the
``expecttest`` package). For each optimlab class named like a torch.optim class:

1. trajectory   same parameters as torch.optim after every step (float64, 1e-10 relative), for
                every optim input and every implementation torch has on CPU (for-loop, foreach;
                fused -- optimlab's compiled path -- on the default input), with a step without
                gradients and a frozen layer; strided parameters; a tensor learning rate; LBFGS
                through a closure, including the points its line search evaluates;
   impls        optimlab's own for-loop / foreach / fused agree (parameters and state);
2. errors       every error input raises (or warns) the same exception type as torch;
3. complex      a complex parameter steps like torch, and like its own real view;
4. state_dict   optimlab -> torch, torch -> optimlab and optimlab -> optimlab: load, continue,
                same trajectory; per-parameter state laid out as torch lays it out;
5. hooks        step / state_dict / load_state_dict hooks fire in torch's order, with torch's
                results (a load post-hook that writes into ``state`` included);
6. deepcopy     same public attributes, independent state, same trajectory afterwards;
7. sparse       uncoalesced sparse gradients where torch supports them;
8. differentiable  gradcheck through ``step`` (torch's TestDifferentiableOptimizer cases, tensor
                hyperparameters that require grad, and every optim input), values equal torch's.

Known failures are listed once, in ``KNOWN_FAILURES`` below, as strict xfails: delete an entry
when its cause is fixed (a fixed case that is still listed fails as XPASS). Cases whose outcome
depends on the machine's rounding are listed in ``MACHINE_DEPENDENT``, as xfails that may pass.

    pytest tests/test_torch_optim_db.py -q
    pytest tests/test_torch_optim_db.py -q -k "Adam and trajectory"
"""

from __future__ import annotations

import copy
import functools
import re

import pytest
import torch
from torch.autograd import gradcheck
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import optimlab

# needs the expecttest package (in the test extra): a missing one must fail, not skip
import torch.testing._internal.common_optimizers as common_optimizers  # noqa: E402
OptimizerErrorEnum = common_optimizers.OptimizerErrorEnum

# ---------------------------------------------------------------------------------------------
# Known failures: cause -> test ids ("*" matches anything). Strict: a fixed case must be removed.
# ---------------------------------------------------------------------------------------------
KNOWN_FAILURES: dict[str, list[str]] = {
    "differentiable=True: Rprop's step_size leaves the graph (torch's stays on it through sign(), whose "
    "derivative is 0: the same gradients, one output fewer)": [
        "test_differentiable_inputs[Rprop-*]",
    ],
    "LBFGS line_search_fn='strong_wolfe' on optim_db's input: torch's trajectory blows up (|p| ~ 1e17) "
    "through degenerate cubic interpolations, and ours leaves it there": [
        "test_closure_trajectory[LBFGS-strong_wolfe]",
    ],
    "LBFGS with a tensor lr keeps state['t'] as a float (torch: a 0-d tensor)": [
        "test_state_format[LBFGS-Tensor_lr]",
    ],
    "SparseAdam, 0-d parameter with a sparse gradient: output with shape [] doesn't match the "
    "broadcast shape [1]": [
        "test_sparse[SparseAdam-scalar_param]",
    ],
}

# ---------------------------------------------------------------------------------------------
# The table: torch's optim_db, restricted to the names optimlab exports.
# ---------------------------------------------------------------------------------------------
INFOS = {info.optim_cls.__name__: info for info in common_optimizers.optim_db}
OURS = {name: getattr(optimlab, name) for name in INFOS if isinstance(getattr(optimlab, name, None), type)}
STEPPED = [n for n in OURS if not INFOS[n].step_requires_closure]  # per-step trajectory table
CLOSURE = [n for n in OURS if INFOS[n].step_requires_closure]  # LBFGS
F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)  # float64, a handful of steps: only rounding may differ
TOL_F32_SCALAR = dict(rtol=1.3e-6, atol=1e-7)  # optim_db's tensor lr is float32, and so is torch's maths on it


# Cases whose outcome depends on the machine's rounding (a trajectory that blows up): xfails
# that may pass. Each names where the same property is checked on a problem that does not.
MACHINE_DEPENDENT: dict[str, list[str]] = {
    "LBFGS line_search_fn='strong_wolfe' on optim_db's input blows up (see above); which branch of "
    "the line search runs -- so whether state['t'] ends a float or a 0-d tensor, and where a resumed "
    "run goes -- depends on the CPU's rounding: both passed on one machine and fail on another with "
    "the same code (an AMD EPYC, 8014e95). On a problem that does not blow up, test_second_order's "
    "test_lbfgs_follows_torch[strong-wolfe] and test_lbfgs_state_dict_is_deterministic_and_loads_"
    "both_ways_with_torch check the trajectory, the state's names and the cross-loads": [
        "test_state_format[LBFGS-strong_wolfe]",
        "test_state_dict_cross_load[LBFGS-strong_wolfe]",
    ],
}


def _xfail_marks(test_id: str):
    for table, strict in ((KNOWN_FAILURES, True), (MACHINE_DEPENDENT, False)):
        for cause, patterns in table.items():
            for pattern in patterns:
                if re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), test_id):
                    return [pytest.mark.xfail(strict=strict, reason=cause)]
    return []


def cases(test: str, rows):
    """``pytest.param`` rows for ``test``; ``rows`` are ``(id, *values)``."""
    return [pytest.param(*values, id=row_id, marks=_xfail_marks(f"{test}[{row_id}]"))
            for row_id, *values in rows]


def optim_inputs(name, dtype=F64):
    """Fresh inputs on every call: some hold tensors (a tensor lr) that a run must not share."""
    return INFOS[name].optim_inputs_func(device="cpu", dtype=dtype)


@functools.cache
def input_rows(name):
    """``(slug, index)`` for each optim input of ``name``."""
    seen, rows = set(), []
    for index, optim_input in enumerate(optim_inputs(name)):
        slug = re.sub(r"[^0-9A-Za-z]+", "_", optim_input.desc).strip("_") or "default"
        slug = slug if slug not in seen else f"{slug}_{index}"
        seen.add(slug)
        rows.append((slug, index))
    return rows


@functools.cache
def impls(name):
    """torch's implementations of ``name`` on CPU, for-loop first."""
    info = INFOS[name]
    found = ["forloop"] + [i for i in ("foreach",) if i in info.supported_impls]
    if "fused" in info.supported_impls and "cpu" in info.supports_fused_on:
        found.append("fused")
    return found


def impls_for(name, index):
    """``fused`` is optimlab's compiled path: each configuration compiles (~2 s), so only the
    default input runs fused here (tests/test_compiled.py holds compiled == eager in general)."""
    return [impl for impl in impls(name) if impl != "fused" or index == 0]


def impl_kwargs(name, impl):
    if impl == "forloop":
        return {"foreach": False} if "foreach" in INFOS[name].supported_impls else {}
    return {impl: True}


def kwargs_of(name, index, impl="forloop"):
    return {**optim_inputs(name)[index].kwargs, **impl_kwargs(name, impl)}


# ---------------------------------------------------------------------------------------------
# A small model as a list of tensors: two sigmoid layers and a 0-d scale (Muon: two matrices).
# ---------------------------------------------------------------------------------------------
X = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])


def make_params(name, dtype=F64, seed=0, contiguous=True):
    """``contiguous=False``: every parameter a strided view (``x[..., 0]`` of a larger tensor)."""
    shapes = [(3, 2), (4, 3)] if name == "Muon" else [(3, 2), (3,), (1, 3), (1,), ()]
    if INFOS[name].only_supports_sparse_grads:
        shapes = shapes[:-1]  # a 0-d parameter with a sparse gradient has its own case in test_sparse
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        return [(0.5 * torch.randn(s, generator=g, dtype=dtype)).requires_grad_() for s in shapes]
    return [(0.5 * torch.randn(*s, 2, generator=g, dtype=dtype))[..., 0].requires_grad_() for s in shapes]


def loss_of(params, frozen=False):
    """``frozen`` detaches the second layer, so its parameters get no gradient."""
    x = X.to(params[0].dtype)
    if len(params) == 2:
        w1, w2 = params
        w2 = w2.detach() if frozen else w2
        return torch.sigmoid(torch.sigmoid(x @ w1.T) @ w2.T).sum()
    w1, b1, w2, b2, *scale = params
    if frozen:
        w2, b2 = w2.detach(), b2.detach()
    out = torch.sigmoid(torch.sigmoid(x @ w1.T + b1) @ w2.T + b2)
    return (out * (1 + scale[0])).sum() if scale else out.sum()


def set_grads(name, params, step):
    """Step 2 has no gradients at all and steps 3-4 freeze a layer, as in torch's comparisons."""
    for p in params:
        p.grad = None
    if step != 2:
        loss_of(params, frozen=step in (3, 4)).backward()
    if INFOS[name].only_supports_sparse_grads:
        for p in params:
            if p.grad is not None:
                p.grad = p.grad.to_sparse()


def do_step(name, opt, params, step):
    if INFOS[name].step_requires_closure:
        def closure():
            opt.zero_grad()
            loss = loss_of(params)
            loss.backward()
            return loss
        opt.step(closure)
    else:
        set_grads(name, params, step)
        opt.step()


def flat(params):
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


def run(cls, name, kwargs, steps=7, contiguous=True):
    params = make_params(name, contiguous=contiguous)
    opt = cls(params, **copy.deepcopy(kwargs))
    history = []
    for step in range(steps):
        do_step(name, opt, params, step)
        history.append(flat(params))
    return torch.stack(history), opt, params


def assert_same(ours, theirs, what="", kwargs=None):
    f32 = any(torch.is_tensor(v) and v.dtype == torch.float32 for v in (kwargs or {}).values())
    torch.testing.assert_close(ours, theirs, **(TOL_F32_SCALAR if f32 else TOL), msg=lambda m: f"{what}\n{m}")


def assert_like_torch(impl, go, ours, what="", kwargs=None):
    """``ours`` equals torch's run ``go(kwargs_impl)`` with the same implementation or, where
    torch's own implementations disagree beyond rounding (its foreach ASGD drifts ~1e-9 from its
    for-loop in float64), torch's for-loop -- its ground truth."""
    try:
        assert_same(ours, go(impl), f"{what} vs torch.optim ({impl})", kwargs)
    except AssertionError:
        if impl == "forloop":
            raise
        assert_same(ours, go("forloop"), f"{what} vs torch.optim (forloop)", kwargs)


def state_tensors(opt, params):
    return {(i, k): v for i, p in enumerate(params) for k, v in opt.state[p].items() if torch.is_tensor(v)}


# ---------------------------------------------------------------------------------------------
# 1. Trajectories.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,index,impl", cases("test_trajectory", [
    (f"{n}-{slug}-{impl}", n, i, impl) for n in STEPPED for slug, i in input_rows(n) for impl in impls_for(n, i)]))
def test_trajectory(name, index, impl):
    kwargs = kwargs_of(name, index, impl)
    ours, _, _ = run(OURS[name], name, kwargs)
    go = lambda i: run(INFOS[name].optim_cls, name, kwargs_of(name, index, i))[0]  # noqa: E731
    assert_like_torch(impl, go, ours, kwargs=kwargs)


@pytest.mark.parametrize("name,impl", cases("test_noncontiguous", [
    (f"{n}-{impl}", n, impl) for n in STEPPED for impl in impls(n)]))
def test_noncontiguous(name, impl):
    """Strided parameters (torch's test_forloop_goes_right_direction with contiguous=False)."""
    kwargs = kwargs_of(name, 0, impl)
    ours, _, params = run(OURS[name], name, kwargs, contiguous=False)
    assert not params[0].is_contiguous()
    go = lambda i: run(INFOS[name].optim_cls, name, kwargs_of(name, 0, i), contiguous=False)[0]  # noqa: E731
    assert_like_torch(impl, go, ours, "strided parameters", kwargs)


@pytest.mark.parametrize("name,impl", cases("test_tensor_lr", [
    (f"{n}-{impl}", n, impl) for n in STEPPED for impl in impls(n)]))
def test_tensor_lr(name, impl):
    """A 0-d tensor lr steps like the same float lr (torch may refuse some impls; so may we)."""
    kwargs = {**kwargs_of(name, 0, impl), "lr": 1e-3}
    try:
        ours, _, _ = run(OURS[name], name, {**kwargs, "lr": torch.tensor(1e-3, dtype=F64)})
    except ValueError:
        with pytest.raises(ValueError):
            INFOS[name].optim_cls(make_params(name), **{**kwargs, "lr": torch.tensor(1e-3)})
        return
    float_lr = lambda i: run(INFOS[name].optim_cls, name, {**kwargs_of(name, 0, i), "lr": 1e-3})[0]  # noqa: E731
    assert_like_torch(impl, float_lr, ours, "tensor lr vs float lr")


def lbfgs_evaluations(cls, kwargs, steps=3):
    """Parameters at every closure call: the iterates and the points a line search tries."""
    params = make_params("LBFGS")
    opt = cls(params, **copy.deepcopy(kwargs))
    seen = []

    def closure():
        opt.zero_grad()
        seen.append(flat(params))
        loss = loss_of(params)
        loss.backward()
        return loss

    losses = [opt.step(closure) for _ in range(steps)]
    return torch.stack(seen), torch.stack([torch.as_tensor(loss).detach().reshape(()) for loss in losses])


@pytest.mark.parametrize("name,index", cases("test_closure_trajectory", [
    (f"{n}-{slug}", n, i) for n in CLOSURE for slug, i in input_rows(n)]))
def test_closure_trajectory(name, index):
    kwargs = kwargs_of(name, index)
    theirs, their_losses = lbfgs_evaluations(INFOS[name].optim_cls, kwargs)
    ours, our_losses = lbfgs_evaluations(OURS[name], kwargs)
    assert ours.shape == theirs.shape, f"{len(ours)} closure calls, torch makes {len(theirs)}"
    assert_same(ours, theirs, "parameters at each closure call", kwargs)
    assert_same(our_losses, their_losses, "losses returned by step", kwargs)


@pytest.mark.parametrize("name,index", cases("test_impls_agree", [
    (f"{n}-{slug}", n, i) for n in STEPPED if len(impls(n)) > 1 for slug, i in input_rows(n)]))
def test_impls_agree(name, index):
    """optimlab's for-loop, foreach and fused paths: same parameters and state (torch's tolerance)."""
    runs = {impl: run(OURS[name], name, kwargs_of(name, index, impl)) for impl in impls_for(name, index)}
    ref_traj, ref_opt, ref_params = runs["forloop"]
    for impl, (traj, opt, params) in runs.items():
        torch.testing.assert_close(traj, ref_traj, msg=lambda m: f"{impl} vs forloop\n{m}")
        torch.testing.assert_close(state_tensors(opt, params), state_tensors(ref_opt, ref_params),
                                   msg=lambda m: f"{impl} state vs forloop\n{m}")


# ---------------------------------------------------------------------------------------------
# 2. Error inputs.
# ---------------------------------------------------------------------------------------------
def error_inputs(name):
    func = INFOS[name].optim_error_inputs_func
    return [] if func is None else func(device="cpu", dtype=torch.float32)


def raises_like(error_type):
    return pytest.warns(error_type) if issubclass(error_type, Warning) else pytest.raises(error_type)


@pytest.mark.parametrize("name,index", cases("test_errors", [
    (f"{n}-{re.sub(r'[^0-9A-Za-z]+', '_', e.optimizer_error_input.desc).strip('_')}", n, i)
    for n in OURS for i, e in enumerate(error_inputs(n))]))
def test_errors(name, index):
    """Same exception type as torch (optimlab's messages may say more)."""
    for cls in (INFOS[name].optim_cls, OURS[name]):  # torch first: the table itself is checked
        error = error_inputs(name)[index]
        params, kwargs = error.optimizer_error_input.params, error.optimizer_error_input.kwargs
        if error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
            with raises_like(error.error_type):
                cls(params, **kwargs)
        else:
            opt = cls(params, **kwargs)
            with raises_like(error.error_type):
                opt.step()


# ---------------------------------------------------------------------------------------------
# 3. Complex parameters (torch steps a complex tensor as its real view).
# ---------------------------------------------------------------------------------------------
def drive_with_recorded_grads(name, opt, params, grads, losses, steps=3):
    """Feed call k of the closure ``grads[k]`` (real views) and ``losses[k]``; record params."""
    seen = []

    def closure():
        k = len(seen)
        seen.append(torch.cat([torch.view_as_real(p.detach()).reshape(-1) if p.is_complex()
                               else p.detach().reshape(-1) for p in params]).clone())
        for p, g in zip(params, grads[k]):
            p.grad = torch.view_as_complex(g.clone()) if p.is_complex() else g.clone()
        return losses[k]

    for _ in range(steps):
        if INFOS[name].step_requires_closure:
            opt.step(closure)
        else:
            closure()
            opt.step()
    return torch.stack(seen)


@pytest.mark.parametrize("name,index,impl", cases("test_complex", [
    (f"{n}-{slug}-{impl}", n, i, impl) for n in OURS if INFOS[n].supports_complex
    for slug, i in input_rows(n) for impl in impls(n) if impl != "fused"]))
def test_complex(name, index, impl):
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(3, 2, dtype=torch.complex128, generator=g),
             torch.randn(3, dtype=torch.complex128, generator=g),
             torch.randn(3, 2, dtype=F64, generator=g)]  # the last one is real: mixing must work
    shapes = [torch.view_as_real(p).shape if p.is_complex() else p.shape for p in start]
    calls = 80  # enough for LBFGS's inner iterations
    grads = [[torch.randn(s, dtype=F64, generator=g) for s in shapes] for _ in range(calls)]
    losses = [torch.randn((), dtype=F64, generator=g) for _ in range(calls)]

    def go(cls, as_real, impl=impl):
        params = [(torch.view_as_real(p).clone() if as_real and p.is_complex() else p.clone()).requires_grad_()
                  for p in start]
        opt = cls(params, **kwargs_of(name, index, impl))
        return drive_with_recorded_grads(name, opt, params, grads, losses)

    kwargs = kwargs_of(name, index, impl)
    ours = go(OURS[name], as_real=False)
    assert_like_torch(impl, lambda i: go(INFOS[name].optim_cls, False, i), ours, "complex parameters", kwargs)
    assert_same(go(OURS[name], as_real=True), ours, "real views vs complex parameters", kwargs)


# ---------------------------------------------------------------------------------------------
# 4. state_dict across implementations.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,index", cases("test_state_dict_cross_load", [
    (f"{n}-{slug}", n, i) for n in OURS for slug, i in input_rows(n)]))
def test_state_dict_cross_load(name, index):
    """optimlab -> torch, torch -> optimlab and optimlab -> optimlab: load, continue, same steps."""
    kwargs = kwargs_of(name, index)
    classes = {"ours": OURS[name], "torch": INFOS[name].optim_cls}
    snapshots, histories = {}, {}
    for who, cls in classes.items():  # 7 uninterrupted steps; a checkpoint after 4 of them
        params = make_params(name)
        opt = cls(params, **copy.deepcopy(kwargs))
        histories[who] = []
        for step in range(7):
            if step == 4:  # the state has seen a step without gradients and a frozen layer
                snapshots[who] = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]
            do_step(name, opt, params, step)
            histories[who].append(flat(params))
    for src, dst in (("ours", "torch"), ("torch", "ours"), ("ours", "ours")):
        state_dict, start = snapshots[src]
        params = [p.clone().requires_grad_() for p in start]
        loaded = classes[dst](params, **copy.deepcopy(kwargs))
        loaded.load_state_dict(copy.deepcopy(state_dict))
        for step in range(4, 7):
            do_step(name, loaded, params, step)
            assert_same(flat(params), histories[src][step], f"{src} -> {dst}: step {step} after loading", kwargs)


@pytest.mark.parametrize("name,index", cases("test_state_format", [
    (f"{n}-{slug}", n, i) for n in OURS for slug, i in input_rows(n)]))
def test_state_format(name, index):
    """Per-parameter state kept as torch keeps it: same keys, a tensor wherever torch has one
    (torch's foreach-vs-forloop comparison clones every state value), same shapes."""
    def kind(v):
        if torch.is_tensor(v):
            return tuple(v.shape)
        return "number" if isinstance(v, (int, float)) else type(v).__name__

    def layout(cls, impl):
        _, opt, params = run(cls, name, kwargs_of(name, index, impl), steps=3)
        return [{k: kind(v) for k, v in opt.state[p].items()} for p in params]

    for impl in impls_for(name, index):
        assert layout(OURS[name], impl) == layout(INFOS[name].optim_cls, impl), impl


# ---------------------------------------------------------------------------------------------
# 5. Hooks.
# ---------------------------------------------------------------------------------------------
def hook_log(cls, name):
    """Everything the hooks see, in order, through steps, state_dict() and load_state_dict()."""
    log = []
    params = make_params(name, torch.float32)
    opt = cls(params, **copy.deepcopy(optim_inputs(name, torch.float32)[0].kwargs))

    def closure():
        opt.zero_grad()
        loss = loss_of(params)
        loss.backward()
        return loss

    def step():
        if INFOS[name].step_requires_closure:
            opt.step(closure)
        else:
            set_grads(name, params, 0)
            opt.step()

    global_handles = [register_optimizer_step_pre_hook(lambda o, a, k: log.append("global pre")),
                      register_optimizer_step_post_hook(lambda o, a, k: log.append("global post"))]
    try:
        handles = [
            opt.register_step_pre_hook(lambda o, a, k: log.append(("pre", o is opt, len(a), sorted(k)))),
            opt.register_step_post_hook(lambda o, a, k: log.append(("post", o is opt, len(a), sorted(k)))),
            opt.register_step_pre_hook(lambda o, a, k: log.append("pre 2")),
        ]
        step()
        for h in handles:
            h.remove()
        step()  # removed hooks stay silent; global ones still fire
    finally:
        for h in global_handles:
            h.remove()

    def sd_pre(o):
        log.append("state_dict pre")
        o.state["test"] = 1

    def sd_post(o, sd):
        log.append(("state_dict post", "test" in sd["state"]))
        sd["state"].pop("test", None)
        sd["post hook ran"] = True
        return sd

    opt.register_state_dict_pre_hook(sd_pre)
    opt.register_state_dict_post_hook(sd_post)
    state_dict = opt.state_dict()
    log.append(("state_dict", "test" in state_dict["state"], state_dict["post hook ran"]))
    del opt.state["test"]

    def load_pre_a(o, sd):
        log.append("load pre a")
        sd["param_groups"][0]["lr"] = 0.002

    def load_pre_b(o, sd):  # prepended: runs first, and returns a replacement
        log.append("load pre b")
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = 0.003
        return sd

    def load_post(o):
        log.append(("load post", o.param_groups[0]["lr"]))
        o.state["ran load post hook"] = True  # an entry that is not a parameter's state

    opt.register_load_state_dict_pre_hook(load_pre_a)
    opt.register_load_state_dict_pre_hook(load_pre_b, prepend=True)
    opt.register_load_state_dict_post_hook(load_post)
    state_dict.pop("post hook ran")
    opt.load_state_dict(state_dict)
    log.append(("after load", opt.param_groups[0]["lr"], opt.state["ran load post hook"]))
    step()  # the extra entry in state must not break a step, nor state_dict()
    log.append(("state_dict after", opt.state_dict()["state"].get("ran load post hook")))
    return log


@pytest.mark.parametrize("name", cases("test_hooks", [(n, n) for n in OURS]))
def test_hooks(name):
    assert hook_log(OURS[name], name) == hook_log(INFOS[name].optim_cls, name)


# ---------------------------------------------------------------------------------------------
# 6. deepcopy.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", cases("test_deepcopy", [(n, n) for n in OURS]))
def test_deepcopy(name):
    kwargs = kwargs_of(name, 0)
    _, opt, params = run(OURS[name], name, kwargs, steps=3)
    twin = copy.deepcopy(opt)
    public = lambda o: {k for k in vars(o) if not k.startswith("_")}  # noqa: E731
    assert public(twin) == public(opt)
    twin_params = twin.param_groups[0]["params"]
    assert all(a is not b for a, b in zip(twin_params, params))
    assert not ({id(v) for v in state_tensors(opt, params).values()}
                & {id(v) for v in state_tensors(twin, twin_params).values()}), "deepcopy shares state tensors"
    for step in range(3, 6):
        do_step(name, opt, params, step)
        do_step(name, twin, twin_params, step)
        assert_same(flat(twin_params), flat(params), f"copy diverges at step {step}", kwargs)


# ---------------------------------------------------------------------------------------------
# 7. Sparse gradients (uncoalesced: duplicated indices that must be summed).
# ---------------------------------------------------------------------------------------------
def sparse_rows():
    """torch's sparse inputs: each optim input with ``metadata_for_sparse``'s kwargs applied."""
    rows = []
    for name in OURS:
        info = INFOS[name]
        if not (info.supports_sparse or info.only_supports_sparse_grads):
            continue
        updates, _ = info.metadata_for_sparse
        seen = set()
        for slug, index in input_rows(name):
            kwargs = {k: v for k, v in optim_inputs(name)[index].kwargs.items() if k not in updates}
            key = repr(sorted(kwargs.items()))
            if key in seen or (updates and not kwargs):
                continue
            seen.add(key)
            for impl in impls(name):
                if impl != "fused":
                    rows.append((f"{name}-{slug}-{impl}", name, index, impl, (5, 3)))
        if info.only_supports_sparse_grads:
            rows.append((f"{name}-scalar_param", name, 0, "forloop", ()))
    return rows


def sparse_kwargs(name, index, impl):
    updates, _ = INFOS[name].metadata_for_sparse
    kwargs = {k: v for k, v in kwargs_of(name, index, impl).items() if k not in updates}
    return {**kwargs, **({"lr": updates["lr"]} if "lr" in updates else {})}


def sparse_run(cls, kwargs, shape, dense=False, steps=6):
    g = torch.Generator().manual_seed(0)
    param = torch.randn(shape, dtype=F64, generator=g).requires_grad_()
    opt = cls([param], **copy.deepcopy(kwargs))
    history = []
    for _ in range(steps):
        if shape:  # rows 0, 2, 2, 4: row 2 twice, to be summed
            values = torch.randn(4, 3, dtype=F64, generator=g)
            grad = torch.sparse_coo_tensor(torch.tensor([[0, 2, 2, 4]]), values, shape, check_invariants=True)
        else:
            grad = torch.randn((), dtype=F64, generator=g).to_sparse()
        param.grad = grad.to_dense() if dense else grad
        opt.step()
        history.append(param.detach().clone())
    return torch.stack(history)


@pytest.mark.parametrize("name,index,impl,shape", cases("test_sparse", sparse_rows()))
def test_sparse(name, index, impl, shape):
    kwargs = sparse_kwargs(name, index, impl)
    ours = sparse_run(OURS[name], kwargs, shape)
    theirs = sparse_run(INFOS[name].optim_cls, kwargs, shape)
    assert_same(ours, theirs, "sparse gradients vs torch.optim", kwargs)
    if not INFOS[name].only_supports_sparse_grads:  # as torch checks: sparse steps like its dense form
        torch.testing.assert_close(ours, sparse_run(OURS[name], kwargs, shape, dense=True), atol=5e-6, rtol=5e-6)


# ---------------------------------------------------------------------------------------------
# 8. differentiable=True: gradcheck through step.
# ---------------------------------------------------------------------------------------------
def one_step(cls, kwargs, param, grad, state, *state_values):
    """p <- step(p, grad, state) as a function of its tensors (``state_values`` for gradcheck)."""
    p = param.clone()
    p.grad = grad
    opt = cls([p], **kwargs)
    opt.state[p].update({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
    opt.step()
    return (p,) + tuple(v for v in opt.state[p].values() if torch.is_tensor(v) and v.requires_grad)


def two_steps_meta(cls, kwargs, param, grad, state, *inputs):
    """Two steps on a quadratic, then the loss differentiated w.r.t. the tensor hyperparameters."""
    kwargs = {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
    if "beta1" in kwargs:
        kwargs["betas"] = (kwargs.pop("beta1"), kwargs.pop("beta2"))
    hyper = [v for v in kwargs.values() if torch.is_tensor(v) and v.requires_grad] + list(kwargs.get("betas", ()))
    p = param.clone()
    p.grad = grad
    opt = cls([p], **kwargs)
    opt.state[p].update({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
    for _ in range(2):
        loss = (p.sum() - 2.0) ** 2
        loss.backward(inputs=(p,), create_graph=True)
        opt.step()
        opt.zero_grad()
    loss.backward(inputs=tuple(hyper), create_graph=True)
    assert all(h.grad is not None for h in hyper), "a tensor hyperparameter got no gradient"
    return (loss,) + tuple(v for v in opt.state[p].values() if torch.is_tensor(v) and v.requires_grad) + tuple(hyper)


def _r(g, scale=1.0):
    return (scale * torch.rand(10, dtype=F64, generator=g)).requires_grad_()


def _t(value, grad=False):
    return torch.tensor(value, dtype=F64, requires_grad=grad)


ADAM_STATE = lambda g: dict(step=_t(10.0), exp_avg=_r(g), exp_avg_sq=_r(g), max_exp_avg_sq=_r(g))  # noqa: E731
# TestDifferentiableOptimizer's cases: (id, name, state, kwargs, multi-step w.r.t. hyperparameters)
DIFF_CASES = [
    ("SGD", "SGD", lambda g: dict(momentum_buffer=_r(g)), lambda: dict(lr=0.9), False),
    ("Adam-amsgrad", "Adam", ADAM_STATE, lambda: dict(lr=0.9, amsgrad=True), False),
    ("AdamW-amsgrad", "AdamW", ADAM_STATE, lambda: dict(lr=0.9, amsgrad=True), False),
    ("RMSprop-centered_momentum", "RMSprop",
     lambda g: dict(step=torch.zeros((), dtype=F64), square_avg=_r(g), momentum_buffer=_r(g), grad_avg=_r(g, 1e-2)),
     lambda: dict(lr=0.9, maximize=True, momentum=0.9, centered=True, weight_decay=0.1), False),
    ("Adadelta", "Adadelta", lambda g: dict(step=_t(10.0), square_avg=_r(g), acc_delta=_r(g)),
     lambda: dict(lr=0.9, weight_decay=0.1), False),
    ("Adagrad", "Adagrad", lambda g: dict(step=_t(10.0), sum=_r(g)), lambda: dict(lr=0.9, weight_decay=0.1), False),
    ("Adamax", "Adamax", lambda g: dict(step=_t(10.0), exp_avg=_r(g), exp_inf=_r(g)),
     lambda: dict(lr=0.9, weight_decay=0.1), False),
    ("ASGD", "ASGD", lambda g: dict(step=_t(10.0), eta=_t(0.9), mu=_t(1.0), ax=_r(g)), lambda: dict(lr=0.9), False),
    ("Rprop", "Rprop", lambda g: dict(step=_t(10.0), prev=_r(g), step_size=_r(g)), lambda: dict(lr=0.9), False),
    ("NAdam", "NAdam", lambda g: dict(step=_t(10.0), exp_avg=_r(g), exp_avg_sq=_r(g), mu_product=_t(1.0, True)),
     lambda: dict(lr=0.9), False),
    ("NAdam-decoupled", "NAdam",
     lambda g: dict(step=_t(10.0), exp_avg=_r(g), exp_avg_sq=_r(g), mu_product=_t(1.0, True)),
     lambda: dict(lr=0.9, decoupled_weight_decay=True), False),
    ("RAdam", "RAdam", lambda g: dict(step=_t(10.0), exp_avg=_r(g), exp_avg_sq=_r(g)), lambda: dict(lr=0.9), False),
    ("RAdam-decoupled", "RAdam", lambda g: dict(step=_t(10.0), exp_avg=_r(g), exp_avg_sq=_r(g)),
     lambda: dict(lr=0.9, weight_decay=0.1, decoupled_weight_decay=True), False),
    ("SGD-tensor_lr", "SGD", lambda g: dict(momentum_buffer=_r(g)), lambda: dict(lr=_t(0.001, True)), True),
    ("SGD-tensor_weight_decay", "SGD", lambda g: dict(momentum_buffer=_r(g)),
     lambda: dict(weight_decay=_t(0.9, True)), True),
    ("SGD-tensor_lr_weight_decay", "SGD", lambda g: dict(momentum_buffer=_r(g)),
     lambda: dict(weight_decay=_t(0.9, True), lr=_t(0.001, True)), True),
] + [
    (f"{n}-tensor_{what}", n, ADAM_STATE, make, True) for n in ("Adam", "AdamW") for what, make in (
        ("lr", lambda: dict(lr=_t(0.001, True))),
        ("weight_decay", lambda: dict(weight_decay=_t(0.999, True))),
        ("betas", lambda: dict(beta1=_t(0.9, True), beta2=_t(0.999, True), lr=_t([0.001], True))),
        ("all", lambda: dict(lr=_t(0.001, True), weight_decay=_t(0.999, True),
                             beta1=_t(0.9, True), beta2=_t(0.999, True))),
    )
]


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("name,make_state,make_kwargs,meta", cases("test_differentiable", [
    (case_id, n, s, k, m) for case_id, n, s, k, m in DIFF_CASES if n in OURS]))
def test_differentiable(name, make_state, make_kwargs, meta):
    g = torch.Generator().manual_seed(0)
    param, grad = _r(g), _r(g)
    state, kwargs = make_state(g), {**make_kwargs(), "differentiable": True}
    fn = two_steps_meta if meta else one_step
    extra = [v for v in kwargs.values() if torch.is_tensor(v)]
    torch_cls = INFOS[name].optim_cls
    theirs = fn(torch_cls, kwargs, param, grad, state, *state.values(), *extra)
    ours = fn(OURS[name], kwargs, param, grad, state, *state.values(), *extra)
    torch.testing.assert_close(ours, theirs, **TOL)
    assert gradcheck(fn, (OURS[name], kwargs, param, grad, state, *state.values(), *extra))


@pytest.mark.parametrize("name,index", cases("test_differentiable_inputs", [
    (f"{n}-{slug}", n, i) for n in OURS if "differentiable" in INFOS[n].supported_impls
    for slug, i in input_rows(n)]))
def test_differentiable_inputs(name, index):
    """Every optim input, differentiable w.r.t. the parameter and its gradient, from torch's own
    state after one step (as torch's optim_db-driven differentiable test does)."""
    g = torch.Generator().manual_seed(0)
    kwargs = kwargs_of(name, index)
    kwargs.pop("foreach", None)
    warm = torch.rand(10, dtype=F64, generator=g)
    warm.grad = torch.rand(10, dtype=F64, generator=g)
    torch_opt = INFOS[name].optim_cls([warm], **copy.deepcopy(kwargs))
    torch_opt.step()  # torch's own state after one step, as the starting state
    state = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in torch_opt.state[warm].items()}
    kwargs["differentiable"] = True
    param, grad = _r(g), _r(g)
    theirs = one_step(INFOS[name].optim_cls, kwargs, param, grad, state, *state.values())
    ours = one_step(OURS[name], kwargs, param, grad, state, *state.values())
    # with differentiable=True torch computes bias corrections on the float32 step tensor
    # (1 - beta ** step_t), optimlab from the integer step in float64: ~1e-7 apart, by design
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    assert gradcheck(one_step, (OURS[name], kwargs, param, grad, state, *state.values()))
