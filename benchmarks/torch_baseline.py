"""Optional PyTorch baseline: the reference's round structure, in PyTorch, timed next to JAX.

Written from the spec (``fedmix-spec.md``), the way the reference PyTorch code runs a round:

* a Python loop over clients; each loads the global models 1 and 2 into its own two
  ``torch.nn.Module`` copies, whose ``torch.optim.Adam(lr, betas, eps, weight_decay)`` (L2
  added to the gradient) persist across rounds, as in the reference;
* pseudo-labels of the global models **one image at a time** (``torch.no_grad``, threshold,
  box / image-label refinement, agreement and box-fit selection, ``.item()`` per image);
* one local epoch over the usable samples in a random order, batch B. The last batch is
  smaller, as a ``DataLoader`` yields it. Per-sample random crop and flips are drawn in Python,
  as a ``Dataset.__getitem__`` does. For each batch, a step of model 1 and then a step of
  model 2 (cross pseudo-supervision), each with ``loss.item()``;
* the server's weights (the strategy's own function, from the clients' counts and losses) and
  ``global_k = sum_i w_i * local_k,i`` over every tensor of the state dicts.

The U-Net is the reference architecture (bilinear, GroupNorm with C/2 groups, eps 1e-5). Its
parameter names are the reference's, and it starts from the same weights as the JAX round
(``fedmix_jax.reference_weights.state_dict_from_params``). Sample order and augmentation draws
differ from JAX's, so the first round's counts and steps match but the parameters do not.

torch is never a dependency: :func:`variant` returns a message instead of a variant when torch
is not importable, and the benchmark prints it.
"""

from __future__ import annotations

import time

import jax
import numpy as np

import fedmix_jax as fm
from fedmix_jax.data.federation import BOX, IMAGE, PIXEL, float_images
from fedmix_jax.models import unet_channels
from fedmix_jax.reference_weights import params_from_state_dict, state_dict_from_params
from fedmix_jax.site import ModelPair

