"""Shampoo, SOAP, Muon with auxiliary AdamW, Lookahead and SAM in the generic table.

The generic quadratic and Rosenbrock parameter is a vector, which Shampoo preconditions
diagonally (Adam's step, grafting aside), SOAP and MuonAdam update by Adam: these entries check
that path and the bit-exact round trip on TinyNet (whose matrices and conv kernel take the
Kronecker-factored / Muon paths). The matrix paths are checked against naive references in
tests/test_shampoo_soap.py and tests/test_muon_aux.py. SAM needs a closure, which the generic
loops do not pass: it converges in tests/test_wrappers.py.
"""

CONVERGE = {
    "shampoo": {"quadratic": (dict(lr=0.05), 800), "rosenbrock": (dict(lr=0.2), 2000)},
    "soap": {"quadratic": (dict(lr=0.05, betas=(0.9, 0.999), weight_decay=0.0), 800),
             "rosenbrock": (dict(lr=0.2, betas=(0.9, 0.999), weight_decay=0.0), 2000)},
    "muon-adam": {"quadratic": (dict(adam_lr=0.05, adam_betas=(0.9, 0.999)), 800),
                  "rosenbrock": (dict(adam_lr=0.2, adam_betas=(0.9, 0.999)), 2000)},
    "lookahead": {"quadratic": (dict(lr=0.05), 800), "rosenbrock": (dict(lr=0.2), 2000)},
    "sam": {"matrix_only": True, "why": "needs a closure: converges in tests/test_wrappers.py"},
}

BAD = {
    "shampoo": [(dict(lr=-1.0), "lr"), (dict(betas=(1.0, 0.9)), "betas"), (dict(betas=(0.9, 1.5)), "betas"),
                (dict(betas=0.9), "betas"), (dict(eps=-1e-8), "eps"), (dict(matrix_eps=-1.0), "matrix_eps"),
                (dict(weight_decay=-0.1), "weight_decay"), (dict(momentum=-0.5), "momentum"),
                (dict(nesterov=True), "nesterov"), (dict(block_size=0), "block_size"),
                (dict(block_size=2.5), "block_size"), (dict(precondition_frequency=0), "precondition_frequency"),
                (dict(start_preconditioning_step=0), "start_preconditioning_step"),
                (dict(grafting="adagrad2"), "grafting"), (dict(root_dtype="float16"), "root_dtype")],
    "soap": [(dict(lr=-1.0), "lr"), (dict(betas=(0.95, 1.0)), "betas"), (dict(shampoo_beta=1.0), "shampoo_beta"),
             (dict(eps=-1.0), "eps"), (dict(weight_decay=-0.01), "weight_decay"),
             (dict(precondition_frequency=0), "precondition_frequency"), (dict(max_precond_dim=0), "max_precond_dim"),
             (dict(correct_bias="yes"), "correct_bias")],
    "muon-adam": [(dict(lr=-0.02), "lr"), (dict(momentum=-0.1), "momentum"), (dict(weight_decay=-0.1), "weight_decay"),
                  (dict(ns_steps=100), "ns_steps"), (dict(adjust_lr_fn="bogus"), "adjust_lr_fn"),
                  (dict(adam_lr=-3e-4), "adam_lr"), (dict(adam_betas=(0.9, 1.0)), "adam_betas"),
                  (dict(adam_eps=-1.0), "adam_eps"), (dict(adam_weight_decay=-0.1), "adam_weight_decay"),
                  (dict(adam_names="(embed"), "adam_names")],
    "lookahead": [(dict(k=0), "k"), (dict(k=2.5), "k"), (dict(alpha=1.5), "alpha"), (dict(alpha=0.0), "alpha"),
                  (dict(base="adma"), "base"), (dict(base=3), "base"), (dict(lr=-1.0), "lr")],
    "sam": [(dict(rho=-0.05), "rho"), (dict(eta=-0.01), "eta"), (dict(adaptive="yes"), "adaptive"),
            (dict(base="sgdd"), "base"), (dict(lr=-0.1), "lr")],
}
