"""Suite-wide set-up: offline vocabulary, Ray without token auth, quiet torch threads."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_VOCAB = REPO_ROOT.parent / "shared" / "vocab"

if not os.environ.get("OSS_SERVE_VOCAB_DIR") and SHARED_VOCAB.is_dir():
    os.environ["OSS_SERVE_VOCAB_DIR"] = str(SHARED_VOCAB)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
