"""Builder configs of the real-data TFDS builders: the preprocessing and split options.

A :class:`FedMixConfig` holds ``image_size``, ``channels`` (1 or 3), the split ``seed``,
``test_fraction``, ``val_fraction``, ``on_bad_input`` ('fail' | 'skip'), ``box_mode``,
``drop_empty_slices`` (RETOUCH only: B-scans without fluid are not written) and a ``tag``; its name
encodes them (:func:`config_name`), e.g. ``gray256_seed0_test20_val10`` (``rgb`` for 3 channels,
``_skip``, ``_enclosing``, ``_dropempty``, and ``_d<hash>`` from :func:`data_dir_tag` for the
folders builder), so every combination has its own cache directory.
:func:`built_splits` lists the splits a config writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import tensorflow_datasets as tfds

from fedmix_jax.data.real.splits import SPLITS


@dataclasses.dataclass(eq=False)
class FedMixConfig(tfds.core.BuilderConfig):
    """Preprocessing and split options (see module docstring); build with :func:`make_config`."""

    image_size: int = 256
    channels: int = 1
    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    on_bad_input: str = "fail"
    tag: str = ""
    box_mode: str = "component"
    drop_empty_slices: bool = False


def _pct(f: float) -> str:
    return f"{100 * float(f):g}".replace(".", "p")


def config_name(image_size=256, channels=1, seed=0, test_fraction=0.2, val_fraction=0.1,
                on_bad_input="fail", tag="", box_mode="component",
                drop_empty_slices=False) -> str:
    name = (f"{'gray' if int(channels) == 1 else 'rgb'}{int(image_size)}_seed{int(seed)}"
            f"_test{_pct(test_fraction)}_val{_pct(val_fraction)}")
    if str(on_bad_input).lower() == "skip":
        name += "_skip"
    if str(box_mode).lower() == "enclosing":
        name += "_enclosing"
    if drop_empty_slices:
        name += "_dropempty"
    if tag:
        name += f"_{tag}"
    return name


def data_dir_tag(data_dir: str) -> str:
    """Short hash of an absolute data_dir path (keys the folders builder's cache)."""
    p = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    return "d" + hashlib.sha256(p.encode("utf-8")).hexdigest()[:10]


def new_config(image_size=256, channels=1, seed=0, test_fraction=0.2, val_fraction=0.1,
               on_bad_input="fail", tag="", box_mode="component",
               drop_empty_slices=False) -> FedMixConfig:
    return FedMixConfig(
        name=config_name(image_size, channels, seed, test_fraction, val_fraction, on_bad_input,
                         tag, box_mode, drop_empty_slices),
        description=(f"{'grayscale' if channels == 1 else 'RGB'} {image_size}x{image_size}, split "
                     f"seed {seed}, test {test_fraction}, val {val_fraction} of train, "
                     f"on_bad_input={on_bad_input}, box_mode={box_mode}"
                     + (", slices without foreground dropped" if drop_empty_slices else "")),
        image_size=int(image_size), channels=int(channels), seed=int(seed),
        test_fraction=float(test_fraction), val_fraction=float(val_fraction),
        on_bad_input=str(on_bad_input).lower(), tag=tag, box_mode=str(box_mode).lower(),
        drop_empty_slices=bool(drop_empty_slices))


def built_splits(cfg) -> tuple[str, ...]:
    """The splits a config writes: ``train`` always, ``validation``/``test`` when their fraction
    is > 0 (TFDS cannot write an empty split)."""
    return tuple(sp for sp in SPLITS if sp == "train"
                 or (sp == "validation" and cfg.val_fraction > 0)
                 or (sp == "test" and cfg.test_fraction > 0))


DEFAULT_CONFIGS = [dict(image_size=256, channels=1), dict(image_size=64, channels=1),
                    dict(image_size=256, channels=3)]
