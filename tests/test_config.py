"""Configuration: defaults, TOML file, LIVEPUSH_* environment, overrides, and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from livepush.config import Config, coerce, field_type, fields, load_config


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "livepush.toml"
    path.write_text(text)
    return str(path)


def test_defaults_work_for_a_single_node() -> None:
    config = load_config(environ={})
    assert config.host == "127.0.0.1"
    assert config.port == 5680
    assert config.engine == "memory"
    assert config.rest_prefix == "/rest"
    assert config.jwt_secret is None
    assert config.jwt_leeway == 10.0
    assert config.jwt_user_claim == "sub"
    assert config.auth_cookie == "n8n-auth"
    assert config.allowed_origins == []
    assert config.trust_proxy is False
    assert config.history_size == 1000
    assert config.max_queue_bytes == 4 * 1024 * 1024
    assert config.rate_limit == 50.0
    assert not config.has_token_key


def test_default_list_is_not_shared_between_configs() -> None:
    first = load_config(environ={})
    first.allowed_origins.append("https://a.example")
    assert load_config(environ={}).allowed_origins == []


def test_environment_variables_override_defaults() -> None:
    config = load_config(
        environ={
            "LIVEPUSH_HOST": "0.0.0.0",
            "LIVEPUSH_PORT": "8080",
            "LIVEPUSH_JWT_SECRET": "s3cret",
            "LIVEPUSH_JWT_LEEWAY": "2.5",
            "LIVEPUSH_TRUST_PROXY": "true",
            "LIVEPUSH_ALLOWED_ORIGINS": "https://a.example, https://b.example/",
            "LIVEPUSH_REST_PREFIX": "/n8n/rest/",
        }
    )
    assert config.host == "0.0.0.0"
    assert config.port == 8080
    assert config.jwt_secret == "s3cret"
    assert config.jwt_leeway == 2.5
    assert config.trust_proxy is True
    assert config.allowed_origins == ["https://a.example", "https://b.example"]
    assert config.rest_prefix == "/n8n/rest"
    assert config.has_token_key


def test_unrelated_environment_variables_are_ignored() -> None:
    config = load_config(environ={"PORT": "1", "LIVEPUSH": "x", "LIVEPUSH_NOT_A_SETTING": "1"})
    assert config.port == 5680


def test_toml_top_level_keys_are_read(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        'port = 7000\nhost = "::"\ntrust_proxy = true\n'
        'allowed_origins = ["https://a.example"]\nhistory_ttl = 60\n',
    )
    config = load_config(config_file=path, environ={})
    assert config.port == 7000
    assert config.host == "::"
    assert config.trust_proxy is True
    assert config.allowed_origins == ["https://a.example"]
    assert config.history_ttl == 60.0
    assert isinstance(config.history_ttl, float)


def test_toml_livepush_table_is_read(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[livepush]\nport = 7001\njwt_secret = "from-file"\n')
    config = load_config(config_file=path, environ={})
    assert config.port == 7001
    assert config.jwt_secret == "from-file"


def test_toml_keys_may_use_dashes(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'rest-prefix = "/api"\nmax-queue-messages = 50\n')
    config = load_config(config_file=path, environ={})
    assert config.rest_prefix == "/api"
    assert config.max_queue_messages == 50


def test_toml_string_values_are_coerced(tmp_path: Path) -> None:
    path = _toml(
        tmp_path, 'port = "7002"\ntrust_proxy = "yes"\nallowed_origins = "https://a, https://b"\n'
    )
    config = load_config(config_file=path, environ={})
    assert config.port == 7002
    assert config.trust_proxy is True
    assert config.allowed_origins == ["https://a", "https://b"]


def test_unknown_toml_key_refused_naming_it(tmp_path: Path) -> None:
    path = _toml(tmp_path, "port = 7000\nprot = 7001\n")
    with pytest.raises(ValueError, match="prot") as info:
        load_config(config_file=path, environ={})
    assert path in str(info.value)


def test_unknown_key_in_livepush_table_refused_naming_it(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[livepush]\nhistroy_size = 5\n")
    with pytest.raises(ValueError, match="histroy_size"):
        load_config(config_file=path, environ={})


def test_environment_beats_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'port = 7000\nhost = "file-host"\n')
    config = load_config(config_file=path, environ={"LIVEPUSH_PORT": "7100"})
    assert config.port == 7100
    assert config.host == "file-host"


def test_overrides_beat_environment_and_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "port = 7000\nrate_limit = 5.0\nhistory_size = 7\n")
    config = load_config(
        {"port": 7200, "rate_limit": None},
        config_file=path,
        environ={"LIVEPUSH_PORT": "7100", "LIVEPUSH_RATE_LIMIT": "6"},
    )
    assert config.port == 7200
    assert config.rate_limit == 6.0  # a None override does not hide the environment
    assert config.history_size == 7


def test_string_overrides_are_coerced() -> None:
    config = load_config({"port": "9000", "trust_proxy": "on", "jwt_leeway": "1"}, environ={})
    assert config.port == 9000
    assert config.trust_proxy is True
    assert config.jwt_leeway == 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("", False),
        (True, True),
        (False, False),
    ],
)
def test_bool_coercion(text: str | bool, expected: bool) -> None:
    assert coerce("trust_proxy", text) is expected


def test_invalid_bool_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="trust_proxy"):
        load_config(environ={"LIVEPUSH_TRUST_PROXY": "maybe"})


def test_list_coercion_splits_trims_and_drops_trailing_slashes() -> None:
    assert coerce("allowed_origins", " https://a/ ,, https://b ,") == ["https://a", "https://b"]
    assert coerce("allowed_origins", "*") == ["*"]
    assert coerce("allowed_origins", "") == []
    assert coerce("allowed_origins", ["https://a", 5]) == ["https://a", "5"]


def test_float_and_int_coercion() -> None:
    assert coerce("jwt_leeway", "0.5") == 0.5
    assert coerce("jwt_leeway", 3) == 3.0
    assert isinstance(coerce("jwt_leeway", 3), float)
    assert coerce("port", "80") == 80
    assert coerce("jwt_secret", None) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("port", "eighty"), ("port", "80.5"), ("jwt_leeway", "soon"), ("history_size", "")],
)
def test_uncoercible_values_refused_naming_the_setting(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        load_config(environ={f"LIVEPUSH_{name.upper()}": value})


def test_uncoercible_toml_value_refused_naming_the_setting(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'history_ttl = "forever"\n')
    with pytest.raises(ValueError, match="history_ttl"):
        load_config(config_file=path, environ={})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("engine", "postgres"),
        ("rest_prefix", "rest"),
        ("ping_interval", "0"),
        ("history_ttl", "0"),
        ("rate_limit", "0"),
        ("max_queue_messages", "0"),
        ("max_queue_bytes", "0"),
        ("max_message_bytes", "0"),
    ],
)
def test_invalid_values_refused_naming_the_setting(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        load_config({name: value}, environ={})


def test_rest_prefix_trailing_slash_removed() -> None:
    assert load_config({"rest_prefix": "/push/"}, environ={}).rest_prefix == "/push"


def test_has_token_key_with_public_key_or_jwks() -> None:
    assert Config(jwt_public_key="/k.pem").has_token_key
    assert Config(jwt_jwks="/jwks.json").has_token_key
    assert not Config(jwt_secret="").has_token_key


def test_field_types_unwrap_optional() -> None:
    assert field_type("jwt_secret") is str
    assert field_type("port") is int
    assert field_type("jwt_leeway") is float
    assert field_type("trust_proxy") is bool
    assert field_type("allowed_origins") is list


def test_every_setting_has_help_text() -> None:
    for setting in fields():
        assert setting.metadata.get("help"), setting.name


def test_secret_settings_are_flagged() -> None:
    secret = {f.name for f in fields() if f.metadata.get("secret")}
    assert {"jwt_secret", "api_key"} <= secret


def test_toml_allowed_origins_normalised_like_environment(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'allowed_origins = ["https://a.example/", " https://b.example "]\n')
    from_file = load_config(config_file=path, environ={}).allowed_origins
    from_env = load_config(
        environ={"LIVEPUSH_ALLOWED_ORIGINS": "https://a.example/, https://b.example "}
    ).allowed_origins
    assert from_file == from_env == ["https://a.example", "https://b.example"]
