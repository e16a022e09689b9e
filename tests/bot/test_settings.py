"""Bot settings: the token only from env or an owner-only file, placeholders refused, test URLs
only on loopback, lists from env, and the TOML table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.errors import TokenError
from bot.settings import TOKEN_ENV, BotSettings, check_token, load_token
from swarm.errors import ConfigError
from tests.bot.helpers import GOOD

pytestmark = pytest.mark.unit


def token_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "token"
    path.write_text(text + "\n", encoding="utf-8")
    os.chmod(path, mode)
    return path


def test_token_from_env_wins() -> None:
    settings = BotSettings(token_file=Path("/nonexistent"))
    assert load_token(settings, {TOKEN_ENV: GOOD}) == GOOD


def test_token_from_an_owner_only_file(tmp_path: Path) -> None:
    settings = BotSettings(token_file=token_file(tmp_path, GOOD, 0o600))
    assert load_token(settings, {}) == GOOD


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666])
def test_token_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    settings = BotSettings(token_file=token_file(tmp_path, GOOD, mode))
    with pytest.raises(TokenError, match=f"mode {mode:04o}.*chmod 600") as error:
        load_token(settings, {})
    assert GOOD not in str(error.value)


def test_no_token_anywhere_says_where_to_put_it() -> None:
    with pytest.raises(TokenError, match=f"{TOKEN_ENV} or token_file"):
        load_token(BotSettings(), {})


def test_missing_token_file(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="cannot be read"):
        load_token(BotSettings(token_file=tmp_path / "absent"), {})


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("", "empty"),
        ("changeme", "placeholder"),
        ("YOUR_TOKEN_HERE", "placeholder"),
        ("<discord-bot-token>", "placeholder"),
        ("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "placeholder"),
        ("fake-bot-token", "does not look like"),
        ("abc.def.ghi", "does not look like"),
    ],
)
def test_placeholder_and_malformed_tokens_are_refused(value: str, needle: str) -> None:
    with pytest.raises(TokenError, match=needle) as error:
        check_token(value, "env X")
    assert "env X" in str(error.value)


def test_token_in_the_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "swarm.toml"
    config.write_text(f'[bot]\ntoken = "{GOOD}"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="never read from the config file") as error:
        BotSettings.load(config)
    assert GOOD not in str(error.value)


def test_toml_env_and_flags_share_one_definition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "swarm.toml"
    config.write_text(
        '[bot]\ncommand_prefix = "?"\nmax_new_tokens = 100\nmoderator_roles = ["TA", "lærer"]\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("PETALS_BOT_MAX_NEW_TOKENS", "200")
    monkeypatch.setenv("PETALS_BOT_CHANNELS", "11, 22 33")
    monkeypatch.setenv("PETALS_BOT_STOP_SEQUENCES", '["### User:", "</s>"]')
    settings = BotSettings.load(config, max_concurrent=3)
    assert settings.command_prefix == "?"  # TOML
    assert settings.max_new_tokens == 200  # env over TOML
    assert settings.max_concurrent == 3  # flag
    assert settings.channels == [11, 22, 33]
    assert settings.stop_sequences == ["### User:", "</s>"]
    assert settings.moderator_roles == ["TA", "lærer"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("discord_api_base", "https://discord.com/api/v10"),
        ("discord_gateway_url", "ws://10.0.0.5:1234/gw"),
        ("discord_api_base", "ftp://127.0.0.1/api"),
    ],
)
def test_test_urls_must_be_loopback(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{field}.*loopback"):
        BotSettings.load(**{field: value})


def test_loopback_test_urls_are_accepted() -> None:
    settings = BotSettings.load(
        discord_api_base="http://127.0.0.1:5000/api/v10/",
        discord_gateway_url="ws://localhost:5000/gateway-ws",
    )
    assert settings.discord_api_base == "http://127.0.0.1:5000/api/v10"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("max_new_tokens", 0, "greater than or equal to 1"),
        ("edit_interval_s", 0.0, "greater than or equal to 0.05"),
        ("log_level", "LOUD", "DEBUG, INFO"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as error:
        BotSettings.load(**{field: value})
    assert str(error.value).startswith(field) and f"PETALS_BOT_{field.upper()}" in str(error.value)
