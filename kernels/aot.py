"""What each Triton launcher really launches, for ahead-of-time compilation checks.

Every kernel module exposes ``aot_specs() -> list[AotSpec]`` built from the same tile/warp/stage
choices its launcher makes, for every head dim, dtype and mode the dispatcher can send it."""
from dataclasses import dataclass


@dataclass(frozen=True)
class AotSpec:
    name: str            # shown in failure messages, e.g. "attn_fwd bf16 d=128 causal"
    fn: object           # the @triton.jit function
    signature: dict      # runtime argument -> Triton type: "*bf16", "*u8", "i32", "i64", "fp32"
    constexprs: dict     # constexpr argument -> value
    num_warps: int
    num_stages: int
    aligned: tuple = ()  # arguments the runtime specializes as divisible by 16 (pointers, strides, sizes)
