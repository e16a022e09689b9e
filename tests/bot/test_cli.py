"""`petalctl bot`: expected failures are one line with a stable exit code; the test-only
settings stay out of --help; the CSV export works without Discord or a swarm."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.store import Store
from petalctl.main import main
from swarm.errors import EXIT_USAGE
from tests.bot.helpers import GOOD, record

pytestmark = pytest.mark.bot

OWN_PEER = "Qmf5QCDc5dkaUBsKXoDXzTpuxjFSwSMcYpAd9TWJhkViN2"
SERVER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
SWARM = ["--initial-peers", f"/ip4/127.0.0.1/tcp/31337/p2p/{OWN_PEER}", "--trusted-servers", SERVER]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("PETALS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no swarm.toml


def test_help_lists_settings_but_not_the_test_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bot", "--help"])
    text = capsys.readouterr().out
    assert "--edit-interval-s" in text and "PETALS_BOT_MAX_NEW_TOKENS" in text
    assert "--initial-peers" in text and "--chat-template" in text
    assert "discord-api-base" not in text and "discord-gateway-url" not in text
    assert "--token " not in text  # no flag for the token itself


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["bot", "--trusted-servers", SERVER], {}, "no bootstrap peers"),
        (["bot", *SWARM], {}, "no Discord bot token: set env PETALS_BOT_TOKEN"),
        (["bot", *SWARM], {"PETALS_BOT_TOKEN": "changeme"}, "placeholder"),
        (["bot", *SWARM, "--max-new-tokens", "0"], {}, "max_new_tokens = '0'"),
    ],
)
def test_expected_failures_are_one_line(
    argv: list[str],
    env: dict[str, str],
    needle: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("petalctl: error: ") and needle in err and "\n" not in err


def test_readable_token_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text(GOOD)
    os.chmod(token, 0o644)
    assert main(["bot", *SWARM, "--token-file", str(token)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "mode 0644" in err and GOOD not in err


def test_csv_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = tmp_path / "bot.sqlite3"
    store = Store(database)
    store.add_answer(record(10))
    store.rate(10, 1, 1)
    store.close()
    assert main(["bot", "--database", str(database), "--export-csv", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("answer_id,") and lines[1].endswith(",1,0")
    out = tmp_path / "answers.csv"
    assert main(["bot", "--database", str(database), "--export-csv", str(out)]) == 0
    assert out.read_text().splitlines()[1:] == lines[1:]
