import pytest

from oss_serve.router.errors import Unavailable
from oss_serve.router.policies import RoundRobin, make_policy
from tests.router.policies.helpers import candidate, request

pytestmark = pytest.mark.unit


def test_cycles_through_replicas_in_id_order_whatever_the_input_order():
    policy = make_policy("round_robin")
    picks = [
        policy.select(request([1]), [candidate("b"), candidate("a")]).replica_id for _ in range(4)
    ]
    assert picks == ["a", "b", "a", "b"]


def test_ignores_load():
    policy = RoundRobin()
    busy, idle = candidate("a", running=100), candidate("b")
    assert [policy.select(request([1]), [busy, idle]).replica_id for _ in range(2)] == ["a", "b"]


def test_no_healthy_replica_is_unavailable():
    with pytest.raises(Unavailable, match="no healthy replica"):
        RoundRobin().select(request([1]), [])
