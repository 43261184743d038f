"""Names of the records a FedMix message carries (importable without JAX, like the ClientApp
module until its first message). What each holds: docs/across_sites.md ("What crosses the
network")."""

GLOBAL_RECORD = "global"      # server -> site: the global pair (ArrayRecord)
CONFIG_RECORD = "fedmix"      # server -> site: round, config-json, site-key, ... (ConfigRecord)
LOCAL_RECORD = "local"        # site -> server (train): the local pair (ArrayRecord)
REPORT_RECORD = "report"      # site -> server (train): SiteReport scalars (MetricRecord)
SITE_RECORD = "site"          # site -> server (train): site-name (ConfigRecord)
EVAL_RECORD = "eval"          # site -> server (evaluate): figures (MetricRecord)
INFO_RECORD = "info"          # site -> server (query.info): the declaration (ConfigRecord)
