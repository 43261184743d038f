"""The registry of published layouts (:data:`LAYOUTS`: config ``name`` -> layout).

A layout's ``scan`` lists and cross-checks files (names, CSVs, pairing of images and masks)
without decoding pixels and returns a :class:`~.scanning.Scan`; structural problems go through
the ``on_bad_input`` policy, a missing ``data_dir`` or top-level part raises
:class:`~.errors.DatasetNotFoundError`. Code: :mod:`.scanning` (shared records, file walking,
pairing), :mod:`.tables` (CSVs), :mod:`.ham10000`, :mod:`.breast_us`, :mod:`.folders` (and
:mod:`.retouch`, which registers itself). The trees and each layout's rules: docs/data.md.
"""

from __future__ import annotations

from fedmix_jax.data.real.breast_us import BreastUS
from fedmix_jax.data.real.folders import Folders
from fedmix_jax.data.real.ham10000 import HAM10000


LAYOUTS = {cls.name: cls() for cls in (HAM10000, BreastUS, Folders)}
