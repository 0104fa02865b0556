"""The ``sprout`` command: demo, db, errors; and the public API surface."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import sprout
from sprout.cli import main
from sprout.config import load_settings
from sprout.demo import run_demo
from tests.support.paths import REPO_ROOT


def test_run_demo_writes_every_receipt_and_saves_carbon(sqlite_url):
    settings = load_settings(env={}, db_url=sqlite_url)
    summary = run_demo(settings, hours=6, prompts=60, progress=False)
    assert len(summary.receipts) == summary.ledger_count == 60
    assert {r.ci_provider for r in summary.receipts} == {"trace"}
    assert {r.energy_source for r in summary.receipts} == {"recorded"}
    assert len({r.ci_time for r in summary.receipts}) == 6
    assert 0.0 < summary.saving < 1.0
    served, base = summary.preferred_share()
    assert 0.0 < served <= 1.0 and 0.0 < base < 1.0


def test_demo_command_prints_mix_totals_and_ledger(sqlite_url, capsys):
    code = main(["demo", "--hours", "3", "--prompts", "30", "--db", sqlite_url, "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Hourly directive mix" in out
    assert "carbon saving" in out and "always-L0 carbon" in out
    assert "judge-preferred share" in out
    assert f"Ledger: {sqlite_url}" in out
    assert "receipts in the ledger: 30" in out


def test_demo_without_db_uses_a_fresh_file_in_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPROUT_DB_URL", raising=False)
    for _ in range(2):  # the second run replaces the first run's demo ledger
        assert main(["demo", "--hours", "1", "--prompts", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"Ledger: sqlite:///{tmp_path / 'sprout-demo.db'}" in out
    assert out.count("receipts in the ledger: 5") == 2


def test_sprout_db_url_environment_variable_is_honoured(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("SPROUT_DB_URL", url)
    assert main(["demo", "--hours", "1", "--prompts", "4", "--no-progress"]) == 0
    assert f"Ledger: {url}" in capsys.readouterr().out


def test_db_upgrade_and_current(sqlite_url, capsys):
    assert main(["db", "current", "--db", sqlite_url]) == 0
    assert "no schema" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", sqlite_url]) == 0
    assert "is at revision" in capsys.readouterr().out
    assert main(["db", "current", "--db", sqlite_url]) == 0
    from sprout.ledger.migrate import head_revisions

    assert capsys.readouterr().out.strip() in head_revisions()


@pytest.mark.parametrize(
    "args, message",
    [
        (["demo", "--zone", "ATLANTIS"], "no bundled carbon trace for zone 'ATLANTIS'"),
        (["demo", "--start-hour", "8750", "--hours", "24"], "does not fit a trace of 8760 h"),
        (["demo", "--policy", "/nonexistent/p.toml"], "/nonexistent/p.toml"),
        (["demo", "--xi", "3"], "xi"),
        (["demo", "--prompts", "0"], "at least one hour and one prompt"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args, message, sqlite_url, capsys):
    assert main([*args, "--db", sqlite_url, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sprout: error:") and message in err
    assert "Traceback" not in err


def test_bad_policy_file_names_file_key_and_problem(sqlite_url, tmp_path, capsys):
    policy = tmp_path / "bad.toml"
    policy.write_text('[[directive]]\nname = "L0"\nmax_new_tokens = -5\n')
    assert main(["demo", "--policy", str(policy), "--db", sqlite_url, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(policy) in err and "directive[0].max_new_tokens" in err and ">= 1" in err


def test_console_script_runs():
    exe = Path(sys.executable).with_name("sprout")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"sprout {sprout.__version__}"


def test_public_api_resolves_every_name():
    for name in sprout.__all__:
        assert getattr(sprout, name) is not None
    with pytest.raises(AttributeError):
        sprout.NoSuchThing  # noqa: B018


def test_import_is_light_and_side_effect_free(tmp_path):
    code = (
        "import sys, sprout; "
        "heavy = [m for m in ('scipy', 'sqlalchemy', 'torch', 'transformers', 'sklearn', "
        "'pynvml', 'numpy') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert out.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []  # nothing written at import


def test_core_install_pulls_no_torch():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    assert "torch" not in core and "transformers" not in core
    extras = project["optional-dependencies"]
    assert any(d.startswith("torch") for d in extras["hf"])
    assert {"hf", "gpu", "server", "postgres", "dev"} <= set(extras)
