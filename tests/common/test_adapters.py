"""`--lora-modules` values and adapter names, read alike by the CLI, settings and the chart."""

import pytest

from oss_serve.common.adapters import check_adapter_name, parse_lora_modules
from oss_serve.common.settings import load_settings

pytestmark = pytest.mark.unit


def test_vllm_forms_name_eq_path_json_and_several_in_one_value_all_parse():
    values = ["sql=/a/sql", "support=/a/s extra=/a/e", '{"name": "json-one", "path": "/a/j"}']
    assert parse_lora_modules(values) == {
        "sql": "/a/sql", "support": "/a/s", "extra": "/a/e", "json-one": "/a/j",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("value", "message"),
    [("no-path", "give name=path"), ('{"name": "x"}', "give"), ("a,b=/p", "adapter name")],
)
def test_a_bad_lora_module_is_refused_naming_it(value, message):
    with pytest.raises(ValueError, match=message):
        parse_lora_modules([value])


def test_settings_refuse_a_bad_lora_module_at_start_and_expose_the_paths():
    assert load_settings(lora_modules=["a=/x"]).lora_module_paths == {"a": "/x"}
    with pytest.raises(ValueError, match="lora_modules"):
        load_settings(lora_modules=["broken"])


def test_adapter_names_stay_plain():
    check_adapter_name("org/sql-lora@v2")
    for bad in ("", "-lead", "has space", "a,b", "x" * 200):
        with pytest.raises(ValueError):
            check_adapter_name(bad)