from benchmarks.baselines import site_reports


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def build_unet(torch, width: int, depth: int, in_channels: int, num_classes: int):
    """The reference U-Net as a ``torch.nn.Module`` (NCHW), with the reference's parameter names."""
    nn, fn = torch.nn, torch.nn.functional

    class DoubleConv(nn.Module):
        def __init__(self, cin, cout, mid=None):
            super().__init__()
            mid = mid or cout
            self.double_conv = nn.Sequential(
                nn.Conv2d(cin, mid, 3, padding=1), nn.GroupNorm(mid // 2, mid, eps=1e-5),
                nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 3, padding=1),
                nn.GroupNorm(cout // 2, cout, eps=1e-5), nn.ReLU(inplace=True))

        def forward(self, x):
            return self.double_conv(x)

    class Down(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout))

        def forward(self, x):
            return self.maxpool_conv(x)

    class Up(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = DoubleConv(cin, cout, cin // 2)

        def forward(self, x, skip):
            x = fn.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            dy, dx = skip.size(2) - x.size(2), skip.size(3) - x.size(3)
            x = fn.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            return self.conv(torch.cat([skip, x], dim=1))

    class OutConv(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 1)

        def forward(self, x):
            return self.conv(x)

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            enc, dec = unet_channels(width, depth)
            self.depth = depth
            self.inc = DoubleConv(in_channels, enc[0])
            for i in range(1, depth + 1):
                setattr(self, f"down{i}", Down(enc[i - 1], enc[i]))
            for j in range(1, depth + 1):
                cin = enc[depth - j] + (enc[depth] if j == 1 else dec[j - 2])
                setattr(self, f"up{j}", Up(cin, dec[j - 1]))
            self.outc = OutConv(dec[-1], num_classes)

        def forward(self, x):
            skips = [self.inc(x)]
            for i in range(1, self.depth + 1):
                skips.append(getattr(self, f"down{i}")(skips[-1]))
            x = skips.pop()
            for j in range(1, self.depth + 1):
                x = getattr(self, f"up{j}")(x, skips.pop())
            return self.outc(x)

    return UNet()


class TorchRound:
    """One FedMix round in PyTorch with the reference's structure (see the module docstring)."""

    def __init__(self, torch, model, config, train, state, device: str):
        self.torch, self.config, self.device = torch, config, torch.device(device)
        self.strategy = config.strategy
        self.sel = config.strategy.selection
        c, n, h, w, cin = train.images.shape
        k = train.masks.shape[-1]
        self.depth = model.depth
        to = lambda a: torch.from_numpy(np.array(a, np.float32)).permute(  # noqa: E731
            0, 3, 1, 2).contiguous().to(self.device)
        self.clients = []
        for i in range(c):
            nets = [build_unet(torch, model.width, model.depth, cin, k).to(self.device)
                    for _ in range(2)]
            opts = [torch.optim.Adam(net.parameters(), lr=config.learning_rate,
                                     betas=(config.b1, config.b2), eps=config.adam_eps,
                                     weight_decay=config.weight_decay) for net in nets]
            self.clients.append(dict(
                nets=nets, opts=opts, images=to(float_images(np.asarray(train.images[i]))),
                masks=to(train.masks[i]),
                boxes=to(train.boxes[i]), labels=np.asarray(train.image_labels[i], np.float32),
                levels=np.asarray(train.levels[i]), valid=np.asarray(train.valid[i])))
        self.global_sd = [self._state_dict(p) for p in state.global_params]
        for cl in self.clients:                     # every client starts from the initial pair
            for net, sd in zip(cl["nets"], self.global_sd):
                net.load_state_dict(sd)
        self.rng = np.random.default_rng(0)
        self.weights_fn = jax.jit(self.strategy.weights)
        self.hparams = config.hparams()

    def _state_dict(self, params):
        return {name: self.torch.tensor(np.array(v, np.float32)).to(self.device)
                for name, v in state_dict_from_params(params).items()}

    # -- the pieces of a round
    def _dice(self, a, b):
        eps = 1e-4
        inter = (a * b).sum(dim=(1, 2, 3))
        return (2 * inter + eps) / (a.sum(dim=(1, 2, 3)) + b.sum(dim=(1, 2, 3)) + eps)

    def _pseudo_label(self, cl, i, nets):
        """Refined pseudo-labels of image i and whether it is selected (one image at a time)."""
        torch, sel = self.torch, self.sel
        x = cl["images"][i:i + 1]
        with torch.no_grad():
            p1, p2 = ((torch.sigmoid(net(x)) > sel.threshold).float() for net in nets)
        level, box = cl["levels"][i], cl["boxes"][i:i + 1]
        label = torch.from_numpy(cl["labels"][i].copy()).to(self.device)[None, :, None, None]
        if sel.refine and level == BOX:
            p1, p2 = p1 * box, p2 * box
        if level == IMAGE and ((sel.refine and p1.shape[1] > 1) or sel.use_image_labels):
            p1, p2 = p1 * label, p2 * label
        agreement = self._dice(p1, p2)
        ok = agreement >= sel.agreement
        if level == BOX:
            ok = ok & (self._dice(p1 * box, box) >= sel.box_fit)
        if sel.reject_empty:
            ok = ok & ((p1.sum() + p2.sum()) > 0)
        if getattr(sel, "empty_boxes_negative", False) and level == BOX and box.sum() == 0:
            p1, p2 = p1 * 0, p2 * 0                 # a certain "no lesion": empty target
            ok = torch.ones_like(ok)
        if sel.use_image_labels and level == IMAGE:
            present = label.flatten() > 0
            if not bool(present.any()):
                ok = torch.ones_like(ok)
            else:
                filled = (p1.sum(dim=(2, 3)) > 0) & (p2.sum(dim=(2, 3)) > 0)
                ok = (agreement >= sel.agreement) & (filled.flatten() | ~present).all()
        return bool(ok.reshape(-1)[0].item()), p1[0], p2[0]           # .item(): per image

    def _augment(self, tensors):
        """Per-sample random crop and flips, applied alike to every tensor [C, H, W]."""
        crop = self.config.crop
        _, h, w = tensors[0].shape
        if crop is not None:
            y0 = int(self.rng.integers(0, h - crop[0] + 1))
            x0 = int(self.rng.integers(0, w - crop[1] + 1))
            tensors = [t[:, y0:y0 + crop[0], x0:x0 + crop[1]] for t in tensors]
        if self.config.hflip and self.rng.random() < 0.5:
            tensors = [t.flip(-1) for t in tensors]
        if self.config.vflip and self.rng.random() < 0.5:
            tensors = [t.flip(-2) for t in tensors]
        return tensors

    def _loss(self, logits, target):
        return (1.0 - self._dice(self.torch.sigmoid(logits), target)).mean()

    def _client(self, cl):
        torch, strategy = self.torch, self.strategy
        nets, opts = cl["nets"], cl["opts"]
        if strategy.aggregates:
            for net, sd in zip(nets, self.global_sd):                 # load the global models
                net.load_state_dict(sd)
        samples, weak, selected = [], 0, 0
        for i in map(int, np.flatnonzero(cl["valid"])):
            if strategy.weak_samples == "ground_truth" or cl["levels"][i] == PIXEL:
                samples.append((i, cl["masks"][i], cl["masks"][i]))
                continue
            weak += 1
            if strategy.weak_samples == "pseudo_labels":
                ok, p1, p2 = self._pseudo_label(cl, i, nets)
                if ok:
                    selected += 1
                    samples.append((i, p2, p1))                        # cross supervision
        order = self.rng.permutation(len(samples))
        b = self.config.batch_size
        losses = ([], [])
        dual = strategy.trains_model2
        for s in range(0, len(order), b):
            batch = [samples[j] for j in order[s:s + b]]
            views = [self._augment([cl["images"][i], t1, t2]) for i, t1, t2 in batch]
            x = torch.stack([v[0] for v in views])
            for m in range(2 if dual else 1):
                target = torch.stack([v[1 + m] for v in views])
                opts[m].zero_grad()
                loss = self._loss(nets[m](x), target)
                loss.backward()
                opts[m].step()
                losses[m].append(loss.item())                          # a host sync per step
        mean = lambda v: float(np.mean(v)) if v else 0.0  # noqa: E731
        pixel = int((cl["valid"] & (cl["levels"] == PIXEL)).sum())
        return dict(counts=len(samples), weak=weak, selected_weak=selected, pixel=pixel,
                    steps=-(-len(samples) // b), loss1=mean(losses[0]), loss2=mean(losses[1]),
                    participating=bool(cl["valid"].any()))

    def __call__(self):
        rows = [self._client(cl) for cl in self.clients]
        col = lambda k, dt: np.asarray([r[k] for r in rows], dt)  # noqa: E731
        metrics = dict(loss1=col("loss1", np.float32), loss2=col("loss2", np.float32),
                       counts=col("counts", np.int32), weak=col("weak", np.int32),
                       selected_weak=col("selected_weak", np.int32), steps=col("steps", np.int32))
        reports = site_reports(metrics, col("pixel", np.int32))
        weights = np.asarray(self.weights_fn(reports, col("participating", bool), self.hparams))
        metrics["weights"] = weights
        if self.strategy.aggregates:
            with self.torch.no_grad():
                for m in range(2):
                    local = [cl["nets"][m].state_dict() for cl in self.clients]
                    self.global_sd[m] = {name: sum(float(w) * sd[name]
                                                   for w, sd in zip(weights, local))
                                         for name in self.global_sd[m]}
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
        return metrics


class TorchVariant:
    """The benchmark's ``torch`` row: calling it runs one :class:`TorchRound` round.

    ``threads``: torch's intra-op threads for this variant's rounds (``torch.set_num_threads``
    before each round; the benchmark interleaves variants in one process); None keeps torch's
    default (one per core). On a shared CPU whose other jobs keep the cores busy, torch's
    OpenMP workers wait for each other at every operator, so one thread can be several times
    faster than the default there: the benchmark can time both (``--torch_threads``).
    """

    def __init__(self, torch, model, config, train, key, image_shape, device=None,
                 threads: int | None = None):
        self.name, self.devices = "torch" if threads is None else f"torch_{threads}t", 1
        self.default_threads = torch.get_num_threads()
        self.threads = threads
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        state = fm.init_state(model, key, image_shape, train.num_clients, config)
        t0 = time.perf_counter()
        self.round = TorchRound(torch, model, config, train, state, device)
        self.setup_s = time.perf_counter() - t0
        self.torch, self.device = torch, device
        self.first_metrics = self.first_global = None

    def describe(self) -> dict:
        return dict(version=self.torch.__version__, device=self.device,
                    threads=self.threads or self.default_threads,
                    default_threads=self.threads is None, setup_s=self.setup_s)

    def __call__(self):
        self.torch.set_num_threads(self.threads or self.default_threads)
        m = self.round()
        if self.first_metrics is None:
            self.first_metrics = m
            self.first_global = ModelPair(*(
                params_from_state_dict({k: v.cpu().numpy() for k, v in sd.items()},
                                       depth=self.round.depth)
                for sd in self.round.global_sd))
        return m


def variant(model, config, train, key, image_shape, threads: int | None = None):
    """A :class:`TorchVariant` (``threads``: see there), or a message saying why the PyTorch
    baseline does not run."""
    torch = _import_torch()
    if torch is None:
        return "torch is not importable; `pip install torch` to time the PyTorch baseline"
    if getattr(config, "empty_target_loss", "dice") != "dice":
        return "the PyTorch baseline trains with the reference's Dice loss only"
    if getattr(model, "dtype", None) is not None and np.dtype(model.dtype) != np.float32:
        return f"the PyTorch baseline runs float32 only (the model computes in {model.dtype})"
    return TorchVariant(torch, model, config, train, key, image_shape, threads=threads)
