"""What `oss-serve up` decides before starting anything: the model to load and its served
name, the key, the ports; and what its banner shows (a generated key once, a given one never)."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest
from pydantic import SecretStr

from oss_serve.cluster.launch.console import Endpoints, banner_text
from oss_serve.cluster.launch.launcher import LaunchError, check_ports, plan_launch, resolve_model
from oss_serve.common.settings import Settings

pytestmark = pytest.mark.unit


def settings(**fields: object) -> Settings:
    return Settings(**{"http_port": 0, "grpc_port": 0, **fields})  # type: ignore[arg-type]


def checkpoint(folder, *, weights: bool = True):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_a_preset_name_is_served_under_its_own_name():
    assert resolve_model("gpt-oss-tiny") == ("gpt-oss-tiny", "gpt-oss-tiny")


def test_a_checkpoint_folder_is_loaded_by_absolute_path_and_served_by_its_name(tmp_path):
    folder = checkpoint(tmp_path / "my-gpt-oss")
    assert resolve_model(str(folder)) == (str(folder.resolve()), "my-gpt-oss")


def test_an_openai_original_folder_counts_as_a_checkpoint(tmp_path):
    checkpoint(tmp_path / "repo" / "original")
    assert resolve_model(str(tmp_path / "repo"))[1] == "repo"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda root: root / "missing", "no such checkpoint folder"),
        (lambda root: root, "not a checkpoint folder"),
        (lambda root: checkpoint(root / "ckpt", weights=False), "no *.safetensors weights"),
    ],
    ids=["missing", "no-config", "no-weights"],
)
def test_a_wrong_model_folder_is_refused_with_the_reason(tmp_path, build, message):
    with pytest.raises(LaunchError, match="--model .*" + message.replace("*", r"\*")):
        resolve_model(str(build(tmp_path)))


def test_a_taken_port_is_refused_naming_the_port_and_the_flag():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(LaunchError, match=f"port {port} .* taken .* --grpc-port"):
            check_ports(settings(grpc_port=port))


def test_the_same_port_for_http_and_grpc_is_refused():
    with pytest.raises(LaunchError, match="both 9999"):
        check_ports(settings(http_port=9999, grpc_port=9999))


def test_without_a_key_one_is_generated_for_the_run(tmp_path):
    first = plan_launch(settings(), 1, demo_model=tmp_path, demo_name="oss-serve-demo")
    second = plan_launch(settings(), 1, demo_model=tmp_path, demo_name="oss-serve-demo")
    assert first.api_key_generated and first.settings.api_key is not None
    key = first.settings.api_key.get_secret_value()
    assert key.startswith("sk-oss-") and key != second.settings.api_key.get_secret_value()  # type: ignore[union-attr]
    assert first.served_model_name == "oss-serve-demo"
    assert first.settings.model == str(tmp_path)


def test_a_given_key_and_served_name_are_kept(tmp_path):
    plan = plan_launch(
        settings(
            api_key=SecretStr("sk-mine-123456"), served_model_name="demo", model="gpt-oss-tiny"
        ),
        2,
        demo_model=None,
        demo_name="oss-serve-demo",
    )
    assert not plan.api_key_generated and plan.served_model_name == "demo" and plan.replicas == 2
    assert plan.settings.api_key is not None
    assert plan.settings.api_key.get_secret_value() == "sk-mine-123456"


def endpoints(api_key: str | None, generated: bool) -> Endpoints:
    return Endpoints(
        http_url="http://127.0.0.1:8000",
        grpc_address="127.0.0.1:50051",
        redis_url="redis://127.0.0.1:6379/0",
        model="oss-serve-demo",
        api_key=api_key,
        api_key_generated=generated,
        replicas=1,
        python=".venv/bin/python",
    )


def test_the_banner_shows_a_generated_key_once_in_a_pasteable_export_line():
    text = banner_text(endpoints("sk-oss-abcdef123456", generated=True))
    assert text.count("sk-oss-abcdef123456") == 1
    assert "export OSS_SERVE_API_KEY=sk-oss-abcdef123456" in text
    assert '-H "Authorization: Bearer $OSS_SERVE_API_KEY"' in text
    assert 'base_url="http://127.0.0.1:8000/v1"' in text and '"oss-serve-demo"' in text


def test_the_banner_never_echoes_a_key_the_user_gave():
    text = banner_text(endpoints("sk-secret-of-mine", generated=False))
    assert "sk-secret-of-mine" not in text and "$OSS_SERVE_API_KEY" in text


def test_without_a_key_the_examples_send_none():
    text = banner_text(endpoints(None, generated=False))
    assert "Authorization" not in text and 'api_key="none"' in text


def test_a_cluster_token_is_generated_for_the_run_unless_given(tmp_path):
    first = plan_launch(settings(), 1, demo_model=tmp_path, demo_name="oss-serve-demo")
    second = plan_launch(settings(), 1, demo_model=tmp_path, demo_name="oss-serve-demo")
    tokens = [p.settings.cluster_token.get_secret_value() for p in (first, second)]  # type: ignore[union-attr]
    assert first.cluster_token_generated and tokens[0] != tokens[1] and len(tokens[0]) > 40
    given = plan_launch(
        settings(cluster_token=SecretStr("oss-cluster-mine")),
        1,
        demo_model=tmp_path,
        demo_name="oss-serve-demo",
    )
    assert not given.cluster_token_generated
    assert given.settings.cluster_token.get_secret_value() == "oss-cluster-mine"  # type: ignore[union-attr]


def test_the_link_port_must_differ_from_the_public_ports():
    with pytest.raises(LaunchError, match="--grpc-port and --link-port are both 9998"):
        check_ports(settings(grpc_port=9998, link_port=9998))


def test_the_banner_shows_a_generated_cluster_token_once_and_never_a_given_one():
    base = endpoints(None, generated=False)
    generated = banner_text(replace(base, cluster_token="oss-cluster-generated-abc"))
    assert generated.count("export OSS_SERVE_CLUSTER_TOKEN=oss-cluster-generated-abc") == 1
    assert "oss-cluster" not in banner_text(base)
