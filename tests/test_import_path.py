"""The repository's top-level folders never shadow an installed package of the same name.

Transformers imports Hugging Face's `kernels`; had the root `kernels/` come first on
`sys.path`, every transformers reference in the suite would import this project's folder.
"""

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest

from tests.test_packaging import SUBPACKAGES

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.unit


def _is_repo_root(entry: str) -> bool:
    return Path(entry or ".").resolve() == REPO_ROOT


def _is_top_level_folder(origin: str) -> bool:
    return Path(origin).resolve().parent.parent == REPO_ROOT


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_an_installed_package_wins_over_the_top_level_folder(name):
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not _is_top_level_folder(spec.origin):
        return
    elsewhere = [entry for entry in sys.path if not _is_repo_root(entry)]
    installed = importlib.machinery.PathFinder.find_spec(name, elsewhere)
    assert installed is None, f"{name} resolves to {spec.origin}, hiding {installed.origin}"


def test_hugging_face_kernels_is_the_one_transformers_gets():
    kernels = pytest.importorskip("kernels")
    assert not _is_top_level_folder(kernels.__file__)
