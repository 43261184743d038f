"""Names of the records a FedMix message carries (importable without JAX, like the ClientApp
module until its first message).

Server -> site:
  ``global``  ArrayRecord: the global :class:`~fedmix_jax.site.ModelPair`, arrays ``model1`` and
              ``model2``, each model's leaves packed into one float32 vector
              (:func:`fedmix_jax.flower.array_records.pair_to_record`); evaluation: ``model1`` only,
              none for ``local``;
  ``fedmix``  ConfigRecord: ``round`` (1-based; the site function's 0-based ``round_index`` is
              ``round - 1``, which drives FedST / FedRGD's warm-up), ``config-json`` (the
              shared config groups), ``run-name``, ``site-key`` (the site's PRNG key of the
              round, raw uint32 data), ``lam``, ``beta``, ``learning-rate``, ``send-model``,
              ``kept-round``.
Site -> server (train):
  ``local``   ArrayRecord: the site's local pair after its round, packed as ``global`` (absent
              for ``local``);
  ``report``  MetricRecord: the :class:`~fedmix_jax.site.SiteReport` scalars, ``round``,
              ``site-index``, ``num-examples`` (= n_i, for Flower tooling);
  ``site``    ConfigRecord: ``site-name``.
Site -> server (evaluate): ``eval`` MetricRecord (Dice / IoU on validation and test, counts).
Site -> server (query.info): ``info`` ConfigRecord (name, index, split sizes, image shape, classes,
levels).
"""

GLOBAL_RECORD = "global"
CONFIG_RECORD = "fedmix"
LOCAL_RECORD = "local"
REPORT_RECORD = "report"
SITE_RECORD = "site"
EVAL_RECORD = "eval"
INFO_RECORD = "info"
