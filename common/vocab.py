"""The o200k_harmony vocabulary, and the one place that knows the harmony special tokens.

The byte-pair ranks come from `o200k_base.tiktoken`. With a vocabulary folder configured
(`OSS_SERVE_VOCAB_DIR`, or Settings.vocab_dir) nothing is downloaded: tiktoken is served
from a cache primed with that file and openai-harmony is pointed at the folder. Without
one, both libraries download the file as they normally do.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

O200K_BASE_FILE = "o200k_base.tiktoken"
O200K_BASE_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
VOCAB_DIR_ENV = "OSS_SERVE_VOCAB_DIR"

# Harmony special tokens (o200k_harmony = o200k_base ranks + these ids).
STARTOFTEXT = 199998
ENDOFTEXT = 199999
RETURN = 200002
CONSTRAIN = 200003
CHANNEL = 200005
START = 200006
END = 200007
MESSAGE = 200008
CALL = 200012
VOCAB_SIZE = 201088  # padded embedding rows of gpt-oss; ids >= 200013 are reserved

NAMED_SPECIAL_TOKENS: dict[str, int] = {
    "<|startoftext|>": STARTOFTEXT,
    "<|endoftext|>": ENDOFTEXT,
    "<|return|>": RETURN,
    "<|constrain|>": CONSTRAIN,
    "<|channel|>": CHANNEL,
    "<|start|>": START,
    "<|end|>": END,
    "<|message|>": MESSAGE,
    "<|call|>": CALL,
}
_NAMED_IDS = set(NAMED_SPECIAL_TOKENS.values())
SPECIAL_TOKENS: dict[str, int] = {
    **NAMED_SPECIAL_TOKENS,
    **{f"<|reserved_{i}|>": i for i in range(200000, VOCAB_SIZE) if i not in _NAMED_IDS},
}

# Generation stops on these (never on <|end|>, which closes every analysis message).
STOP_TOKEN_IDS: tuple[int, ...] = (RETURN, CALL, ENDOFTEXT)


class VocabularyUnavailableError(RuntimeError):
    """The o200k vocabulary is neither configured locally nor downloadable."""


def configured_vocab_dir(explicit: str | Path | None = None) -> Path | None:
    """The vocabulary folder from the argument or OSS_SERVE_VOCAB_DIR; None means download."""
    raw = explicit if explicit is not None else os.environ.get(VOCAB_DIR_ENV)
    if not raw:
        return None
    folder = Path(raw).expanduser().resolve()
    if not (folder / O200K_BASE_FILE).is_file():
        raise FileNotFoundError(
            f"vocabulary folder {folder} has no {O200K_BASE_FILE}; set {VOCAB_DIR_ENV} to a folder "
            "that holds it, or unset it to let tiktoken download the file"
        )
    return folder


def use_vocab_dir(vocab_dir: str | Path | None = None) -> Path | None:
    """Point tiktoken and openai-harmony at the local vocabulary folder, if one is configured."""
    folder = configured_vocab_dir(vocab_dir)
    if folder is None:
        return None
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(folder)  # openai-harmony reads this
    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or _default_tiktoken_cache())
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / hashlib.sha1(O200K_BASE_URL.encode()).hexdigest()
    if not cached.exists():
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        shutil.copyfile(folder / O200K_BASE_FILE, tmp)
        os.replace(tmp, cached)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    return folder


def _default_tiktoken_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "oss-serve" / "tiktoken"


@functools.cache
def o200k_harmony() -> tiktoken.Encoding:
    """The gpt-oss tokenizer: o200k_base byte-pair ranks plus the harmony special tokens."""
    import tiktoken

    folder = use_vocab_dir()
    try:
        base = tiktoken.get_encoding("o200k_base")
    except Exception as err:  # tiktoken downloads with requests: any network error lands here
        if folder is not None:
            raise
        raise VocabularyUnavailableError(
            f"could not download {O200K_BASE_FILE} ({type(err).__name__}); on a machine without "
            f"internet access set {VOCAB_DIR_ENV} to a folder that holds it"
        ) from err
    return tiktoken.Encoding(
        name="o200k_harmony",
        pat_str=base._pat_str,
        mergeable_ranks=base._mergeable_ranks,
        special_tokens=SPECIAL_TOKENS,
    )
