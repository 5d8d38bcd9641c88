import pytest
from pydantic import ValidationError

from oss_serve.common.settings import load_settings

pytestmark = pytest.mark.unit


def test_defaults_apply_when_nothing_is_given(monkeypatch):
    monkeypatch.delenv("OSS_SERVE_CONFIG", raising=False)
    monkeypatch.delenv("OSS_SERVE_HTTP_PORT", raising=False)
    assert load_settings().http_port == 8000


def test_precedence_is_flags_then_env_then_file_then_defaults(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("http_port: 1111\ngrpc_port: 2222\nblock_size: 32\n")
    monkeypatch.setenv("OSS_SERVE_GRPC_PORT", "3333")
    monkeypatch.setenv("OSS_SERVE_HTTP_PORT", "4444")
    settings = load_settings(config, http_port=5555, block_size=None)
    assert settings.http_port == 5555  # flag beats env and file
    assert settings.grpc_port == 3333  # env beats file
    assert settings.block_size == 32  # file beats default; a None flag counts as not given
    assert settings.tensor_parallel_size == 1  # default


def test_toml_config_file_and_env_var_path(tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    config.write_text('redis_namespace = "prod"\n')
    monkeypatch.setenv("OSS_SERVE_CONFIG", str(config))
    assert load_settings().redis_namespace == "prod"


def test_unknown_key_in_config_file_is_rejected_by_name(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("htp_port: 1\n")
    with pytest.raises(ValidationError, match="htp_port"):
        load_settings(config)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_secrets_do_not_show_in_repr_or_dump(monkeypatch):
    monkeypatch.setenv("OSS_SERVE_API_KEY", "sk-verysecretvalue")
    monkeypatch.setenv("OSS_SERVE_REDIS_URL", "redis://:hunter2@localhost:6379/0")
    settings = load_settings()
    text = repr(settings) + str(settings.model_dump())
    assert "verysecretvalue" not in text and "hunter2" not in text
    assert (
        settings.api_key is not None and settings.api_key.get_secret_value() == "sk-verysecretvalue"
    )
