"""The vocabulary of weight-only quantization: INC 2.x's rule fields and recipe arguments.

One source of truth: ``inc_core.config`` validates against these tables and the algorithms
take their defaults from them.
"""

from __future__ import annotations

from typing import Any

#: ``bits`` a weight rule may ask for (4 and 8 are the fast kernel paths)
BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
SCHEMES: tuple[str, ...] = ("sym", "asym")
ALGORITHMS: tuple[str, ...] = ("RTN", "GPTQ", "AWQ")
#: algorithms that read calibration activations
CALIBRATED_ALGORITHMS: tuple[str, ...] = ("GPTQ", "AWQ")
#: INC 2.x names inc does not implement, and why (said in the error, not a bare "not allowed")
UNIMPLEMENTED_ALGORITHMS: dict[str, str] = {
    "TEQ": "TEQ trains its scales with a framework optimizer; use 'AWQ' for activation-aware "
    "scales or 'GPTQ'",
    "AUTOROUND": "AutoRound trains its rounding with a framework optimizer; use 'GPTQ'",
}
#: ``dtype`` of a weight rule: "int" quantizes, "fp32" keeps the op in float
DTYPES: tuple[str, ...] = ("int", "fp32")
UNIMPLEMENTED_DTYPES: dict[str, str] = {
    name: "non-uniform 4-bit formats have no ONNX Runtime or PyTorch CPU kernel inc can target"
    for name in ("nf4", "fp4", "fp4_e2m1_bnb", "fp4_e2m1")
}
#: a weight rule's fields, with the default of each
RULE_DEFAULTS: dict[str, Any] = {
    "dtype": "int",
    "bits": 4,
    "group_size": 32,
    "scheme": "sym",
    "algorithm": "RTN",
}

#: whether ``sym`` uses the whole signed grid (scale ``max|w| / 2**(bits-1)``, as onnxruntime's
#: and torchao's quantizers do) rather than INC 2.x's default ``2 * max|w| / (2**bits - 1)``:
#: measured on all-MiniLM-L6-v2 int4 g32 (embedding cosine to fp32 on review sentences) RTN
#: 0.9655 vs 0.9554, GPTQ 0.986 vs 0.981, AWQ 0.979 vs 0.977. ``enable_full_range=False`` in
#: a recipe gives INC 2.x's grid.
FULL_RANGE = True

#: recipe -> argument -> default (INC 2.x's names; both spellings its ONNX and PyTorch
#: adaptors read are accepted, see ``ARG_ALIASES``)
RECIPE_ARGS: dict[str, dict[str, Any]] = {
    "rtn_args": {"enable_full_range": FULL_RANGE, "enable_mse_search": False},
    "gptq_args": {
        "percdamp": 0.01,
        "act_order": False,
        "block_size": 128,
        "static_groups": False,
        "nsamples": 128,
        "enable_full_range": FULL_RANGE,
    },
    "awq_args": {
        "enable_auto_scale": True,
        "enable_mse_search": True,
        "folding": False,
        "n_grid": 20,
        "enable_full_range": FULL_RANGE,
    },
}
#: INC 2.x's ONNX adaptor spelled some GPTQ arguments differently: alias -> name
ARG_ALIASES: dict[str, dict[str, str]] = {
    "gptq_args": {"actorder": "act_order", "blocksize": "block_size"},
}
UNIMPLEMENTED_RECIPES: dict[str, str] = {
    "teq_args": "TEQ is not implemented in inc (it trains scales with a framework optimizer)",
}
