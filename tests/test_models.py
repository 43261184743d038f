"""Tests of the reference U-Net (fedmix_jax.models) and the PyTorch weight conversion."""
from __future__ import annotations

import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedmix_jax import models
from fedmix_jax.models import (DoubleConv, UNet, count_params, init_unet, interpolation_matrix,
                               upsample_and_pad, upsample_bilinear_align_corners)
from fedmix_jax.reference_weights import (infer_unet_config, load_reference_weights,
                                          normalize_state_dict, params_from_state_dict,
                                          reference_names, save_reference_weights,
                                          state_dict_from_params)

REF_DIR = pathlib.Path(__file__).parent / "data" / "reference"
REF_FILES = ["unet_w8_in1_out1.npz", "unet_w8_in1_out1_odd.npz", "unet_w4_in3_out3.npz"]


def _param_shapes(model, cin, side=16):
    x = jax.ShapeDtypeStruct((1, side, side, cin), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def _read_ref_state_dict(name):
    with np.load(REF_DIR / name) as d:
        sd = {k[len("param/"):]: d[k] for k in d.files if k.startswith("param/")}
        return sd, d["input_nchw"], d["logits_nchw"]


# ----------------------------------------------------------------------------- parameter count


def _numpy_param_count(width, cin, classes):
    """Independent count for the depth-4 reference, written from the layer list."""
    w = width

    def double_conv(i, o, mid=None):
        mid = o if mid is None else mid
        return (9 * i * mid + mid) + 2 * mid + (9 * mid * o + o) + 2 * o

    total = double_conv(cin, w)
    total += double_conv(w, 2 * w) + double_conv(2 * w, 4 * w)
    total += double_conv(4 * w, 8 * w) + double_conv(8 * w, 8 * w)
    total += double_conv(16 * w, 4 * w, 8 * w) + double_conv(8 * w, 2 * w, 4 * w)
    total += double_conv(4 * w, w, 2 * w) + double_conv(2 * w, w, w)
    return total + w * classes + classes


def test_param_count_width64_is_reference():
    shapes = _param_shapes(UNet(width=64), cin=1)
    assert count_params(shapes) == 17_266_241
    assert _numpy_param_count(64, 1, 1) == 17_266_241


@pytest.mark.parametrize("width,cin,classes", [(16, 3, 2), (6, 1, 4)])
def test_param_count_formula(width, cin, classes):
    shapes = _param_shapes(UNet(width=width, num_classes=classes), cin=cin)
    assert count_params(shapes) == _numpy_param_count(width, cin, classes)


def test_param_tree_layout():
    shapes = _param_shapes(UNet(width=4, depth=3), cin=2)
    assert set(shapes) == {"inc", "down1", "down2", "down3", "up1", "up2", "up3", "outc"}
    for block in ("inc", "down2", "up3"):
        assert set(shapes[block]) == {"conv1", "norm1", "conv2", "norm2"}
        assert set(shapes[block]["conv1"]) == {"kernel", "bias"}
        assert set(shapes[block]["norm1"]) == {"scale", "bias"}
    assert shapes["inc"]["conv1"]["kernel"].shape == (3, 3, 2, 4)
    # depth 3: encoder 4, 8, 16, 16; up1 input = 16 + 16, mid 16, out 8.
    assert shapes["down3"]["conv2"]["kernel"].shape == (3, 3, 16, 16)
    assert shapes["up1"]["conv1"]["kernel"].shape == (3, 3, 32, 16)
    assert shapes["up1"]["conv2"]["kernel"].shape == (3, 3, 16, 8)
    assert shapes["outc"]["kernel"].shape == (1, 1, 4, 1)
    assert models.unet_channels(64) == ((64, 128, 256, 512, 512), (256, 128, 64, 64))


# ----------------------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def small_unet():
    model = UNet(width=4, num_classes=3)
    params = init_unet(jax.random.key(0), model, (1, 32, 32, 2))
    return model, params, jax.jit(model.apply)


@pytest.mark.parametrize("hw", [(37, 45), (33, 33), (17, 16)])  # 17x16: 1x1 bottleneck
def test_any_input_size_gives_same_size_logits(small_unet, hw):
    model, params, apply = small_unet
    x = jax.random.normal(jax.random.key(1), (2, *hw, 2))
    y = apply({"params": params}, x)
    assert y.shape == (2, *hw, 3)
    assert y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))


