"""The generic table: every registered optimizer converges on a quadratic and on Rosenbrock,
survives a state_dict round trip through torch.save/torch.load bit-exactly, and rejects bad
hyperparameters with a message naming the argument.

The convergence runs end with the step decayed to 0 (``problems.cooldown``): at a constant step
most of these methods circle the minimiser for ever, and the point a run stops at depends on
every rounding (LAMB, Lookahead and Prodigy crossed the tolerance between CPUs or with the
gradients perturbed by one ulp). With the cooldown every entry ends >= 4.9x inside its tolerance,
measured with the gradients perturbed by one ulp, at 1 and 2 threads, on two other instances of
the quadratic, and with other CPU kernels (``ATEN_CPU_CAPABILITY=default``,
``MKL_CBWR=COMPATIBLE``); the closest (ASGD, Rprop, Adagrad, Adafactor on Rosenbrock) are slow,
not chaotic: their end points agree to 3 digits under all of these. A broken update still
fails: with the step's sign flipped every entry fails both problems.
"""

from __future__ import annotations

import io

import pytest
import torch

import optimlab
from cases import bad, converge
from problems import ROSENBROCK_START, cooldown, make_net, net_data, quadratic, rosenbrock

CONVERGE = converge()
BAD = bad()
NAMES = optimlab.names()


def _minimize(name, f, x0, kwargs, steps, spec):
    """``steps`` steps from ``x0``, the last quarter with the step decaying to 0, unless the entry
    says why its method must run at a constant step (``constant_lr``)."""
    x = torch.nn.Parameter(x0.clone().reshape(1, -1) if spec.get("matrix_only") else x0.clone())
    opt = optimlab.create(name, [x], **kwargs)
    for _ in (range(steps) if spec.get("constant_lr") else cooldown(opt, steps)):
        opt.zero_grad()
        f(x.reshape(-1)).backward()
        opt.step()
        if not torch.isfinite(x).all():
            break
    return x.detach().reshape(-1)


def test_every_optimizer_has_settings():
    missing = [n for n in NAMES if n not in CONVERGE and not optimlab.REGISTRY[n].needs_closure]
    assert not missing, f"no convergence settings in tests/cases for {missing}"


@pytest.mark.parametrize("name", sorted(CONVERGE))
def test_converges_on_quadratic(name):
    spec = CONVERGE[name]
    if "quadratic" not in spec:
        pytest.skip(spec.get("why", "no quadratic setting"))
    kwargs, steps = spec["quadratic"]
    f, x0, x_star = quadratic()
    x = _minimize(name, f, x0, kwargs, steps, spec)
    err = (x - x_star).norm() / x_star.norm()
    assert err <= 1e-3, f"{name}: relative distance to the minimiser {err:.3g} after {steps} steps"


@pytest.mark.parametrize("name", sorted(CONVERGE))
def test_converges_on_rosenbrock(name):
    spec = CONVERGE[name]
    if "rosenbrock" not in spec:
        pytest.skip(spec.get("why", "no rosenbrock setting"))
    kwargs, steps = spec["rosenbrock"]
    x = _minimize(name, rosenbrock, torch.tensor(ROSENBROCK_START, dtype=torch.float64), kwargs, steps, spec)
    err = (x - torch.ones(2, dtype=torch.float64)).norm()
    assert err <= 1e-2, f"{name}: ended at {x.tolist()}, {err:.3g} from (1, 1) after {steps} steps"


def _train(net, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name", sorted(CONVERGE))
def test_state_dict_round_trip_is_bit_exact(name):
    spec = CONVERGE[name]
    if spec.get("matrix_only"):
        pytest.skip("matrix-only optimizer: round trip covered in its own tests")
    kwargs, _ = spec.get("quadratic") or spec.get("rosenbrock")
    x, y = net_data()
    net = make_net()
    opt = optimlab.create(name, net.parameters(), **kwargs)
    _train(net, opt, x, y, 15)

    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)

    net2 = make_net(seed=123)  # different init: everything must come from the checkpoint
    net2.load_state_dict(ckpt["model"])
    opt2 = optimlab.create(name, net2.parameters(), **kwargs)
    opt2.load_state_dict(ckpt["opt"])

    _train(net, opt, x, y, 15)
    _train(net2, opt2, x, y, 15)
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b), f"{name}: resumed run differs from the uninterrupted one"


@pytest.mark.parametrize("name", NAMES)
def test_negative_lr_rejected(name):
    if "lr" not in optimlab.REGISTRY[name].defaults:
        pytest.skip("no lr")
    w = torch.nn.Parameter(torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"lr.*-0\.5|-0\.5.*lr"):
        optimlab.create(name, [w], lr=-0.5)


@pytest.mark.parametrize("name,kwargs,word", [(n, k, w) for n, items in sorted(BAD.items()) for k, w in items],
                         ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(f"{a}={b}" for a, b in v.items()))
def test_bad_hyperparameters_rejected(name, kwargs, word):
    w = torch.nn.Parameter(torch.ones(2, 2))
    with pytest.raises(ValueError) as err:
        optimlab.create(name, [w], **kwargs)
    assert word in str(err.value), f"message {str(err.value)!r} does not name {word!r}"
    value = kwargs.get(word)
    if value is not None and not isinstance(value, (tuple, list, bool)):
        assert str(value) in str(err.value), f"message {str(err.value)!r} does not show the value {value}"


@pytest.mark.parametrize("name", NAMES)
def test_bad_group_hyperparameter_rejected(name):
    """Validation also covers hyperparameters given per group."""
    if "lr" not in optimlab.REGISTRY[name].defaults:
        pytest.skip("no lr")
    a, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2, 2))
    with pytest.raises(ValueError, match="lr"):
        optimlab.create(name, [{"params": [a]}, {"params": [b], "lr": -1.0}])


@pytest.mark.parametrize("name", NAMES)
def test_registry_defaults_match_torch(name):
    spec = optimlab.REGISTRY[name]
    if not spec.torch_name:
        pytest.skip("no torch equivalent")
    import inspect

    theirs = inspect.signature(getattr(torch.optim, spec.torch_name).__init__).parameters
    ours = inspect.signature(spec.cls.__init__).parameters
    for k, p in theirs.items():
        assert k in ours, f"{name}: torch's argument {k!r} missing"
        assert ours[k].default == p.default, f"{name}: default of {k} is {ours[k].default!r}, torch's {p.default!r}"
        assert ours[k].kind == p.kind, f"{name}: {k} is {ours[k].kind}, torch's is {p.kind}"


def test_describe_lists_capabilities():
    rows = optimlab.describe()
    assert [r["name"] for r in rows] == NAMES
    adam = optimlab.describe("adam")
    assert adam["defaults"]["betas"] == (0.9, 0.999)
    assert adam["needs_closure"] is False and adam["second_order"] is False
    with pytest.raises(KeyError, match="did you mean adam"):
        optimlab.create("adma", [torch.nn.Parameter(torch.ones(1))])
