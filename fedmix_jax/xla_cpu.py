"""Workarounds for slow paths of XLA:CPU, each the values of a plain JAX form (plain path off CPU):
:func:`conv2d_same` (canonical backward convolutions), :func:`sum_over_pixels` (GroupNorm's sums
as matrix-vector products), :func:`fast_xavier_init` (one uniform stream). Why, and when each can
go: docs/speed.md ("XLA:CPU workarounds").
"""
from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def plain_conv2d_same(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """Stride-1 NHWC x HWIO convolution, ``pad`` zeros per side, no bias, autodiff's backward."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                        dimension_numbers=_DIMENSION_NUMBERS)


def _conv_grads_canonical(x, kernel, g, pad):
    """Both gradients of :func:`plain_conv2d_same` as canonical convolutions: ``dx`` = ``g`` with
    the flipped, in/out-swapped kernel; ``dkernel`` = ``x`` (batch <-> channels) with ``g``."""
    kh, kw = kernel.shape[:2]
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
    dx = jax.lax.conv_general_dilated(g, flipped, (1, 1),
                                      ((kh - 1 - pad,) * 2, (kw - 1 - pad,) * 2),
                                      dimension_numbers=_DIMENSION_NUMBERS)
    lhs = jnp.transpose(x, (3, 1, 2, 0))       # [Cin, H, W, N]: channels as the batch
    rhs = jnp.transpose(g, (1, 2, 0, 3))       # [H, W, N, Cout]: the gradient as the kernel
    dk = jax.lax.conv_general_dilated(lhs, rhs, (1, 1), ((pad, pad), (pad, pad)),
                                      dimension_numbers=_DIMENSION_NUMBERS)  # [Cin, kh, kw, Cout]
    return dx.astype(x.dtype), jnp.transpose(dk, (1, 2, 0, 3)).astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_same(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """:func:`plain_conv2d_same` with canonical backward convolutions on CPU: ``x`` [N, H, W, Cin],
    ``kernel`` [kh, kw, Cin, Cout] -> [N, H + 2 pad - kh + 1, W + 2 pad - kw + 1, Cout]."""
    return plain_conv2d_same(x, kernel, pad)


def _conv2d_same_bwd(pad, res, g):
    x, kernel = res

    def autodiff(x, kernel, g):
        return jax.vjp(lambda a, b: plain_conv2d_same(a, b, pad), x, kernel)[1](g)

    return jax.lax.platform_dependent(
        x, kernel, g, cpu=lambda *a: _conv_grads_canonical(*a, pad), default=autodiff)


conv2d_same.defvjp(lambda x, kernel, pad: (plain_conv2d_same(x, kernel, pad), (x, kernel)),
                   _conv2d_same_bwd)


def plain_sum_over_pixels(x3: jax.Array) -> jax.Array:
    """``[N, P, C] -> [N, C]``: ``jnp.sum(x3, axis=1)``."""
    return jnp.sum(x3, axis=1)


def sum_over_pixels(x3: jax.Array) -> jax.Array:
    """``[N, P, C] -> [N, C]``: the pixel sum; on CPU a product with a ones vector."""
    return jax.lax.platform_dependent(
        x3, cpu=lambda x: jnp.einsum("npc,p->nc", x, jnp.ones((x.shape[1],), x.dtype)),
        default=plain_sum_over_pixels)


@functools.lru_cache(maxsize=32)
def _fast_init_fn(leaves: tuple[tuple[str, tuple[int, ...]], ...]):
    """Jitted ``key -> flat list of params`` drawing every kernel from one uniform stream."""

    @jax.jit
    def init(key):
        n_kernel = sum(int(np.prod(shape)) for name, shape in leaves if name == "kernel")
        u = jax.random.uniform(key, (n_kernel,), jnp.float32, minval=-1.0, maxval=1.0)
        out, offset = [], 0
        for name, shape in leaves:
            if name == "kernel":
                receptive = int(np.prod(shape[:-2]))
                bound = float(np.sqrt(6.0 / ((shape[-2] + shape[-1]) * receptive)))  # fan in + out
                size = int(np.prod(shape))
                out.append(u[offset:offset + size].reshape(shape) * bound)
                offset += size
            elif name == "scale":
                out.append(jnp.ones(shape, jnp.float32))
            else:  # conv and GroupNorm biases
                out.append(jnp.zeros(shape, jnp.float32))
        return out

    return init


def fast_xavier_init(key: jax.Array, shapes) -> dict:
    """Float32 params shaped as ``shapes`` (``ShapeDtypeStruct`` pytree) from one uniform stream:
    ``kernel`` leaves Xavier-uniform ([..., in, out]), ``scale`` ones, others zeros."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    leaves = tuple((str(path[-1].key), tuple(int(d) for d in leaf.shape)) for path, leaf in flat)
    return jax.tree_util.tree_unflatten(treedef, _fast_init_fn(leaves)(key))