def test_bfloat16_compute_keeps_float32_params_and_logits(small_unet):
    model, params, apply = small_unet
    x = jax.random.normal(jax.random.key(2), (2, 33, 33, 2))  # shape compiled above
    y32 = apply({"params": params}, x)
    bf = model.clone(dtype=jnp.bfloat16)
    y16 = jax.jit(bf.apply)({"params": params}, x)
    assert y16.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
    rel = float(jnp.max(jnp.abs(y16 - y32)) / jnp.max(jnp.abs(y32)))
    assert rel < 0.1


# ----------------------------------------------------------------------------- upsampling


def _np_upsample_align_corners(x, ho, wo):
    """torch bilinear align_corners=True, written pixel by pixel from the formula (NHWC)."""
    n, h, w, c = x.shape
    out = np.zeros((n, ho, wo, c), np.float64)
    for oy in range(ho):
        sy = oy * (h - 1) / (ho - 1) if ho > 1 else 0.0
        y0 = int(math.floor(sy))
        y1 = min(y0 + 1, h - 1)
        fy = sy - y0
        for ox in range(wo):
            sx = ox * (w - 1) / (wo - 1) if wo > 1 else 0.0
            x0 = int(math.floor(sx))
            x1 = min(x0 + 1, w - 1)
            fx = sx - x0
            out[:, oy, ox] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x1]
                              + fy * (1 - fx) * x[:, y1, x0] + fy * fx * x[:, y1, x1])
    return out


