"""Tool outputs are cut to the byte limit on a character boundary and say so."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from oss_serve.tools.output_cap import cap_text


def test_short_text_is_unchanged() -> None:
    assert cap_text("héllo", 100) == "héllo"


def test_long_text_is_cut_and_says_how_much_was_shown() -> None:
    capped = cap_text("é" * 1000, 200)  # 2000 bytes
    assert len(capped.encode()) <= 200
    assert capped.startswith("é")
    assert capped.endswith(
        f"[output truncated: {len(capped.split(chr(10))[0].encode())} of 2000 bytes shown]"
    )


def test_a_head_already_cut_reports_the_whole_size() -> None:
    assert cap_text("abc", 100, total_bytes=5000).endswith("of 5000 bytes shown]")


@given(st.text(), st.integers(min_value=64, max_value=512))
def test_capped_text_never_exceeds_the_limit(text: str, max_bytes: int) -> None:
    capped = cap_text(text, max_bytes)
    assert len(capped.encode("utf-8")) <= max_bytes
    if len(text.encode("utf-8")) <= max_bytes:
        assert capped == text
