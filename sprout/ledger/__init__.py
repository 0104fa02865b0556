"""The carbon ledger.

- :mod:`~sprout.ledger.schema`: the tables (SQLAlchemy models; changed only by migrations);
- :mod:`~sprout.ledger.migrate`: engines and Alembic migrations;
- :mod:`~sprout.ledger.store`: :class:`~sprout.ledger.store.Ledger`, the buffered,
  hash-chaining writer with its spool and durable journal, a facade over
  :mod:`~sprout.ledger._writer` (the batching writer thread), :mod:`~sprout.ledger._insert`
  (the chained INSERT), :mod:`~sprout.ledger._spool`, :mod:`~sprout.ledger._journal`,
  :mod:`~sprout.ledger._rows` (row encoding), :mod:`~sprout.ledger._database` (engine and
  transactions) and the table modules :mod:`~sprout.ledger.readings`,
  :mod:`~sprout.ledger.versions`, :mod:`~sprout.ledger.receipts`,
  :mod:`~sprout.ledger.verdicts`, :mod:`~sprout.ledger.prompts`;
- :mod:`~sprout.ledger.chain`: the hash-chain encoding (pure);
- :mod:`~sprout.ledger.rollup`: hourly rollups maintained on write;
- :mod:`~sprout.ledger.verify`, :mod:`~sprout.ledger.chain_walk`: integrity checks
  (``sprout ledger verify``); :mod:`~sprout.ledger.audit` (the report's queries),
  :mod:`~sprout.ledger.audit_report` (its rows), :mod:`~sprout.ledger.audit_format` (its
  formats), :mod:`~sprout.ledger.sci_report` and :mod:`~sprout.ledger.sci_format` (SCI),
  :mod:`~sprout.ledger.plot`: reports and plots
  (``sprout ledger report|plot``); :mod:`~sprout.ledger.connection`: one connection for a
  read-only command;
- :mod:`~sprout.ledger.locks`: cluster-wide job locks; :mod:`~sprout.ledger.retention`:
  pruning of sampled prompts (``sprout ledger prune``);
- :mod:`~sprout.ledger.checkpoint` (pure), :mod:`~sprout.ledger.keys`,
  :mod:`~sprout.ledger.attest`, :mod:`~sprout.ledger.checkpoint_files`,
  :mod:`~sprout.ledger.checkpoint_job`: signed checkpoints of the chains (``sprout ledger
  keygen|checkpoint``, ``verify --checkpoint``); :mod:`~sprout.ledger.pending`: receipts
  waiting in the spool or journals (``verify``, ``sprout ledger recover``).

Modules whose names start with ``_`` are the store's implementation, imported only inside
this package; their names and signatures may change in any release.

Nothing is imported here, so importing a submodule stays cheap.
"""
