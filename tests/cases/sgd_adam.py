from . import Case

TORCH_CASES = [
    Case("sgd-plain", "SGD", "SGD", dict(lr=0.05)),
    Case("sgd-momentum", "SGD", "SGD", dict(lr=0.05, momentum=0.9)),
    Case("sgd-dampening", "SGD", "SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    Case("sgd-nesterov-wd", "SGD", "SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    # ascent grows the weights, so the one rounding per step in which torch's fused kernel
    # (which optimlab calls) differs from its for-loop compounds to ~1e-5 over 50 float32 steps
    Case("sgd-maximize", "SGD", "SGD", dict(lr=0.01, momentum=0.9, maximize=True), rtol32=5e-5),
    Case("sgd-groups-change", "SGD", "SGD", dict(lr=0.05, momentum=0.9),
         groups=[{}, {"lr": 0.01, "momentum": 0.5, "weight_decay": 0.1}], change={"lr": 0.02, "momentum": 0.7}),
    Case("sgd-none-grads", "SGD", "SGD", dict(lr=0.05, momentum=0.9), none_grads=True),
    Case("sgd-flags", "SGD", "SGD", dict(lr=0.05, momentum=0.9, foreach=False, differentiable=False)),
    Case("adam-default", "Adam", "Adam", dict(lr=0.01)),
    Case("adam-amsgrad-wd", "Adam", "Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    Case("adam-decoupled", "Adam", "Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    Case("adam-maximize", "Adam", "Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, maximize=True)),
    Case("adam-groups-change", "Adam", "Adam", dict(lr=0.01),
         groups=[{}, {"lr": 0.003, "betas": (0.5, 0.9), "weight_decay": 0.05, "amsgrad": True}],
         change={"lr": 0.004, "betas": (0.85, 0.995), "eps": 1e-6}),
    Case("adam-none-grads", "Adam", "Adam", dict(lr=0.01, amsgrad=True), none_grads=True),
    Case("adam-fused-flag", "Adam", "Adam", dict(lr=0.01, fused=True)),
    Case("adam-foreach-flag", "Adam", "Adam", dict(lr=0.01, foreach=True, capturable=False)),
    Case("adamw-default", "AdamW", "AdamW", dict(lr=0.01)),
    Case("adamw-amsgrad-maximize", "AdamW", "AdamW", dict(lr=0.01, weight_decay=0.2, amsgrad=True, maximize=True)),
    Case("adamw-groups-change", "AdamW", "AdamW", dict(lr=0.01),
         groups=[{}, {"lr": 0.02, "weight_decay": 0.0}], change={"lr": 0.005, "weight_decay": 0.05}),
]

# Steps and rates of the convergence runs, whose last quarter decays the lr to 0 (see
# tests/problems.cooldown); each ends >= 20x inside test_generic's tolerance.
CONVERGE = {
    "sgd": {"quadratic": (dict(lr=0.1, momentum=0.5), 300), "rosenbrock": (dict(lr=3e-3, momentum=0.9), 2000)},
    "adam": {"quadratic": (dict(lr=0.05), 800), "rosenbrock": (dict(lr=0.2), 2000)},
    "adamw": {"quadratic": (dict(lr=0.05, weight_decay=0.0), 800), "rosenbrock": (dict(lr=0.2, weight_decay=0.0), 2000)},
}

BAD = {
    "sgd": [(dict(lr=-0.1), "lr"), (dict(momentum=-0.5), "momentum"), (dict(weight_decay=-1), "weight_decay"),
            (dict(lr=0.1, nesterov=True), "Nesterov")],
    "adam": [(dict(betas=(1.0, 0.9)), "betas"), (dict(betas=(0.9, -0.1)), "betas"), (dict(eps=-1e-8), "eps"),
             (dict(weight_decay=-0.1), "weight_decay")],
    "adamw": [(dict(betas=(0.9, 1.5)), "betas"), (dict(eps=-1.0), "eps")],
}
