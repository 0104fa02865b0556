"""Training the per-request policy from what the quality loop judged, and serving it.

- :mod:`~sprout.training.sources`: where examples come from (the ledger, the recordings);
- :mod:`~sprout.training.verdicts`: the ledger's verdicts as recency-weighted examples;
- :mod:`~sprout.training.dataset`: the examples as arrays and the held-out split;
- :mod:`~sprout.training.retrain`: fit, evaluate, store a new policy version;
- :mod:`~sprout.training.versions`: the LP's policy versions and the bundled statistics;
- :mod:`~sprout.training.serving`: load the newest version, and watch for newer ones;
- :mod:`~sprout.training.schedule`: retrain on a crontab schedule.

This is the runtime layer: it reads and writes the ledger, and builds on the pure policy
code in :mod:`sprout.policy`.
"""