@pytest.mark.parametrize("h,w", [(1, 1), (1, 5), (4, 1), (3, 7), (8, 8), (5, 6)])
def test_upsample_matches_numpy_formula(h, w):
    x = np.random.default_rng(h * 10 + w).normal(size=(2, h, w, 3)).astype(np.float32)
    got = np.asarray(upsample_bilinear_align_corners(jnp.asarray(x)))
    want = _np_upsample_align_corners(x.astype(np.float64), 2 * h, 2 * w)
    assert got.shape == (2, 2 * h, 2 * w, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_upsample_known_values():
    # torch.nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True) on [[1, 2], [3, 4]].
    x = jnp.asarray([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    got = np.asarray(upsample_bilinear_align_corners(x))[0, :, :, 0]
    row = np.array([1.0, 4 / 3, 5 / 3, 2.0])
    want = np.stack([row, row + 2 / 3, row + 4 / 3, row + 2])
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(interpolation_matrix(1, 2), [[1.0], [1.0]])


@pytest.mark.parametrize("h,w,ht,wt", [(2, 2, 5, 4), (4, 5, 9, 11), (1, 1, 3, 2), (3, 3, 6, 6)])
def test_upsample_and_pad_matches_reference_pad(h, w, ht, wt):
    x = np.random.default_rng(0).normal(size=(1, h, w, 2)).astype(np.float32)
    got = np.asarray(upsample_and_pad(jnp.asarray(x), (ht, wt)))
    up = _np_upsample_align_corners(x.astype(np.float64), 2 * h, 2 * w)
    dy, dx = ht - 2 * h, wt - 2 * w
    want = np.pad(up, ((0, 0), (dy // 2, dy - dy // 2), (dx // 2, dx - dx // 2), (0, 0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- DoubleConv


def _np_conv3x3(x, k, b):
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, k.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += xp[:, i:i + h, j:j + w, :] @ k[i, j]
    return out + b


def _np_group_norm(x, groups, scale, bias, eps=1e-5):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def test_double_conv_matches_numpy_groupnorm_eps_1e5():
    rng = np.random.default_rng(0)
    block = DoubleConv(6, mid_features=4)
    # A small input scale makes the variance comparable to eps, so eps = 1e-6 would fail.
    x = (0.01 * rng.normal(size=(2, 7, 5, 3))).astype(np.float32)
    params = _param_shapes(block, cin=3)
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.asarray((rng.normal(size=p.shape) * 0.3
                                     + (path[-1].key == "scale")).astype(np.float32)),
        params)
    got = np.asarray(jax.jit(block.apply)({"params": params}, jnp.asarray(x)))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    y = _np_conv3x3(x.astype(np.float64), p["conv1"]["kernel"], p["conv1"]["bias"])
    y = np.maximum(_np_group_norm(y, 2, p["norm1"]["scale"], p["norm1"]["bias"]), 0)
    y = _np_conv3x3(y, p["conv2"]["kernel"], p["conv2"]["bias"])
    y = np.maximum(_np_group_norm(y, 3, p["norm2"]["scale"], p["norm2"]["bias"]), 0)
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-4)
    assert models.GROUPNORM_EPSILON == 1e-5


# ----------------------------------------------------------------------------- init


def test_xavier_uniform_init_statistics_model_init():
    block = DoubleConv(256)
    params = jax.jit(block.init)(jax.random.key(3), jnp.zeros((1, 4, 4, 256)))["params"]
    k = np.asarray(params["conv1"]["kernel"])
    fan_in = fan_out = 9 * 256
    std = math.sqrt(2.0 / (fan_in + fan_out))
    assert abs(k.std() / std - 1) < 0.01
    assert np.abs(k).max() <= math.sqrt(3) * std * (1 + 1e-6)
    assert abs(k.mean()) < 0.01 * std
    np.testing.assert_array_equal(params["conv1"]["bias"], 0)
    np.testing.assert_array_equal(params["norm1"]["scale"], 1)
    np.testing.assert_array_equal(params["norm1"]["bias"], 0)


def test_xavier_uniform_init_statistics_init_unet():
    model = UNet(width=16, num_classes=2)
    params = init_unet(jax.random.key(4), model, (8, 64, 64, 1))
    shapes = _param_shapes(model, cin=1)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes)
    assert jax.tree_util.tree_map(lambda a: a.shape, params) == \
        jax.tree_util.tree_map(lambda a: a.shape, shapes)
    for (path, leaf) in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = path[-1].key
        if name == "kernel":
            kh, kw, cin, cout = leaf.shape
            std = math.sqrt(2.0 / (kh * kw * (cin + cout)))
            assert np.abs(np.asarray(leaf)).max() <= math.sqrt(3) * std * (1 + 1e-6)
            if leaf.size > 100_000:
                assert abs(float(leaf.std()) / std - 1) < 0.01, path
        elif name == "scale":
            np.testing.assert_array_equal(leaf, 1)
        else:
            np.testing.assert_array_equal(leaf, 0)
    # Different keys give different params, the same key the same ones.
    again = init_unet(jax.random.key(4), model, (1, 32, 32, 1))
    other = init_unet(jax.random.key(5), model, (1, 32, 32, 1))
    np.testing.assert_array_equal(params["up1"]["conv1"]["kernel"], again["up1"]["conv1"]["kernel"])
    assert not np.array_equal(params["inc"]["conv1"]["kernel"], other["inc"]["conv1"]["kernel"])
    # Independent kernels: no two layers share the same stream slice.
    a = np.asarray(params["down2"]["conv2"]["kernel"]).ravel()[:100]
    b = np.asarray(params["down3"]["conv1"]["kernel"]).ravel()[:100]
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.5


# ----------------------------------------------------------------------------- reference weights


@pytest.mark.parametrize("name", REF_FILES)
def test_reference_logits_match(name):
    model, params = load_reference_weights(REF_DIR / name)
    _, x_nchw, ref_nchw = _read_ref_state_dict(name)
    x = jnp.asarray(np.transpose(x_nchw, (0, 2, 3, 1)))
    y = np.transpose(np.asarray(jax.jit(model.apply)({"params": params}, x)), (0, 3, 1, 2))
    assert y.shape == ref_nchw.shape
    rel = np.max(np.abs(y - ref_nchw)) / np.max(np.abs(ref_nchw))
    assert rel <= 1e-4, rel


def test_infer_config():
    assert infer_unet_config(_read_ref_state_dict("unet_w4_in3_out3.npz")[0]) == \
        dict(width=4, num_classes=3, in_channels=3, depth=4)
    assert infer_unet_config(_read_ref_state_dict("unet_w8_in1_out1.npz")[0]) == \
        dict(width=8, num_classes=1, in_channels=1, depth=4)


@pytest.mark.parametrize("name", ["unet_w8_in1_out1.npz", "unet_w4_in3_out3.npz"])
def test_state_dict_round_trip_is_exact(name):
    sd = _read_ref_state_dict(name)[0]
    back = state_dict_from_params(params_from_state_dict(sd))
    assert list(back) == reference_names(4)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_save_load_npz_round_trip(tmp_path):
    model, params = load_reference_weights(REF_DIR / "unet_w4_in3_out3.npz")
    path = tmp_path / "w.npz"
    save_reference_weights(path, params)
    with np.load(path) as d:
        assert all(k.startswith("param/") for k in d.files)
    model2, params2 = load_reference_weights(path)
    assert (model2.width, model2.num_classes, model2.depth) == (4, 3, 4)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)


def test_load_plain_keys_wrapped_and_module_prefix(tmp_path):
    sd = _read_ref_state_dict("unet_w4_in3_out3.npz")[0]
    path = tmp_path / "plain.npz"
    np.savez(path, **{"module." + k: v for k, v in sd.items()})
    _, params = load_reference_weights(path)
    ref = params_from_state_dict(sd)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, ref)
    wrapped = normalize_state_dict({"state_dict": {"module." + k: v for k, v in sd.items()}})
    assert set(wrapped) == set(sd)


def test_missing_key_is_named():
    sd = dict(_read_ref_state_dict("unet_w4_in3_out3.npz")[0])
    del sd["up2.conv.double_conv.3.weight"]
    with pytest.raises(KeyError, match=r"up2\.conv\.double_conv\.3\.weight"):
        params_from_state_dict(sd)


def test_unexpected_key_is_named():
    sd = dict(_read_ref_state_dict("unet_w4_in3_out3.npz")[0])
    sd["down5.maxpool_conv.1.double_conv.0.weight_extra"] = np.zeros(3, np.float32)
    with pytest.raises(KeyError, match=r"down5\.maxpool_conv"):
        params_from_state_dict(sd)


@pytest.mark.parametrize("key,shape", [
    ("down3.maxpool_conv.1.double_conv.1.weight", (7,)),
    ("up1.conv.double_conv.0.weight", (16, 32, 3, 1)),
    ("outc.conv.bias", (2,)),
])
def test_wrong_shape_is_named(key, shape):
    sd = dict(_read_ref_state_dict("unet_w4_in3_out3.npz")[0])
    sd[key] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        params_from_state_dict(sd)


def test_unknown_extension_and_pth_needs_no_torch(tmp_path):
    with pytest.raises(ValueError, match="npz"):
        load_reference_weights(tmp_path / "w.bin")
    # .pth is read without torch (tests/test_reference_weights_security.py): a missing file is a
    # named error, never an ImportError
    with pytest.raises(ValueError, match="does not exist"):
        load_reference_weights(tmp_path / "w.pth")


def test_torch_not_imported_by_fedmix():
    import fedmix_jax.reference_weights  # noqa: F401
    if "torch" in sys.modules:
        pytest.skip("torch was imported by something else in this session")
    assert "torch" not in sys.modules


def test_init_unet_under_vmap_matches_per_key():
    model = UNet(width=2)
    keys = jax.random.split(jax.random.key(7), 3)
    stacked = jax.jit(jax.vmap(lambda k: init_unet(k, model, (1, 16, 16, 1))))(keys)
    single = init_unet(keys[2], model, (1, 16, 16, 1))
    jax.tree_util.tree_map(lambda s, p: np.testing.assert_array_equal(s[2], p), stacked, single)



# ----------------------------------------------------------------------------- XLA:CPU workarounds
# (moved from tests/test_bench.py: the CPU-oriented rewrites in fedmix_jax.xla_cpu give the values
# and gradients of the plain formulations)


@pytest.mark.parametrize("shape,kernel", [((2, 9, 7, 3), 3), ((1, 5, 6, 4), 1)])
def test_conv2d_same_gradients_match_autodiff(shape, kernel):
    from fedmix_jax.xla_cpu import conv2d_same, plain_conv2d_same

    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    k = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, shape[-1], 5))
    g = jax.random.normal(jax.random.PRNGKey(2), shape[:3] + (5,))
    pad = kernel // 2

    def plain(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), ((pad, pad), (pad, pad)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    np.testing.assert_array_equal(conv2d_same(x, k, pad), plain(x, k))
    np.testing.assert_array_equal(plain_conv2d_same(x, k, pad), plain(x, k))
    ours = jax.grad(lambda x, k: jnp.sum(conv2d_same(x, k, pad) * g), argnums=(0, 1))(x, k)
    ref = jax.grad(lambda x, k: jnp.sum(plain(x, k) * g), argnums=(0, 1))(x, k)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # the same inside a loop (where XLA:CPU would not canonicalise autodiff's convolutions)
    looped = jax.jit(lambda x, k: jax.lax.scan(
        lambda c, _: (c, jax.grad(lambda kk: jnp.sum(conv2d_same(x, kk, pad) * g))(k)),
        0, None, length=2)[1][0])(x, k)
    np.testing.assert_allclose(looped, ref[1], rtol=1e-5, atol=1e-5)


def test_group_norm_matches_flax_values_and_gradients():
    import flax.linen as nn

    from fedmix_jax.models import group_norm

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5, 8)) * 3 + 2
    scale = jax.random.normal(jax.random.PRNGKey(1), (8,))
    bias = jax.random.normal(jax.random.PRNGKey(2), (8,))
    g = jax.random.normal(jax.random.PRNGKey(3), x.shape)
    ref_mod = nn.GroupNorm(num_groups=4, epsilon=1e-5, use_fast_variance=False)

    def ref(x, s, b):
        return ref_mod.apply({"params": {"scale": s, "bias": b}}, x)

    np.testing.assert_allclose(group_norm(x, scale, bias, 4), ref(x, scale, bias),
                               rtol=1e-5, atol=1e-5)
    ours = jax.grad(lambda *a: jnp.sum(group_norm(*a, 4) * g), argnums=(0, 1, 2))(x, scale, bias)
    theirs = jax.grad(lambda *a: jnp.sum(ref(*a) * g), argnums=(0, 1, 2))(x, scale, bias)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sum_over_pixels_is_the_plain_sum():
    from fedmix_jax.xla_cpu import plain_sum_over_pixels, sum_over_pixels

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 40, 6))
    np.testing.assert_allclose(jax.jit(sum_over_pixels)(x), plain_sum_over_pixels(x),
                               rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.PRNGKey(1), (3, 6))
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(sum_over_pixels(x) * g))(x),
                               jnp.broadcast_to(g[:, None, :], x.shape), rtol=1e-6)
