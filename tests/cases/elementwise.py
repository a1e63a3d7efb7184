"""The modern optimizers of issue 6's elementwise family (and the layer-wise LAMB, LARS,
NovoGrad). They have no torch.optim twin: their update rules are checked against naive
references in tests/test_elementwise_reference.py; here they join the generic table.

Settings per problem, and why (every run's last quarter decays the lr to 0, see
tests/problems.cooldown):

* Sign steps (Lion, signSGD, Signum) move every coordinate by ``lr`` each step, so near the
  optimum they hover within ~``lr`` of it until the final decay shrinks ``lr``; no weight decay
  (which would pull the fixed point towards 0). Plain signSGD cannot follow Rosenbrock's curved
  valley: with a constant step it locks into a 2-cycle on the lattice of ``lr``-steps at
  ~(0.70, 0.49) for every lr from 1e-4 to 5e-3 we tried, and the final decay does not free it
  (still >= 0.17 away for lr 1e-3 .. 1e-2 and up to 10000 steps), so its Rosenbrock entry is left
  out (Signum's momentum gets through with ``momentum=0.99``).
* LAMB's trust ratio makes every step ``lr * ||p||`` long, so it circles the minimum at a radius
  ~``lr ||x*||`` until the final decay; on Rosenbrock the path passes near the origin, where
  steps shrink with ``||p||``: ``lr=6e-3`` gets through in 6000 steps (3000 do not).
* ADOPT normalises by the previous second moment; with the default ``b2=0.9999`` the huge first
  Rosenbrock gradient dominates it for thousands of steps, so ``b2=0.99`` there.
* AdEMAMix's slow momentum (``b3=0.9999``) overshoots on these deterministic problems:
  ``b3=0.999``.
"""

CONVERGE = {
    "lion": {"quadratic": (dict(lr=1e-3, weight_decay=0.0), 2500),
             "rosenbrock": (dict(lr=2e-3, weight_decay=0.0), 3000)},
    "signsgd": {"quadratic": (dict(lr=1e-3), 1500),
                "why": "signSGD cycles in Rosenbrock's valley (see tests/cases/elementwise.py)"},
    "signum": {"quadratic": (dict(lr=5e-4), 2000), "rosenbrock": (dict(lr=1e-3, momentum=0.99), 8000)},
    "adabelief": {"quadratic": (dict(lr=0.05), 800), "rosenbrock": (dict(lr=0.2), 2000)},
    "yogi": {"quadratic": (dict(lr=0.05), 800), "rosenbrock": (dict(lr=0.2), 2000)},
    "adan": {"quadratic": (dict(lr=0.06), 800), "rosenbrock": (dict(lr=0.02), 2000)},
    "adopt": {"quadratic": (dict(lr=0.05), 800), "rosenbrock": (dict(lr=0.005, betas=(0.9, 0.99)), 2000)},
    "ademamix": {"quadratic": (dict(lr=0.1, betas=(0.9, 0.999, 0.999)), 1500),
                 "rosenbrock": (dict(lr=0.05, betas=(0.9, 0.999, 0.999)), 3200)},
    "madgrad": {"quadratic": (dict(lr=0.01), 800), "rosenbrock": (dict(lr=0.01), 2000)},
    "lamb": {"quadratic": (dict(lr=3e-3), 3000), "rosenbrock": (dict(lr=6e-3), 6000)},
    "lars": {"quadratic": (dict(lr=1.0), 1000), "rosenbrock": (dict(lr=3.0), 2500)},
    "novograd": {"quadratic": (dict(lr=1e-3), 1500), "rosenbrock": (dict(lr=5e-3), 4000)},
}

_BETAS2 = [(dict(betas=(1.0, 0.99)), "betas"), (dict(betas=(0.9, -0.1)), "betas"), (dict(betas=0.9), "betas")]
_BETAS3 = [(dict(betas=(0.9, 0.99)), "betas"), (dict(betas=(0.9, 0.99, 1.5)), "betas")]
_COMMON = [(dict(lr=-1e-3), "lr"), (dict(weight_decay=-0.1), "weight_decay")]
_EPS = [(dict(eps=-1e-8), "eps")]
_CAUTIOUS = [(dict(cautious="yes"), "cautious")]

BAD = {
    "lion": _COMMON + _BETAS2 + _CAUTIOUS,
    "signsgd": _COMMON,
    "signum": _COMMON + _CAUTIOUS + [(dict(momentum=1.0), "momentum"), (dict(momentum=-0.5), "momentum")],
    "adabelief": _COMMON + _BETAS2 + _EPS + _CAUTIOUS,
    "yogi": _COMMON + _BETAS2 + _EPS + _CAUTIOUS + [(dict(initial_accumulator_value=0.0), "initial_accumulator_value"),
                                                    (dict(initial_accumulator_value=-1.0), "initial_accumulator_value")],
    "adan": _COMMON + _BETAS3 + _EPS + _CAUTIOUS,
    "adopt": _COMMON + _BETAS2 + _EPS + _CAUTIOUS + [(dict(clip_lambda=0.25), "clip_lambda")],
    "ademamix": _COMMON + _BETAS3 + _EPS + _CAUTIOUS + [(dict(alpha=-1.0), "alpha"), (dict(t_alpha_beta3=0), "t_alpha_beta3"),
                                                        (dict(t_alpha_beta3=2.5), "t_alpha_beta3")],
    "madgrad": _COMMON + _EPS + [(dict(momentum=1.0), "momentum"), (dict(momentum=-0.1), "momentum")],
    "lamb": _COMMON + _BETAS2 + _EPS + _CAUTIOUS,
    "lars": _COMMON + _EPS + _CAUTIOUS + [(dict(momentum=-0.9), "momentum"), (dict(trust_coefficient=-1e-3), "trust_coefficient"),
                                          (dict(nesterov=True, momentum=0.0), "nesterov")],
    "novograd": _COMMON + _BETAS2 + _EPS + _CAUTIOUS,
}
