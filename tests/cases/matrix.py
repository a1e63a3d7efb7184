"""Adafactor, Muon and SparseAdam.

Adafactor runs on the shared TinyNet, whose 0-d scale, 1-D biases (unfactored ``variance``),
2-D weights and 3-D conv kernel (factored over the last two dims) cover every state shape.
Its sign-like, parameter-relative steps make this net's float32 training chaotic for
``lr >~ 0.02`` with weight decay, or once ``rho_t = 1/sqrt(t)`` takes over (``lr > 1/sqrt(t)``):
there torch's own foreach and single-tensor Adafactor already differ by 1e-4 .. 1e-3 in
float32, so the cases stay where two correct implementations agree to ~1e-6, and the
relative-step case is held to 1e-10 in float64 only (its float32 bound is torch-vs-torch's).

Muon accepts only 2-D parameters and SparseAdam only sparse gradients, so neither can run on
TinyNet: their cases use bias-free MLPs with a wide and a tall weight (``model="wide"/"tall"``)
and an embedding model with sparse gradients (``model="embedding"``).
"""

from . import Case

TORCH_CASES = [
    Case("adafactor-default", "Adafactor", "Adafactor", dict()),
    Case("adafactor-wd", "Adafactor", "Adafactor", dict(lr=0.01, weight_decay=0.5)),
    Case("adafactor-eps-d-decay-maximize", "Adafactor", "Adafactor",
         dict(eps=(1e-30, 1e-3), d=2.0, beta2_decay=-0.5, maximize=True)),
    Case("adafactor-eps1-active", "Adafactor", "Adafactor", dict(eps=(1e-3, 1e-2))),
    Case("adafactor-eps2-floor", "Adafactor", "Adafactor", dict(eps=(None, 1.0), beta2_decay=0.0)),
    Case("adafactor-relative-step", "Adafactor", "Adafactor", dict(lr=0.2), rtol32=3e-4),
    Case("adafactor-groups-change", "Adafactor", "Adafactor", dict(),
         groups=[{}, {"lr": 0.005, "weight_decay": 0.2, "d": 1.5}],
         change={"lr": 0.02, "beta2_decay": -0.6, "eps": (None, 1e-2)}),
    Case("adafactor-none-grads", "Adafactor", "Adafactor", dict(weight_decay=0.1), none_grads=True),
    Case("adafactor-foreach-flag", "Adafactor", "Adafactor", dict(foreach=True)),
]

# Muon on a 1 x n matrix is normalised-gradient descent with momentum: weight_decay=0 so the
# minimiser is not pulled towards zero; its oscillation (~lr) shrinks with the runs' final lr
# decay (tests/problems.cooldown). Adafactor's parameter-relative steps crawl along
# Rosenbrock's valley: a long run.
CONVERGE = {
    "adafactor": {"quadratic": (dict(lr=0.03), 1500), "rosenbrock": (dict(lr=0.004), 13000)},
    "muon": {"matrix_only": True, "quadratic": (dict(lr=0.01, weight_decay=0.0), 1000),
             "rosenbrock": (dict(lr=6e-3, weight_decay=0.0), 1500)},
    # matrix_only also skips test_generic's TinyNet round trip, which has dense gradients
    "sparse-adam": {"matrix_only": True, "why": "needs sparse gradients: converges on an embedding "
                    "problem in tests/test_muon_sparse.py"},
}

BAD = {
    "adafactor": [(dict(lr=-1.0), "lr"), (dict(beta2_decay=0.5), "beta2_decay"), (dict(eps=(-1e-3, 1e-3)), "eps"),
                  (dict(eps=(None, -1.0)), "eps"), (dict(eps=1e-3), "eps"), (dict(d=0.5), "d"),
                  (dict(weight_decay=-0.1), "weight_decay")],
    "muon": [(dict(lr=-0.02), "lr"), (dict(momentum=-0.1), "momentum"), (dict(weight_decay=-0.1), "weight_decay"),
             (dict(adjust_lr_fn="bogus"), "adjust_lr_fn"), (dict(ns_steps=100), "ns_steps"),
             (dict(ns_steps=2.5), "ns_steps"), (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"),
             (dict(eps=-1.0), "eps")],
    "sparse-adam": [(dict(lr=0.0), "lr"), (dict(eps=0.0), "eps"), (dict(betas=(1.0, 0.9)), "betas"),
                    (dict(betas=(0.9, -0.1)), "betas"), (dict(l2=0.1), "l2"),
                    (dict(clip_grad_norm=1.0), "clip_grad_norm")],
}


# Muon on 2-D-only nets, SparseAdam on sparse embeddings, and Adafactor where its float32
# training is chaotic (compared step-synced only)
def M(name, kwargs, **kw):
    return Case(name, "Muon", "Muon", kwargs, **{"model": "wide", **kw})


def S(name, kwargs, **kw):
    return Case(name, "SparseAdam", "SparseAdam", kwargs, model="embedding", **kw)


TORCH_CASES += [
    M("muon-default", dict(lr=0.02)),
    M("muon-tall", dict(lr=0.02), model="tall", free32=False),
    M("muon-heavy-ball-no-wd", dict(lr=0.02, momentum=0.9, nesterov=False, weight_decay=0.0)),
    M("muon-no-momentum", dict(lr=0.02, momentum=0.0)),
    M("muon-match-rms-adamw", dict(lr=0.01, weight_decay=0.05, adjust_lr_fn="match_rms_adamw"), free32=False),
    M("muon-original-ns", dict(lr=0.02, adjust_lr_fn="original", ns_steps=3, ns_coefficients=(2.0, -1.5, 0.5),
                              eps=1e-3), model="tall", free32=False),
    M("muon-groups-change", dict(lr=0.02), groups=[{}, {"lr": 0.01, "momentum": 0.8, "nesterov": False,
                                                        "weight_decay": 0.0}],
      change={"lr": 0.005, "momentum": 0.9, "weight_decay": 0.2, "ns_steps": 4}),
    M("muon-none-grads", dict(lr=0.02), none_grads=True),
    S("sparse-adam-default", dict(lr=0.01)),
    S("sparse-adam-betas-eps-maximize", dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, maximize=True)),
    S("sparse-adam-groups-change", dict(lr=0.01), groups=[{}, {"lr": 0.02, "betas": (0.5, 0.9)}],
      change={"lr": 0.005, "betas": (0.85, 0.995), "eps": 1e-6}),
    S("sparse-adam-none-grads", dict(lr=0.01), none_grads=True),
    Case("adafactor-wd-chaotic", "Adafactor", "Adafactor", dict(lr=0.02, weight_decay=0.1), free32=False),
]
