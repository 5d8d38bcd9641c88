import pytest

from oss_serve.router.errors import Unavailable
from oss_serve.router.policies import LeastLoad, make_policy
from tests.router.policies.helpers import candidate, request

pytestmark = pytest.mark.unit


def test_picks_fewest_requests_counting_running_waiting_queued_and_unreported():
    policy = make_policy("least_load")
    a = candidate("a", running=2)
    b = candidate("b", queued=1, waiting=0)
    assert policy.select(request([1]), [a, b]).replica_id == "b"
    b.unreported_requests = 2
    assert policy.select(request([1]), [a, b]).replica_id == "a"


def test_equal_requests_prefer_lower_kv_usage():
    a = candidate("a", running=1, kv_usage=0.9)
    b = candidate("b", running=1, kv_usage=0.1)
    assert LeastLoad().select(request([1]), [a, b]).replica_id == "b"


def test_exact_ties_rotate():
    policy = LeastLoad()
    cands = [candidate("a"), candidate("b")]
    assert {policy.select(request([1]), cands).replica_id for _ in range(2)} == {"a", "b"}


def test_no_healthy_replica_is_unavailable():
    with pytest.raises(Unavailable):
        LeastLoad().select(request([1]), [])
