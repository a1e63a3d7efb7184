"""``torch.compile(opt.step)``, as torch's documentation shows it: one compilation over 20 steps,
also with ``fullgraph=True`` (no graph break), with the eager path's numbers up to float32
rounding (the traced step computes its bias corrections from a float32 step count, as torch's
compiled optimizers do). Counted with ``torch._dynamo``'s counters."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import optimlab

STEPS = 20
# torch-named optimizers and elementwise modern ones; a tensor lr, as torch recommends for a
# compiled step (a float lr that a scheduler changes would be a new constant each step)
CASES = {
    "AdamW": dict(weight_decay=0.1),
    "SGD": dict(momentum=0.9, nesterov=True),
    "RMSprop": dict(momentum=0.5, centered=True),
    "Adagrad": dict(lr_decay=0.01),
    "Lion": dict(),
    # host-side history (NAdam's momentum product, ASGD's eta and mu) as 0-d state tensors,
    # updated in place; RAdam's rectification switch as a torch.where of the step count
    "NAdam": dict(decoupled_weight_decay=True, weight_decay=0.01),
    "ASGD": dict(t0=5),  # averaging starts within the 20 steps
    "RAdam": dict(),  # rectified from step 6 on (beta2 = 0.999)
    "Adafactor": dict(),
    # modern elementwise ones: bias corrections, ADOPT's first step, Adan's first difference and
    # AdEMAMix's warm-up as tensor maths of the count
    "AdaBelief": dict(),
    "Adan": dict(),
    "AdEMAMix": dict(t_alpha_beta3=10),
    "ADOPT": dict(),
    "MADGRAD": dict(),
    "Yogi": dict(),
}  # also measured by hand: Adam(amsgrad=True), Adamax, Adadelta, Rprop (one graph each; ~7 s a case)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_step_compiles_once(name):
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    cls = getattr(optimlab, name)
    opt, eager = cls(ps, lr=torch.tensor(0.01), **CASES[name]), cls(qs, lr=0.01, **CASES[name])
    step = torch.compile(opt.step, fullgraph=True)
    for _ in range(STEPS):
        for p, q in zip(ps, qs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        step()
        eager.step()
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["recompiles"])
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=2e-6)
    assert all(isinstance(st.get("step", opt._counts.get(p)), torch.Tensor) for p, st in opt.state.items())
    # the eager optimizer reads the state the compiled one wrote (tensor counts included)
    again = cls([torch.nn.Parameter(p.detach().clone()) for p in ps], lr=0.01, **CASES[name])
    again.load_state_dict(opt.state_dict())
    assert again.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_host_history_steps_eagerly_inside_a_compiled_step():
    """Schedule-free's averaging weights are float64 host-side history that it does not trace:
    that group runs eagerly (a graph break), with the eager numbers exactly."""
    torch._dynamo.reset()
    w, v = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    opt, eager = optimlab.ScheduleFreeAdamW([w], lr=0.1), optimlab.ScheduleFreeAdamW([v], lr=0.1)
    step = torch.compile(opt.step)
    for i in range(3):
        w.grad = torch.full((4,), float(i + 1))
        v.grad = w.grad.clone()
        step()
        eager.step()
    assert torch.equal(w, v)
