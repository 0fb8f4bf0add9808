"""The lake's dataset names and file names, in one place.

A dataset is a folder of the lake with one partition ``dt=YYYY-MM-DD/`` per run date
(:mod:`recsys.io.lake` builds the paths); each stage writes its own and reads earlier ones.
"""

from __future__ import annotations

STAGING = "staging/interactions"  # extract: the rows of each day as read, before any check
INTERACTIONS = "interactions"  # validate: the rows that passed
QUARANTINE = "quarantine/interactions"  # validate: the rows that did not, with their reasons
VALIDATION = "validation"  # validate: the Data Docs and summary of the run date
CONFIDENCE = "confidence"  # aggregate: confidence per (user, item), hold-out truth, popularity
PAIR_EVENTS = "pair_events"  # index_events: the window's events indexed by pair, the hold-out
TUNING = "tuning"  # screen, tune: one JSON per candidate (screen-<hash>, candidate-<hash>)
PROMOTION = "promotion.json"  # in a tuning partition: what promote sent on to tune and what it cut
SCREENING = "screening.json"  # in a tuning partition: each candidate's estimated seconds, and what was cut unscreened
MODELS = "models"  # train: the model, its ids, parameters, metrics and the report
RECOMMENDATIONS = "recommendations"  # recommend: every list the storefront reads
REPORTS = "reports"  # train: the nightly report of each run date
# recsys_refresh, one partition per day of its runs' end (each run rewrites it with all events since the night):
REFRESH_EVENTS = "refresh/interactions"  # collect_events: the new events that passed the row checks
REFRESH_QUARANTINE = "refresh/quarantine"  # collect_events: the new rows that did not, with their reasons
REFRESH_LISTS = "refresh/lists"  # score_active: the active users' lists
REFRESH_META = "_refresh.json"  # in those partitions: the served night, the run's end, counts
REFRESH_RUNS = "refresh/runs"  # publish_refresh: one <end>.json per run that wrote (the nightly report lists them)

DATA_FILE = "part-0.parquet"  # the data file of a partition that has one
MANIFEST = "_manifest.json"  # an S3 partition's commit record
EXTRACT_META = "_extract.json"  # what extract read for a staged day
CHAMPION = "models/champion.json"  # under the lake root: the model being served (set by verify)
REPORT_FILE = "report.html"  # the nightly report, in the reports partition
