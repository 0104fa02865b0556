"""``sprout ledger verify|keygen|checkpoint|recover``: integrity beyond the database.

Registered by :func:`sprout.cli.ledger.register`. ``verify`` exit codes: 0 intact and
nothing pending; 1 a problem (a broken chain or rollup, a checkpoint that no longer matches
or whose signature fails); 2 bad input (a missing or invalid key or checkpoint file);
3 intact, but receipts wait outside the database (:data:`EXIT_PENDING`: run
``sprout ledger recover``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sprout.cli.app import EXIT_FAILURE, EXIT_OK
from sprout.cli.options import add_settings_options, existing_ledger, settings_for

EXIT_PENDING = 3


def run_verify(args: argparse.Namespace, settings: Any) -> int:
    """``sprout ledger verify``: the chains, the checkpoints given, and what is pending."""
    from sprout.ledger.attest import check_checkpoints
    from sprout.ledger.checkpoint_files import checkpoint_files, read_checkpoint
    from sprout.ledger.keys import verifying_key
    from sprout.ledger.pending import scan_pending, spool_path_for
    from sprout.ledger.verify import verify

    checkpoints = []
    public_key = None
    if args.checkpoint:  # read (and refuse bad files and keys) before the long scan
        checkpoints = [(str(p), read_checkpoint(p)) for p in checkpoint_files(args.checkpoint)]
        public_key = verifying_key(settings, args.public_key)
    result = verify(settings.db_url, check_rollups=not args.no_rollups)
    if checkpoints:
        check_checkpoints(settings.db_url, checkpoints, public_key, result)
    pending = scan_pending(settings.db_url, spool_path_for(settings))
    result.pending_receipts = pending.pending
    result.pending_note = pending.note()
    result.pending = pending.as_dict()
    code = EXIT_FAILURE if not result.ok else EXIT_PENDING if pending.pending else EXIT_OK
    if args.json:
        print(json.dumps({**result.as_dict(), "exit_code": code}, indent=2))
    else:
        print(result.summary())
    return code


def _cmd_keygen(args: argparse.Namespace) -> int:
    from sprout.ledger.keys import generate_key_files, load_private_key, public_pem

    settings = settings_for(args)
    out = args.out or settings.ledger_checkpoint_key or "sprout-checkpoint.key"
    if "\n" in out or "-----BEGIN" in out:
        from sprout.errors import ConfigError

        raise ConfigError(
            "ledger_checkpoint_key holds PEM text, not a path: give keygen --out FILE"
        )
    private, public, kid = generate_key_files(out, args.public_out, force=args.force)
    print(f"wrote the signing key {private} (mode 0600; keep it secret, never in the database)")
    print(f"wrote the public key {public} (give a copy to your auditor)")
    print(f"key id {kid}")
    print(public_pem(load_private_key(str(private), origin="--out").public_key()), end="")
    return EXIT_OK


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    from sprout.errors import ConfigError
    from sprout.ledger.checkpoint_job import checkpoint_once, schedule_checkpoints
    from sprout.ledger.keys import signing_key

    settings = settings_for(args)
    if args.dir:
        settings = settings.replace(ledger_checkpoint_dir=args.dir)
    existing_ledger(settings.db_url)
    key = signing_key(settings, args.key)
    if args.schedule:
        from sprout.scheduler import create_scheduler, run_blocking

        scheduler = create_scheduler(blocking=True, max_workers=1)
        schedule_checkpoints(scheduler, settings, key=key)
        print(
            f"signed checkpoints into {settings.ledger_checkpoint_dir} on cron "
            f"{settings.ledger_checkpoint_cron!r} (UTC); Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        run_blocking(scheduler)
        return EXIT_OK
    directory = settings.ledger_checkpoint_dir or None
    to_stdout = args.output == "-"
    if directory is None and args.output is None:
        raise ConfigError(
            "where to? give --output FILE (- for stdout) or --dir DIR, or set ledger_checkpoint_dir"
        )
    cp, written = checkpoint_once(
        settings,
        key=key,
        directory=directory,
        output=None if to_stdout else args.output,
        full=args.full,
    )
    if to_stdout:
        sys.stdout.write(cp.to_json())
    message = (
        f"signed checkpoint of {cp.database}: {len(cp.chains)} chains, {cp.receipts} "
        f"receipts, key {cp.key_id}" + "".join(f"\nwrote {p}" for p in written)
    )
    print(message, file=sys.stderr if to_stdout else sys.stdout)
    return EXIT_OK


def _cmd_recover(args: argparse.Namespace) -> int:
    from sprout.ledger.pending import recover, spool_path_for

    settings = settings_for(args)
    existing_ledger(settings.db_url)
    result = recover(settings.db_url, spool_path_for(settings))
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.summary())
    return EXIT_FAILURE if result.remaining else EXIT_OK


def add_verify_options(parser: argparse.ArgumentParser) -> None:
    """``verify``'s checkpoint options."""
    parser.add_argument(
        "--checkpoint",
        action="append",
        metavar="FILE",
        help="also check the ledger against this signed checkpoint (a file, or a directory "
        "of them; repeatable)",
    )
    parser.add_argument(
        "--public-key",
        metavar="FILE",
        help="the checkpoints' Ed25519 public key (default: ledger_checkpoint_public_key)",
    )


