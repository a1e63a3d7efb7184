from . import Case

TORCH_CASES = [
    # NAdam at lr=0.01 on this net turns unstable after ~40 steps and amplifies float32 rounding
    # (torch against itself too), so its cases use smaller steps
    Case("nadam-default", "NAdam", "NAdam", dict(lr=0.005)),
    Case("nadam-wd", "NAdam", "NAdam", dict(lr=0.002, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    Case("nadam-decoupled", "NAdam", "NAdam", dict(lr=0.005, weight_decay=0.1, decoupled_weight_decay=True)),
    Case("nadam-momentum-decay-maximize", "NAdam", "NAdam", dict(lr=0.005, momentum_decay=0.05, maximize=True)),
    Case("nadam-groups-change", "NAdam", "NAdam", dict(lr=0.005),
         groups=[{}, {"lr": 0.003, "betas": (0.5, 0.9), "weight_decay": 0.05, "momentum_decay": 0.01},
                 {"weight_decay": 0.2, "decoupled_weight_decay": True}],
         change={"lr": 0.004, "betas": (0.85, 0.995), "eps": 1e-6, "momentum_decay": 0.02}),
    Case("nadam-none-grads", "NAdam", "NAdam", dict(lr=0.005, weight_decay=0.01), none_grads=True),
    Case("nadam-flags", "NAdam", "NAdam", dict(lr=0.005, foreach=False, capturable=False, differentiable=False)),
    # the first 5 steps are un-rectified (rho_t <= 5) for the usual b2; with b2 = 0.6
    # (rho_inf = 4) RAdam never rectifies
    Case("radam-default", "RAdam", "RAdam", dict(lr=0.01)),
    Case("radam-wd", "RAdam", "RAdam", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)),
    Case("radam-decoupled-maximize", "RAdam", "RAdam",
         dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    Case("radam-never-rectified", "RAdam", "RAdam", dict(lr=0.003, betas=(0.9, 0.6))),
    Case("radam-groups-change", "RAdam", "RAdam", dict(lr=0.01),
         groups=[{}, {"lr": 0.003, "betas": (0.5, 0.99), "weight_decay": 0.05},
                 {"weight_decay": 0.2, "decoupled_weight_decay": True}],
         change={"lr": 0.004, "betas": (0.85, 0.95), "eps": 1e-6}),
    Case("radam-none-grads", "RAdam", "RAdam", dict(lr=0.01), none_grads=True),
    Case("radam-flags", "RAdam", "RAdam", dict(lr=0.01, foreach=False, capturable=False, differentiable=False)),
    Case("rprop-default", "Rprop", "Rprop", dict()),
    Case("rprop-etas-sizes", "Rprop", "Rprop", dict(lr=0.003, etas=(0.3, 1.5), step_sizes=(1e-4, 0.02))),
    Case("rprop-maximize", "Rprop", "Rprop", dict(lr=0.001, maximize=True)),
    Case("rprop-groups-change", "Rprop", "Rprop", dict(lr=0.002),
         groups=[{}, {"lr": 0.01, "etas": (0.6, 1.1), "step_sizes": (1e-3, 0.05)}],
         change={"lr": 0.5, "etas": (0.4, 1.3), "step_sizes": (1e-5, 0.01)}),
    Case("rprop-none-grads", "Rprop", "Rprop", dict(lr=0.005), none_grads=True),
    Case("rprop-flags", "Rprop", "Rprop", dict(foreach=False, capturable=False, differentiable=False)),
    Case("asgd-default", "ASGD", "ASGD", dict()),
    Case("asgd-averaging-wd", "ASGD", "ASGD", dict(lr=0.05, lambd=0.01, alpha=0.6, t0=10, weight_decay=0.1)),
    # maximize climbs into tanh's saturation, where float32 rounding grows: torch's own foreach and
    # for-loop ASGD end 5.6e-6 apart here, so 1e-5 would leave no room for another CPU's rounding
    Case("asgd-fractional-t0-maximize", "ASGD", "ASGD", dict(lr=0.005, lambd=0.1, t0=2.5, maximize=True),
         rtol32=3e-5),
    Case("asgd-groups-change", "ASGD", "ASGD", dict(lr=0.05, t0=5),
         groups=[{}, {"lr": 0.02, "lambd": 0.05, "alpha": 0.9, "t0": 20, "weight_decay": 0.05}],
         change={"lr": 0.01, "lambd": 0.02, "alpha": 0.5, "t0": 40, "weight_decay": 0.01}),
    Case("asgd-none-grads", "ASGD", "ASGD", dict(lr=0.05, lambd=0.01, t0=3), none_grads=True),
    Case("asgd-flags", "ASGD", "ASGD", dict(lr=0.05, foreach=False, capturable=False, differentiable=False)),
]

# NAdam (and RAdam on Rosenbrock) settle into an Adam-type limit cycle at a distance ~ lr from
# the minimiser (torch's too): the runs' final lr decay (tests/problems.cooldown) shrinks it, and
# b2 = 0.99 keeps it steady. Rprop adapts its own steps (the group's lr is only the first one),
# and ASGD's step is lr / (1 + lambd lr t)^alpha: SGD's curvature limit on Rosenbrock, so it is slow.
CONVERGE = {
    "nadam": {"quadratic": (dict(lr=0.01, betas=(0.9, 0.99), momentum_decay=0.1), 800),
              "rosenbrock": (dict(lr=0.01, betas=(0.9, 0.99), momentum_decay=0.1), 2400)},
    "radam": {"quadratic": (dict(lr=0.05), 600), "rosenbrock": (dict(lr=6e-3, betas=(0.9, 0.99)), 2400)},
    "rprop": {"quadratic": (dict(lr=0.01), 300), "rosenbrock": (dict(lr=0.01), 4000)},
    "asgd": {"quadratic": (dict(lr=0.1), 500), "rosenbrock": (dict(lr=1.5e-3), 12000)},
}

BAD = {
    "nadam": [(dict(betas=(1.0, 0.9)), "betas"), (dict(eps=-1e-8), "eps"), (dict(weight_decay=-0.1), "weight_decay"),
              (dict(momentum_decay=-0.004), "momentum_decay")],
    "radam": [(dict(betas=(0.9, 1.5)), "betas"), (dict(betas=(-0.1, 0.9)), "betas"), (dict(eps=-1.0), "eps"),
              (dict(weight_decay=-0.1), "weight_decay")],
    "rprop": [(dict(etas=(1.5, 1.2)), "etas"), (dict(etas=(0.5, 0.9)), "etas"), (dict(etas=(0.0, 1.2)), "etas"),
              (dict(etas=0.5), "etas"), (dict(step_sizes=(-1e-6, 50)), "step_sizes"),
              (dict(step_sizes=(1.0, 0.1)), "step_sizes")],
    "asgd": [(dict(lambd=-1e-4), "lambd"), (dict(alpha=-0.75), "alpha"), (dict(t0=-1.0), "t0"),
             (dict(weight_decay=-0.1), "weight_decay")],
}
