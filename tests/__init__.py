"""The test suite, a package: ``unit/<package>/`` mirrors ``sprout/`` (top-level modules in
``unit/core/``), ``integration/`` holds what starts servers, subprocesses, PostgreSQL or a
browser, or runs end to end, and ``support/`` what the tests share. Modules import shared
code as ``tests.support.<module>``; equal file names in different folders are fine."""
