"""The reference FedMix U-Net in Flax (NHWC).

`UNet` reproduces the reference PyTorch U-Net used by FedMix (the "milesial" U-Net, bilinear
variant, with GroupNorm instead of BatchNorm) layer for layer, so weights exported from the
reference load exactly (:mod:`fedmix_jax.reference_weights`); ``width=64``, one input channel and
one class: 17,266,241 parameters. Its layout and parameter tree: docs/architecture.md ("The
model"). :class:`Conv` and :class:`GroupNorm` compute the values of ``flax.linen.Conv`` /
``flax.linen.GroupNorm(use_fast_variance=False)`` with the same parameters, through the XLA:CPU
workarounds of :mod:`fedmix_jax.xla_cpu`. Kernels are HWIO, float32 whatever the ``dtype``.
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

# Flax's xavier_uniform on an HWIO kernel is torch's xavier_uniform_ on the OIHW one.
kernel_init = nn.initializers.xavier_uniform()
bias_init = nn.initializers.zeros


@functools.lru_cache(maxsize=256)
def interpolation_matrix(n_in: int, n_out: int, pad_to: int | None = None) -> np.ndarray:
    """Linear-interpolation matrix of ``align_corners=True`` resizing along one axis.

    Row ``o`` interpolates source coordinate ``s = o * (n_in - 1) / (n_out - 1)`` (``s = 0`` when
    ``n_out == 1``), i.e. ``out[o] = (1 - f) * in[floor(s)] + f * in[min(floor(s) + 1, n_in-1)]``
    with ``f = s - floor(s)``, as ``torch.nn.Upsample(mode='bilinear', align_corners=True)``.

    If ``pad_to`` is given (``>= n_out``) the matrix gets ``pad_to - n_out`` zero rows, split as the
    reference's ``F.pad``: ``(pad_to - n_out) // 2`` before and the rest after. Multiplying by it
    upsamples and zero-pads in one exact step.

    Returns:
      float64 array of shape ``[pad_to or n_out, n_in]`` (cached; do not modify).
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got n_in={n_in}, n_out={n_out}")
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
        if diff < 0:
            raise ValueError(f"cannot pad {n_out} rows to {pad_to}: the target is smaller")
        m = np.pad(m, ((diff // 2, diff - diff // 2), (0, 0)))
    m.setflags(write=False)
    return m


def _resize_hw(x: jax.Array, mh: np.ndarray, mw: np.ndarray) -> jax.Array:
    """Applies ``[Ho, H]`` and ``[Wo, W]`` matrices to the H and W axes of NHWC ``x``."""
    mh = jnp.asarray(mh, dtype=x.dtype)
    mw = jnp.asarray(mw, dtype=x.dtype)
    x = jnp.einsum("oh,nhwc->nowc", mh, x)
    return jnp.einsum("pw,nowc->nopc", mw, x)


def upsample_bilinear_align_corners(x: jax.Array, scale: int = 2) -> jax.Array:
    """Bilinear ``scale``x upsampling with ``align_corners=True`` semantics (int ``scale``):
    ``[N, H, W, C] -> [N, scale*H, scale*W, C]`` in ``x.dtype``; ``H == 1`` replicates."""
    _, h, w, _ = x.shape
    return _resize_hw(x, interpolation_matrix(h, scale * h), interpolation_matrix(w, scale * w))


def upsample_and_pad(x: jax.Array, target_hw: Sequence[int]) -> jax.Array:
    """The reference Up block's ``up`` + ``F.pad``: x2 bilinear (align_corners), then zero-pad
    to ``target_hw = (Ht, Wt)`` (each ``>= 2H`` / ``>= 2W``) with ``(Ht - 2H) // 2`` rows on top
    and the rest at the bottom (same for columns), in one step of two padded interpolation
    matrices: ``[N, H, W, C] -> [N, Ht, Wt, C]``."""
    _, h, w, _ = x.shape
    ht, wt = int(target_hw[0]), int(target_hw[1])
    return _resize_hw(x, interpolation_matrix(h, 2 * h, ht), interpolation_matrix(w, 2 * w, wt))


class Conv(nn.Module):
    """``flax.linen.Conv`` (stride 1, symmetric "same" padding, bias) on :func:`conv2d_same`.

    Same parameters (``kernel`` HWIO and ``bias``, float32), initialisers and forward values as
    ``nn.Conv(features, (k, k), padding=((k // 2,) * 2,) * 2)``; only the CPU backward pass is
    written differently (:func:`fedmix_jax.xla_cpu.conv2d_same`).
    """

    features: int
    kernel_size: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if k % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {k}")
        kernel = self.param("kernel", kernel_init, (k, k, x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", bias_init, (self.features,), jnp.float32)
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        return conv2d_same(x, kernel, k // 2) + bias


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int,
               epsilon: float = GROUPNORM_EPSILON) -> jax.Array:
    """GroupNorm of NHWC ``x`` as ``torch.nn.GroupNorm``: per sample and group, two-pass stats.

    ``mean = E[x]`` and ``var = E[(x - mean)^2]`` (biased) over the group's pixels and channels,
    ``y = (x - mean) / sqrt(var + eps) * scale + bias``. Statistics are float32 whatever
    ``x.dtype``; the result has ``x.dtype`` (the sums: :func:`fedmix_jax.xla_cpu.sum_over_pixels`).

    Args:
      x: ``[N, H, W, C]``; scale, bias: ``[C]``; num_groups: divides ``C``.
    """
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
    """GroupNorm with the parameters of ``flax.linen.GroupNorm`` (``scale`` ones, ``bias`` zeros,
    float32) computed by :func:`group_norm`. ``[N, H, W, C] -> [N, H, W, C]`` in ``dtype``."""

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
    """(3x3 conv, pad 1, bias -> GroupNorm(C//2 groups, eps 1e-5) -> ReLU) x 2.

    ``[N, H, W, Cin] -> [N, H, W, features]``; the first conv has ``mid_features`` outputs
    (default ``features``). Params: ``conv1``, ``norm1``, ``conv2``, ``norm2``.
    """

    features: int
    mid_features: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mid = self.features if self.mid_features is None else self.mid_features
        return _double_conv(x, self.features, mid, self.dtype)


class Down(nn.Module):
    """2x2 max-pool (stride 2, floor on odd sizes) then DoubleConv.

    ``[N, H, W, Cin] -> [N, H//2, W//2, features]``. Params as DoubleConv's.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        return _double_conv(x, self.features, self.features, self.dtype)


class Up(nn.Module):
    """Bilinear x2 upsample (align_corners=True), pad to skip, concat [skip, up], DoubleConv.

    ``x: [N, h, w, Cx]``, ``skip: [N, H, W, Cs]`` (``H >= 2h``, ``W >= 2w``) ->
    ``[N, H, W, features]``. The DoubleConv's middle width is ``(Cs + Cx) // 2``, as the
    reference's ``DoubleConv(in_channels, out_channels, in_channels // 2)``.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        x = upsample_and_pad(x, skip.shape[1:3])
        x = jnp.concatenate([skip.astype(x.dtype), x], axis=-1)
        return _double_conv(x, self.features, x.shape[-1] // 2, self.dtype)


def unet_channels(width: int, depth: int = 4) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Output channels of the encoder (``inc, down1..down{d}``) and decoder (``up1..up{d}``).

    For ``depth=4``: ``(w, 2w, 4w, 8w, 8w)`` and ``(4w, 2w, w, w)``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    enc = tuple(width * 2 ** min(i, depth - 1) for i in range(depth + 1))
    dec = tuple(width * 2 ** (depth - j - 1) if j < depth else width for j in range(1, depth + 1))
    return enc, dec


class UNet(nn.Module):
    """The reference FedMix U-Net (bilinear variant, GroupNorm), NHWC.

    Attributes:
      width: channels of the first block (64 in the paper).
      num_classes: output channels (one sigmoid logit per class).
      depth: number of Down (and Up) blocks; 4 is the reference.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); params are always float32 and the
        logits are returned as float32.

    Call: ``x: [N, H, W, Cin]`` (any H, W >= 1; Cin inferred at init) ->
    logits ``[N, H, W, num_classes]`` float32.
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
    """The ``params`` collection (float32 leaves) of ``model`` (a ``UNet`` or any module of this
    file) for NHWC ``input_shape`` ``(N, H, W, Cin)`` (only ``Cin`` matters).

    ``fast`` (default): the distributions of ``model.init`` drawn from one random stream
    (:func:`fedmix_jax.xla_cpu.fast_xavier_init`, far quicker to compile; other values than
    ``model.init`` for the same key); False: ``jax.jit(model.init)``.
    """
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be NHWC (N, H, W, Cin), got {tuple(input_shape)}")
    # Params do not depend on N, H, W: build them on a small input.
    side = 2 ** int(getattr(model, "depth", 0))
    x = jax.ShapeDtypeStruct((1, side, side, int(input_shape[-1])), jnp.float32)
    if not fast:
        return jax.jit(model.init)(key, jnp.zeros(x.shape, x.dtype))["params"]
    return fast_xavier_init(key, jax.eval_shape(model.init, key, x)["params"])
