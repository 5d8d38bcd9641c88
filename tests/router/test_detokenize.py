import pytest

from oss_serve.common.vocab import CHANNEL, o200k_harmony
from oss_serve.router.detokenize import Detokenizer

pytestmark = pytest.mark.unit


def test_chunks_concatenate_to_the_whole_text_even_when_a_character_is_split():
    encoding = o200k_harmony()
    tokens = encoding.encode("naïve café 🚀🚀 日本語のテキスト")
    whole = encoding.decode(tokens)
    for chunk_size in (1, 2, 3):
        detokenizer = Detokenizer()
        pieces = [
            detokenizer.feed(tokens[i : i + chunk_size]) for i in range(0, len(tokens), chunk_size)
        ]
        pieces.append(detokenizer.feed([], final=True))
        assert "".join(pieces) == whole
        assert all("\ufffd" not in p for p in pieces)


def test_special_tokens_are_named_or_skipped():
    encoding = o200k_harmony()
    tokens = [CHANNEL, *encoding.encode("final")]
    assert Detokenizer().feed(tokens) == "<|channel|>final"
    assert Detokenizer(skip_special_tokens=True).feed(tokens) == "final"