def register(sub: Any) -> None:
    """Add ``keygen``, ``checkpoint`` and ``recover`` to ``sprout ledger``'s subparsers."""
    keygen = sub.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signed checkpoints",
        description="Writes a new Ed25519 private key (PEM, mode 0600) and its public key "
        "(FILE.pub), and prints the public key and its id. Keep the private key out of the "
        "database and its backups; give the public key to your auditor.",
    )
    add_settings_options(keygen)
    keygen.add_argument(
        "--out",
        "-o",
        metavar="FILE",
        help="private key file (default: ledger_checkpoint_key, else sprout-checkpoint.key)",
    )
    keygen.add_argument("--public-out", metavar="FILE", help="public key file (default FILE.pub)")
    keygen.add_argument("--force", action="store_true", help="replace existing files")
    keygen.set_defaults(func=_cmd_keygen)

    checkpoint = sub.add_parser(
        "checkpoint",
        help="sign a checkpoint of every chain head, for an auditor to keep",
        description="Recomputes every hash chain (from the newest checkpoint of this ledger "
        "in the directory, else from the start), refuses a ledger that does not verify, and "
        "writes a checkpoint of each chain's count, head hash and sums signed with Ed25519 "
        "(key: --key or ledger_checkpoint_key). `sprout ledger verify --checkpoint FILE` then "
        "catches any later rewrite of what it covers, even one that recomputed every hash.",
    )
    add_settings_options(checkpoint)
    checkpoint.add_argument("--output", "-o", metavar="FILE", help="write it here (- for stdout)")
    checkpoint.add_argument(
        "--dir", metavar="DIR", help="write it into this directory (default: ledger_checkpoint_dir)"
    )
    checkpoint.add_argument(
        "--key", metavar="FILE", help="signing key file (default: ledger_checkpoint_key)"
    )
    checkpoint.add_argument(
        "--full", action="store_true", help="recompute every chain from its first row"
    )
    checkpoint.add_argument(
        "--schedule",
        action="store_true",
        help="run until stopped, one checkpoint per ledger_checkpoint_cron into the directory",
    )
    checkpoint.set_defaults(func=_cmd_checkpoint)

    recover = sub.add_parser(
        "recover",
        help="bring receipts left in the spool or a killed process's journal into the ledger",
        description="Opens the ledger beside its spool: journals of stopped durable writers "
        "are adopted and the spool replayed (receipts stored already are skipped). Prints how "
        "many receipts were recovered and how many remain; exit 1 while some remain.",
    )
    add_settings_options(recover)
    recover.add_argument("--json", action="store_true", help="print the result as JSON")
    recover.set_defaults(func=_cmd_recover)


__all__ = ["EXIT_PENDING", "add_verify_options", "register", "run_verify"]
