"""The reference FedMix U-Net in Flax (NHWC): `UNet`, `init_unet`, `count_params`.

Layer for layer the reference PyTorch U-Net (bilinear, GroupNorm), so its weights load exactly
(:mod:`fedmix_jax.reference_weights`); width 64, 1 channel, 1 class: 17,266,241 parameters.
:class:`Conv` / :class:`GroupNorm`: ``flax.linen``'s values through :mod:`fedmix_jax.xla_cpu`.
Details: docs/architecture.md ("The model").
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from fedmix_jax.xla_cpu import conv2d_same, fast_xavier_init, sum_over_pixels

__all__ = ["UNet", "count_params", "init_unet"]

Dtype = Any

#: torch.nn.GroupNorm's default epsilon (Flax's default is 1e-6).
GROUPNORM_EPSILON = 1e-5


@functools.lru_cache(maxsize=256)
def interpolation_matrix(n_in: int, n_out: int, pad_to: int | None = None) -> np.ndarray:
    """float64 ``[pad_to or n_out, n_in]`` (cached, read-only): linear ``align_corners=True``
    resizing along one axis, as torch's bilinear ``Upsample``; ``pad_to`` adds zero rows as the
    reference's ``F.pad`` (``(pad_to - n_out) // 2`` before, the rest after)."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out, dtype=np.float64) * scale
    lo = np.clip(np.floor(src).astype(np.int64), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    if pad_to is not None:
        diff = pad_to - n_out
        m = np.pad(m, ((diff // 2, diff - diff // 2), (0, 0)))
    m.setflags(write=False)
    return m


def _resize_hw(x: jax.Array, mh: np.ndarray, mw: np.ndarray) -> jax.Array:
    """Applies ``[Ho, H]`` and ``[Wo, W]`` matrices to the H and W axes of NHWC ``x``."""
    x = jnp.einsum("oh,nhwc->nowc", jnp.asarray(mh, dtype=x.dtype), x)
    return jnp.einsum("pw,nowc->nopc", jnp.asarray(mw, dtype=x.dtype), x)


def upsample_bilinear_align_corners(x: jax.Array, scale: int = 2) -> jax.Array:
    """Bilinear ``align_corners=True`` upsampling: [N, H, W, C] -> [N, scale*H, scale*W, C]."""
    _, h, w, _ = x.shape
    return _resize_hw(x, interpolation_matrix(h, scale * h), interpolation_matrix(w, scale * w))


def upsample_and_pad(x: jax.Array, target_hw: Sequence[int]) -> jax.Array:
    """The reference Up block's x2 upsampling + ``F.pad``: [N, H, W, C] -> [N, Ht, Wt, C]."""
    _, h, w, _ = x.shape
    ht, wt = int(target_hw[0]), int(target_hw[1])
    return _resize_hw(x, interpolation_matrix(h, 2 * h, ht), interpolation_matrix(w, 2 * w, wt))


class Conv(nn.Module):
    """``nn.Conv(features, (k, k), padding=k // 2)`` for odd ``k`` (same params: ``kernel`` HWIO,
    ``bias``, float32; same values) on :func:`fedmix_jax.xla_cpu.conv2d_same`. Flax's
    xavier_uniform on an HWIO kernel is torch's xavier_uniform_ on the OIHW one."""

    features: int
    kernel_size: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if k % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {k}")
        kernel = self.param("kernel", nn.initializers.xavier_uniform(),
                            (k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        return conv2d_same(x, kernel, k // 2) + bias


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int,
               epsilon: float = GROUPNORM_EPSILON) -> jax.Array:
    """``torch.nn.GroupNorm`` of ``x`` [N, H, W, C] (scale, bias [C]; ``num_groups`` divides C):
    two-pass float32 statistics (biased variance) per sample and group; result in ``x.dtype``."""
    n, h, w, c = x.shape
    if num_groups <= 0 or c % num_groups:
        raise ValueError(f"num_groups={num_groups} does not divide the {c} channels")
    size = c // num_groups
    count = float(h * w * size)

    def group_mean(sums):  # [N, C] per-channel sums -> [N, 1, C] group means per channel
        g = sums.reshape(n, num_groups, size).sum(-1) / count
        return jnp.repeat(g, size, axis=-1)[:, None, :]

    x3 = x.reshape(n, h * w, c).astype(jnp.float32)
    mean = group_mean(sum_over_pixels(x3))
    d = x3 - mean
    var = group_mean(sum_over_pixels(d * d))
    mul = jax.lax.rsqrt(var + epsilon) * scale.astype(jnp.float32)
    y = d * mul + bias.astype(jnp.float32)
    return y.reshape(n, h, w, c).astype(x.dtype)


class GroupNorm(nn.Module):
    """:func:`group_norm` with ``flax.linen.GroupNorm``'s params: [N, H, W, C] in ``dtype``."""

    num_groups: int
    epsilon: float = GROUPNORM_EPSILON
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return group_norm(x, scale, bias, self.num_groups, self.epsilon).astype(self.dtype)


def _double_conv(x: jax.Array, features: int, mid_features: int, dtype: Dtype) -> jax.Array:
    """(3x3 conv -> GroupNorm -> ReLU) x 2; must be called inside a compact method."""
    for i, f in ((1, mid_features), (2, features)):
        if f < 2:
            raise ValueError(f"GroupNorm with channels // 2 groups needs >= 2 channels, got {f}")
        x = Conv(f, 3, dtype=dtype, name=f"conv{i}")(x)
        x = GroupNorm(f // 2, GROUPNORM_EPSILON, dtype=dtype, name=f"norm{i}")(x)
        x = nn.relu(x)
    return x


class DoubleConv(nn.Module):
    """(3x3 conv -> GroupNorm(C//2 groups) -> ReLU) x 2: [N, H, W, Cin] -> [N, H, W, features]."""

    features: int
    mid_features: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _double_conv(x, self.features, self.mid_features or self.features, self.dtype)


class Down(nn.Module):
    """2x2 max-pool then DoubleConv: [N, H, W, Cin] -> [N, H//2, W//2, features]."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        return _double_conv(x, self.features, self.features, self.dtype)


class Up(nn.Module):
    """x2 upsample ``x`` [N, h, w, Cx], pad to ``skip`` [N, H, W, Cs], concat [skip, up],
    DoubleConv (middle width ``(Cs + Cx) // 2``) -> [N, H, W, features]."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        x = upsample_and_pad(x, skip.shape[1:3])
        x = jnp.concatenate([skip.astype(x.dtype), x], axis=-1)
        return _double_conv(x, self.features, x.shape[-1] // 2, self.dtype)


def unet_channels(width: int, depth: int = 4) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Output channels of the encoder (``inc, down1..``) and decoder (``up1..``); ``depth=4``:
    ``(w, 2w, 4w, 8w, 8w)`` and ``(4w, 2w, w, w)``."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    enc = tuple(width * 2 ** min(i, depth - 1) for i in range(depth + 1))
    dec = tuple(width * 2 ** (depth - j - 1) if j < depth else width for j in range(1, depth + 1))
    return enc, dec


class UNet(nn.Module):
    """The reference U-Net: ``x`` [N, H, W, Cin] -> logits [N, H, W, num_classes] float32.

    ``width``: first block's channels; ``depth``: Down / Up blocks; ``dtype``: computation dtype
    (params stay float32).
    """

    width: int = 64
    num_classes: int = 1
    depth: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"UNet expects NHWC input [N, H, W, C], got shape {x.shape}")
        enc, dec = unet_channels(self.width, self.depth)
        x = x.astype(self.dtype)
        x = DoubleConv(enc[0], dtype=self.dtype, name="inc")(x)
        skips = [x]
        for i in range(1, self.depth + 1):
            x = Down(enc[i], dtype=self.dtype, name=f"down{i}")(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for j in range(1, self.depth + 1):
            x = Up(dec[j - 1], dtype=self.dtype, name=f"up{j}")(x, skips.pop())
        x = Conv(self.num_classes, 1, dtype=self.dtype, name="outc")(x)
        return x.astype(jnp.float32)


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree (works on arrays and ``jax.ShapeDtypeStruct``)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params)))


def init_unet(key: jax.Array, model: nn.Module, input_shape: Sequence[int], *,
              fast: bool = True) -> dict:
    """The float32 ``params`` of ``model`` for NHWC ``input_shape`` (only Cin matters): ``fast``
    by :func:`fedmix_jax.xla_cpu.fast_xavier_init` (other values than ``model.init``), else
    ``jax.jit(model.init)``."""
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be NHWC (N, H, W, Cin), got {tuple(input_shape)}")
    # Params do not depend on N, H, W: build them on a small input.
    side = 2 ** int(getattr(model, "depth", 0))
    x = jax.ShapeDtypeStruct((1, side, side, int(input_shape[-1])), jnp.float32)
    if not fast:
        return jax.jit(model.init)(key, jnp.zeros(x.shape, x.dtype))["params"]
    return fast_xavier_init(key, jax.eval_shape(model.init, key, x)["params"])
