"""Scanners for the published layouts: which files make up which samples of which client.

A scanner lists and cross-checks files (names, CSVs, pairing of images and masks) without decoding
any pixels; decoding happens in the builder. It returns a :class:`Scan`: the :class:`Sample` s, the
clients in their canonical order and human-readable warnings (also stored in the cache metadata).
Structural problems go through the ``on_bad_input`` policy (see :mod:`.errors`): duplicate ids,
images without masks, masks without images, bad CSV rows. A missing or empty ``data_dir`` or a
missing top-level part of the layout raises :class:`DatasetNotFoundError`.

This module is the registry (:data:`LAYOUTS`, config ``name`` -> layout) and the description of
the trees; the code is in :mod:`.scanning` (shared records, base class, file walking, pairing),
:mod:`.tables` (CSV reading), :mod:`.ham10000`, :mod:`.breast_us` and :mod:`.folders`.

Layouts (``data_dir`` is ``--config.data.data_dir``, the folder you extracted the download into):

HAM10000 (``name='ham10000'``) -- see ``HAM10000.tree`` below. Images are found by name
(``ISIC_XXXXXXX.jpg``) anywhere under ``data_dir`` (so ``HAM10000_images_part_1/`` and ``_part_2/``
both work, as does one merged folder), masks by name (``ISIC_XXXXXXX_segmentation.png``) anywhere
under ``data_dir`` (e.g. ``HAM10000_segmentations_lesion_tschandl/``; symlinked folders are
followed). Clients come from the CSV's ``dataset`` column. Each image's group for splitting is its
``lesion_id``. The ``dx`` column gives ``category`` (the diagnosis) and ``malignant``
(nv/bkl/df/vasc -> 0, bcc/akiec/mel -> 1, anything else -> -1 with a warning). The image label is
lesion presence (from the mask).

Breast ultrasound (``name='breast'``): one sub-folder per source, matched case-insensitively:
``Dataset_BUSI_with_GT`` or ``BUSI`` -> client ``busi``; ``BUSIS`` -> ``busis``; ``UDIAT``,
``DatasetB`` or ``Dataset_B`` -> ``udiat``. BUSI: ``{benign,malignant,normal}/<name> (k).png`` with
``<name> (k)_mask.png`` and optional ``_mask_1.png``, ``_mask_2.png``... all merged by logical OR; the
image label is 0 for ``normal`` and 1 otherwise (a disagreement with the mask is reported as a
warning). UDIAT / BUSIS: an image folder (``original``, ``Original`` or ``images``) and a mask folder
(``GT`` or ``masks``) with matching stems (mask ``<stem>.*`` or ``<stem>_mask.*``); the image label
is lesion presence from the mask.

Folders (``name='folders'``), the format to prepare for your own data::

    data_dir/
      <client>/                 one folder per client (any name; clients are sorted by name)
        images/<stem>.png|jpg|jpeg|bmp|tif|tiff
        masks/<stem>.png        or <stem>_mask.png (any image type); binary {0,1} or {0,255}
        labels.csv              optional: stem,label       (label: 0/1, yes/no, present/absent,
                                                            normal (0), lesion (1))
        boxes.csv               optional: stem,x_min,y_min,x_max,y_max  (inclusive pixel
                                          coordinates of the original image; several rows per stem)
        levels.csv              optional: stem,level       (pixel|box|image|none; per-sample level,
                                          overrides the config's level for that client)

CSV headers are optional (a first row starting with ``stem`` is a header); a stem may be given
with its extension. Every image needs a mask, except samples whose ``levels.csv`` level is ``box``
(then it needs ``boxes.csv`` rows), ``image`` (then it needs a ``labels.csv`` label) or ``none``;
those mask-less samples are always put in the training split (validation/test need masks).
Boxes from ``boxes.csv`` replace the ones otherwise derived from the mask. A ``labels.csv`` label
that disagrees with a mask is kept and reported as a warning.
"""

from __future__ import annotations

from fedmix_jax.data.real.breast_us import BreastUS
from fedmix_jax.data.real.folders import Folders
from fedmix_jax.data.real.ham10000 import HAM10000


LAYOUTS = {cls.name: cls() for cls in (HAM10000, BreastUS, Folders)}
