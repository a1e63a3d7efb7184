from . import Case

# RMSprop's sign-like steps make this net's training chaotic for lr >~ 3e-3 (and maximize runs
# saturate tanh): float32 rounding then grows by orders of magnitude whatever the implementation,
# so the step sizes below stay in the regime where two correct implementations agree to 1e-6.
# Centred RMSprop computes sqrt(v - m^2) with cancellation ~ 1/alpha^t, hence alpha >= 0.95.

TORCH_CASES = [
    Case("adagrad-default", "Adagrad", "Adagrad", dict(lr=0.05)),
    Case("adagrad-lr-decay-init", "Adagrad", "Adagrad",
         dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1, eps=1e-8)),
    Case("adagrad-wd-maximize", "Adagrad", "Adagrad", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    Case("adagrad-groups-change", "Adagrad", "Adagrad", dict(lr=0.05, initial_accumulator_value=0.05),
         groups=[{}, {"lr": 0.02, "lr_decay": 0.05, "weight_decay": 0.05, "eps": 1e-6}],
         change={"lr": 0.03, "lr_decay": 0.02, "eps": 1e-8}),
    Case("adagrad-none-grads", "Adagrad", "Adagrad", dict(lr=0.05, lr_decay=0.1), none_grads=True),
    Case("adagrad-flags", "Adagrad", "Adagrad", dict(lr=0.05, foreach=False, differentiable=False)),
    Case("rmsprop-default", "RMSprop", "RMSprop", dict(lr=0.002)),
    Case("rmsprop-centered", "RMSprop", "RMSprop", dict(lr=0.002, alpha=0.95, centered=True)),
    Case("rmsprop-momentum-wd", "RMSprop", "RMSprop", dict(lr=0.003, momentum=0.9, weight_decay=0.1)),
    Case("rmsprop-centered-momentum-maximize", "RMSprop", "RMSprop",
         dict(lr=0.002, centered=True, momentum=0.5, eps=1e-6, maximize=True)),
    Case("rmsprop-groups-change", "RMSprop", "RMSprop", dict(lr=0.003, momentum=0.3),
         groups=[{}, {"lr": 0.002, "alpha": 0.95, "centered": True, "momentum": 0.8, "weight_decay": 0.05}],
         change={"lr": 0.002, "alpha": 0.97, "momentum": 0.6, "eps": 1e-6, "weight_decay": 0.02}),
    Case("rmsprop-none-grads", "RMSprop", "RMSprop", dict(lr=0.001, centered=True, momentum=0.9), none_grads=True),
    Case("rmsprop-flags", "RMSprop", "RMSprop", dict(lr=0.002, foreach=False, capturable=False)),
    Case("adadelta-default", "Adadelta", "Adadelta", dict()),
    Case("adadelta-wd-maximize", "Adadelta", "Adadelta",
         dict(lr=0.05, rho=0.95, eps=1e-5, weight_decay=0.1, maximize=True)),  # 0.1: float32 chaos
    Case("adadelta-groups-change", "Adadelta", "Adadelta", dict(lr=0.5),
         groups=[{}, {"lr": 0.3, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.05}],
         change={"lr": 0.4, "rho": 0.85, "eps": 1e-6}),
    Case("adadelta-none-grads", "Adadelta", "Adadelta", dict(lr=0.5, weight_decay=0.01), none_grads=True),
    Case("adadelta-flags", "Adadelta", "Adadelta", dict(foreach=False, capturable=False, differentiable=False)),
    Case("adamax-default", "Adamax", "Adamax", dict(lr=0.01)),
    Case("adamax-betas-eps-wd", "Adamax", "Adamax", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1)),
    Case("adamax-maximize", "Adamax", "Adamax", dict(lr=0.01, maximize=True)),
    Case("adamax-groups-change", "Adamax", "Adamax", dict(lr=0.01),
         groups=[{}, {"lr": 0.003, "betas": (0.5, 0.9), "weight_decay": 0.05}],
         change={"lr": 0.004, "betas": (0.85, 0.995), "eps": 1e-6}),
    Case("adamax-none-grads", "Adamax", "Adamax", dict(lr=0.01, weight_decay=0.01), none_grads=True),
    Case("adamax-flags", "Adamax", "Adamax", dict(lr=0.01, foreach=False, capturable=False)),
]

# Per problem, as docs/adding-an-optimizer.md describes; the last quarter of each run decays the
# lr to 0 (tests/problems.cooldown), which shrinks RMSprop's and Adadelta's sign-like oscillation
# around the optimum with it. Adagrad's and Adadelta's steps shrink by themselves (1/sqrt(t), and
# Adadelta's slowly growing step accumulator), so Rosenbrock's valley takes them long runs.
CONVERGE = {
    "adagrad": {"quadratic": (dict(lr=0.5), 300), "rosenbrock": (dict(lr=0.5), 10000)},
    "rmsprop": {"quadratic": (dict(lr=1e-3, momentum=0.9), 800), "rosenbrock": (dict(lr=3e-4, momentum=0.9), 2400)},
    "adadelta": {"quadratic": (dict(lr=1.0), 1000), "rosenbrock": (dict(lr=0.02), 16000)},
    "adamax": {"quadratic": (dict(lr=0.06), 500), "rosenbrock": (dict(lr=0.2), 3200)},
}

BAD = {
    "adagrad": [(dict(lr=-0.1), "lr"), (dict(lr_decay=-1), "lr_decay"),
                (dict(initial_accumulator_value=-1), "initial_accumulator_value"), (dict(eps=-1e-10), "eps"),
                (dict(weight_decay=-0.1), "weight_decay")],
    "rmsprop": [(dict(alpha=-0.1), "alpha"), (dict(alpha=1.5), "alpha"), (dict(eps=-1e-8), "eps"),
                (dict(momentum=-0.9), "momentum"), (dict(weight_decay=-1), "weight_decay")],
    "adadelta": [(dict(rho=1.1), "rho"), (dict(rho=-0.1), "rho"), (dict(eps=-1e-6), "eps"), (dict(lr=-1.0), "lr")],
    "adamax": [(dict(betas=(1.0, 0.9)), "betas"), (dict(betas=(0.9, -0.1)), "betas"), (dict(eps=-1.0), "eps"),
               (dict(weight_decay=-0.1), "weight_decay")],
}
