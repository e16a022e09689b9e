"""One definition per component for its settings: TOML file, environment and command-line flags.

Each component subclasses ``KitSettings`` with its own env prefix and its own table in the TOML
file (``[swarm]``, ``[health]``, ``[gateway]``, ``[bot]``). Precedence, highest first: command-line
flags, environment variables, the TOML file, field defaults. ``add_arguments`` turns the fields
into argparse options whose help is the field's description and whose default shown is the
field's real default, so ``--help`` cannot drift from the code.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from swarm.errors import ConfigError

CONFIG_ENV = "PETALS_CONFIG"
DEFAULT_CONFIG_FILE = "swarm.toml"

S = TypeVar("S", bound="KitSettings")

# The TOML table being applied by KitSettings.load(); pydantic-settings asks for its sources
# while constructing the object, so the values travel in a context variable, not a global.
_toml_values: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "kit_toml_values", default=None
)


def config_path_from_env(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The TOML file to read: --config, else $PETALS_CONFIG, else ./swarm.toml if it exists."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        return path
    if os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}={str(path)!r} does not exist")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def read_toml_table(path: Path | None, table: str) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"config file {str(path)!r}: [{table}] must be a table")
    return section


class _TomlTableSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class KitSettings(BaseSettings):
    """Base for the kit's settings objects; see the module docstring."""

    model_config = SettingsConfigDict(extra="forbid", env_nested_delimiter=None)
    toml_table: ClassVar[str] = "swarm"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = _TomlTableSource(settings_cls, _toml_values.get() or {})
        return (init_settings, env_settings, toml)

    @classmethod
    def load(
        cls: type[S], config_file: str | os.PathLike[str] | None = None, **overrides: Any
    ) -> S:
        """Build the settings from flags (``overrides``), env, the TOML file and defaults.

        Validation errors become one ConfigError line naming the field, the value and the reason.
        """
        path = config_path_from_env(config_file)
        values = read_toml_table(path, cls.toml_table)
        token = _toml_values.set(values)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            raise ConfigError(_describe_validation_error(cls, exc, path)) from None
        finally:
            _toml_values.reset(token)

    @classmethod
    def from_args(cls: type[S], args: argparse.Namespace, **extra: Any) -> S:
        """Settings from parsed arguments: only flags the user actually gave override."""
        given = {
            name: getattr(args, name)
            for name in cls.model_fields
            if getattr(args, name, None) is not None
        }
        given.update({k: v for k, v in extra.items() if v is not None})
        return cls.load(getattr(args, "config", None), **given)


def _describe_validation_error(
    cls: type[KitSettings], exc: ValidationError, path: Path | None
) -> str:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "settings"
    prefix = cls.model_config.get("env_prefix", "")
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    where = f" (flag --{field.replace('_', '-')}, env {prefix}{field.upper()}"
    where += (
        f", or [{cls.toml_table}] in {path})" if path else f", or [{cls.toml_table}] in swarm.toml)"
    )
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error["type"] == "missing":
        return f"{field} is required: set it{where}"
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(cls.model_fields))
        return f"unknown setting {field!r}{shown}; known settings: {known}"
    return f"{field}{shown}: {message}{where}"


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    return False


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or (
        typing.get_origin(annotation) in (typing.Union, types.UnionType)
        and bool in typing.get_args(annotation)
    )


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type[KitSettings],
    fields: typing.Iterable[str] | None = None,
    *,
    config_flag: bool = True,
) -> None:
    """Add one ``--flag`` per settings field (all fields, or those named), help from the field."""
    if config_flag:
        parser.add_argument(
            "--config",
            metavar="FILE",
            help=f"TOML settings file (default: ${CONFIG_ENV}, "
            f"else ./{DEFAULT_CONFIG_FILE} if present)",
        )
    prefix = cls.model_config.get("env_prefix", "")
    for name in fields if fields is not None else cls.model_fields:
        info = cls.model_fields[name]
        default = info.get_default(call_default_factory=True)
        shown = "none" if default in (None, [], ()) else default
        if isinstance(shown, list | tuple):
            shown = ",".join(str(item) for item in shown)
        help_text = f"{info.description} (default: {shown}; env {prefix}{name.upper()})"
        flag = "--" + name.replace("_", "-")
        if _is_bool(info.annotation):
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        elif _is_list(info.annotation):
            parser.add_argument(
                flag, dest=name, nargs="+", metavar=name.upper().rstrip("S"), help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, metavar=name.upper(), help=help_text)
