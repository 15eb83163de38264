"""What torch's int8 kernels run, per approach and config backend: the one capability table."""

from __future__ import annotations

from inc_core.capability import core_algorithms
from inc_core.space import OpCapability, TensorOptions

from ._ops import DYNAMIC_PER_CHANNEL, DYNAMIC_TYPES, STATIC_TYPES


def _algorithms() -> tuple[str, ...]:
    return core_algorithms()


def static(backend: str) -> dict[str, OpCapability]:
    """x86/FBGEMM (backend "default"): uint8 activations asym (default) or sym, int8 sym weights.

    oneDNN with the spec's IPEX scheme (backend "ipex"): symmetric activations, zero point 0;
    Linear takes int8 (default: transformer activations are signed) or uint8, convolutions
    uint8 only (oneDNN's quantized conv rejects int8 inputs).
    """
    weight = TensorOptions(("int8",), ("sym",), ("per_channel", "per_tensor"), ("minmax",))
    caps = {}
    for t in STATIC_TYPES:
        if backend == "ipex":
            dtypes = ("int8", "uint8") if t.__name__ == "Linear" else ("uint8",)
            activation = TensorOptions(dtypes, ("sym",), ("per_tensor",), _algorithms())
        else:
            activation = TensorOptions(("uint8",), ("asym", "sym"), ("per_tensor",), _algorithms())
        caps[t.__name__] = OpCapability(activation, weight)
    return caps


def dynamic(backend: str) -> dict[str, OpCapability]:
    """Activations are quantized by the kernel per batch (uint8 asym); weights int8 sym."""
    activation = TensorOptions(("uint8",), ("asym",), ("per_tensor",), ("minmax",))
    caps = {}
    for t in DYNAMIC_TYPES:
        granularity = (
            ("per_channel", "per_tensor") if t.__name__ in DYNAMIC_PER_CHANNEL else ("per_tensor",)
        )
        weight = TensorOptions(("int8",), ("sym",), granularity, ("minmax",))
        caps[t.__name__] = OpCapability(activation, weight)
    return caps


#: group sizes offered besides -1 (one group per output): the kernel takes any, and pads ``K``
#: to whole groups; INC 2.x's users ask for powers of two
GROUP_SIZES: tuple[int, ...] = (-1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def weight_only() -> dict[str, OpCapability]:
    """Weight-only layers (``inc_torch.weight_only``): 2-8 bits (4 and 8 fast), sym/asym,
    RTN/GPTQ/AWQ; activations stay float."""
    from inc_core.weight_only import weight_options
    from inc_core.weight_only.options import BITS
    from inc_core.weight_only.plan import WEIGHT_ONLY_ACTIVATION

    from .weight_only.model import OP_TYPES

    options = weight_options(BITS, GROUP_SIZES)
    return {t: OpCapability(WEIGHT_ONLY_ACTIVATION, options) for t in OP_TYPES}


def for_approach(approach: str, backend: str) -> dict[str, OpCapability]:
    if approach == "weight_only":
        return weight_only()
    return static(backend) if approach == "static" else dynamic(backend)
