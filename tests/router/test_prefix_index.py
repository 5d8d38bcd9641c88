import pytest

from oss_serve.common.kv_hash import block_hashes
from oss_serve.router.prefix_index import PrefixIndex, PromptBlocks

pytestmark = pytest.mark.unit
BS = 4


def tokens(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


def test_prompt_blocks_hash_exactly_as_kv_hash_and_lazily():
    prompt = tokens(18)
    blocks = PromptBlocks(prompt, BS)
    assert len(blocks) == 4  # the trailing partial block is not hashed
    assert blocks.hash_at(1) == block_hashes(prompt, BS)[1]
    assert len(blocks._hashes) == 2  # only as far as asked
    assert blocks.all() == block_hashes(prompt, BS)
    assert PromptBlocks(prompt, BS, extra_key="lora").all() == block_hashes(prompt, BS, "lora")


def test_match_counts_leading_blocks_per_replica():
    index = PrefixIndex()
    shared = tokens(8)
    a_prompt = shared + tokens(8, 100)
    b_prompt = shared + tokens(4, 200)
    index.store("a", block_hashes(a_prompt, BS))
    index.store("b", block_hashes(b_prompt, BS))
    assert index.match(PromptBlocks([*a_prompt, 1, 2], BS)) == {"a": 4, "b": 2}
    assert index.match(PromptBlocks(b_prompt, BS)) == {"a": 2, "b": 3}
    assert index.match(PromptBlocks(tokens(8, 500), BS)) == {}


def test_match_stops_hashing_at_the_first_block_nobody_holds():
    index = PrefixIndex()
    prompt = tokens(40)
    index.store("a", block_hashes(prompt, BS)[:2])
    blocks = PromptBlocks(prompt, BS)
    assert index.match(blocks) == {"a": 2}
    assert len(blocks._hashes) == 3


def test_a_gap_in_the_chain_ends_the_match_for_that_replica():
    index = PrefixIndex()
    hashes = block_hashes(tokens(16), BS)
    index.store("a", [hashes[0], hashes[2], hashes[3]])
    index.store("b", hashes)
    assert index.match(hashes) == {"a": 1, "b": 4}


def test_remove_and_clear_forget_blocks_and_counts():
    index = PrefixIndex()
    hashes = block_hashes(tokens(16), BS)
    index.store("a", hashes)
    index.store("b", hashes[:2])
    assert (index.block_count("a"), index.block_count("b"), len(index)) == (4, 2, 4)
    index.remove("a", hashes[1:])
    assert index.match(hashes) == {"a": 1, "b": 2}
    assert index.block_count("a") == 1
    index.clear("b")
    assert index.match(hashes) == {"a": 1}
    assert len(index) == 1 and index.block_count("b") == 0
    index.store("c", hashes)  # reuses b's slot without inheriting its blocks
    assert index.match(hashes) == {"a": 1, "c": 4}


def test_storing_twice_does_not_double_count():
    index = PrefixIndex()
    hashes = block_hashes(tokens(8), BS)
    index.store("a", hashes)
    index.store("a", hashes)
    assert index.block_count("a") == 2
    index.remove("a", hashes + hashes)
    assert index.block_count("a") == 0 and len(index) == 0


def test_bounded_index_drops_least_recently_stored_blocks():
    index = PrefixIndex(max_blocks=3)
    old = block_hashes(tokens(8), BS)
    new = block_hashes(tokens(12, 50), BS)
    index.store("a", old)
    index.store("b", new)
    assert len(index) == 3
    assert index.match(old) == {}
    assert index.match(new) == {"b": 3}
    assert index.block_count("a") == 0 and index.block_count("b") == 3


def test_many_replicas_use_independent_bits():
    index = PrefixIndex()
    hashes = block_hashes(tokens(4 * 70), BS)
    for r in range(70):
        index.store(f"r{r}", hashes[: r + 1])
    got = index.match(hashes)
    assert got == {f"r{r}": r + 1 for r in range(70)}
