"""The carbon ledger: schema, buffered writer, audit queries."""
