import os
import subprocess
import sys

import pytest

from oss_serve.common import vocab

pytestmark = pytest.mark.unit


def test_hello_world_encodes_to_known_ids():
    assert vocab.o200k_harmony().encode("hello world") == [24912, 2375]


def test_harmony_special_tokens_have_their_ids():
    enc = vocab.o200k_harmony()
    expected = {
        "<|start|>": 200006,
        "<|return|>": 200002,
        "<|call|>": 200012,
        "<|end|>": 200007,
        "<|message|>": 200008,
        "<|channel|>": 200005,
        "<|constrain|>": 200003,
        "<|endoftext|>": 199999,
        "<|startoftext|>": 199998,
    }
    for text, token_id in expected.items():
        assert enc.encode(text, allowed_special="all") == [token_id]
        assert vocab.SPECIAL_TOKENS[text] == token_id
    assert enc.n_vocab == vocab.VOCAB_SIZE


def test_special_tokens_match_openai_harmony():
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    vocab.use_vocab_dir()
    harmony = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    ours = vocab.o200k_harmony()
    for token_id in [199998, 199999, 200000, 200002, 200012, 200013, 200018, 201087]:
        assert ours.decode([token_id]) == harmony.decode_utf8([token_id])
    text = "Héllo 世界 <tool> 12345 \n\n  x"
    assert ours.encode(text) == harmony.encode(text, allowed_special=set())


def test_stop_tokens_never_include_end():
    assert vocab.END not in vocab.STOP_TOKEN_IDS
    assert {vocab.RETURN, vocab.CALL} <= set(vocab.STOP_TOKEN_IDS)


def test_missing_vocab_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"o200k_base\.tiktoken"):
        vocab.configured_vocab_dir(tmp_path)


def test_an_unreachable_download_is_one_clear_error_line(tmp_path):
    """No vocabulary folder and no network (a proxy that refuses): the CLI says what to set."""
    env = {k: v for k, v in os.environ.items() if k != vocab.VOCAB_DIR_ENV}
    dead_proxy = "http://127.0.0.1:9"
    env.update(
        TIKTOKEN_CACHE_DIR=str(tmp_path / "tiktoken"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        HTTPS_PROXY=dead_proxy,
        https_proxy=dead_proxy,
    )
    args = ["bench", "--base-url", "http://127.0.0.1:9", "--model", "m", "--num-requests", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "oss_serve.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()  # no traceback
    assert line.startswith("error: could not download o200k_base.tiktoken (")
    assert line.endswith(f"set {vocab.VOCAB_DIR_ENV} to a folder that holds it")
