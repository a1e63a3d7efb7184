"""Schedule-Free SGD / AdamW, Prodigy and D-Adapt Adam (no torch.optim equivalents: their step-by-step
references are in tests/test_schedule_free.py and tests/test_lr_free.py).

test_generic reads the final *parameters*, which for the schedule-free optimizers (never switched
to eval mode there) are the gradient-evaluation sequence y = (1 - b) z + b x: the settings below
make y itself converge -- z's steps shrink with the gradient, and polynomial averaging (``r``)
forgets Rosenbrock's far-away early iterates faster than the uniform average. That the averaged
x (eval mode) converges is checked in tests/test_schedule_free.py. Schedule-Free SGD runs at a
constant step (``constant_lr``), as it is meant to: its end point is not chaotic (the same to 3
digits with the gradients perturbed by an ulp). Schedule-Free AdamW's is, at a constant step --
Adam's normalisation again: on the quadratic the distance ranged over 4.5e-5 .. 3.3e-4 under
such perturbations -- so it takes the same final decay as the others (tests/problems.cooldown),
after which its end point no longer moves with the rounding.

Prodigy and D-Adapt take steps ``d * lr`` once ``d`` has settled: Adam's well-known spikes on
noiseless problems show up for lr=1.0 (their default multiplier), so these use a smaller one;
the runs' final lr decay (tests/problems.cooldown) then settles them like Adam.
"""

CONVERGE = {
    "schedule-free-sgd": {"quadratic": (dict(lr=0.2), 1000), "rosenbrock": (dict(lr=4e-3, r=4.0), 6000),
                          "constant_lr": True},
    "schedule-free-adamw": {"quadratic": (dict(lr=0.02), 2000), "rosenbrock": (dict(lr=0.02, r=4.0), 6000)},
    "prodigy": {"quadratic": (dict(lr=0.1), 800), "rosenbrock": (dict(lr=0.1), 2000)},
    "dadapt-adam": {"quadratic": (dict(lr=0.1), 1000), "rosenbrock": (dict(lr=0.06, betas=(0.9, 0.99)), 2500)},
}

_SF = [(dict(lr=-1.0), "lr"), (dict(weight_decay=-0.1), "weight_decay"), (dict(warmup_steps=-1), "warmup_steps"),
       (dict(warmup_steps=2.5), "warmup_steps"), (dict(r=-1.0), "r"), (dict(weight_lr_power=-2.0), "weight_lr_power"),
       (dict(decoupled_decay=0.1), "decoupled_decay"), (dict(independent_decay=0.01), "independent_decay"),
       (dict(l1=0.001), "l1")]
_FREE = [(dict(lr=-1.0), "lr"), (dict(d0=0.0), "d0"), (dict(d0=-1e-6), "d0"), (dict(growth_rate=0.5), "growth_rate"),
         (dict(betas=(1.0, 0.999)), "betas"), (dict(betas=(0.9, -0.1)), "betas"), (dict(eps=-1e-8), "eps"),
         (dict(weight_decay=-0.1), "weight_decay"), (dict(decoupled_decay=0.1), "decoupled_decay"),
         (dict(l1=0.001), "l1")]

BAD = {
    "schedule-free-sgd": _SF + [(dict(momentum=0.0), "momentum"), (dict(momentum=1.0), "momentum"),
                                (dict(momentum=-0.5), "momentum")],
    "schedule-free-adamw": _SF + [(dict(betas=(0.0, 0.999)), "betas"), (dict(betas=(0.9, 1.0)), "betas"),
                                  (dict(eps=-1e-8), "eps")],
    "prodigy": _FREE + [(dict(beta3=1.0), "beta3"), (dict(d_coef=0.0), "d_coef")],
    "dadapt-adam": _FREE,
}
