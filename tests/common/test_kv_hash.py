import subprocess
import sys

import pytest

from oss_serve.common.kv_hash import block_hashes, hash_block

pytestmark = pytest.mark.unit


def test_only_full_blocks_are_hashed():
    assert len(block_hashes(list(range(33)), 16)) == 2
    assert block_hashes(list(range(15)), 16) == []


def test_hashes_chain_so_equal_blocks_after_different_prefixes_differ():
    a = block_hashes([1] * 16 + [7] * 16, 16)
    b = block_hashes([2] * 16 + [7] * 16, 16)
    assert a[1] != b[1]
    assert block_hashes([1] * 16 + [7] * 16 + [9] * 3, 16) == a


def test_extra_key_changes_every_hash():
    assert block_hashes(list(range(32)), 16, extra_key="lora-1") != block_hashes(
        list(range(32)), 16
    )


def test_hash_block_continues_a_chain():
    tokens = list(range(48))
    full = block_hashes(tokens, 16)
    assert hash_block(full[1], tokens[32:48]) == full[2]
    assert block_hashes(tokens[16:], 16, parent_hash=full[0]) == full[1:]


def test_hashes_are_stable_across_processes():
    code = "from oss_serve.common.kv_hash import block_hashes; print(block_hashes(list(range(64)), 16))"
    out = [subprocess.check_output([sys.executable, "-c", code], text=True) for _ in range(2)]
    assert out[0] == out[1] == f"{block_hashes(list(range(64)), 16)}\n"


def test_bad_block_size_is_rejected():
    with pytest.raises(ValueError, match="block_size"):
        block_hashes([1, 2], 0)
