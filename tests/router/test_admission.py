import pytest

from oss_serve.router.admission import Admission
from oss_serve.router.errors import Overloaded
from tests.router.policies.helpers import candidate

pytestmark = pytest.mark.unit


def test_replicas_over_the_queue_bound_are_left_out():
    admission = Admission(max_queue_wait_s=100, max_queued_per_replica=4)
    full, free = candidate("a", queued=4), candidate("b", queued=1)
    assert [c.replica_id for c in admission.admit([full, free])] == ["b"]


def test_estimated_wait_is_backlog_over_completion_rate():
    admission = Admission(max_queue_wait_s=2.0, max_queued_per_replica=100)
    slow = candidate("a", queued=10, finished_per_s=2.0)  # 5 s of wait
    fast = candidate("b", queued=10, finished_per_s=10.0)  # 1 s
    assert admission.estimated_wait_s(slow) == 5.0
    assert [c.replica_id for c in admission.admit([slow, fast])] == ["b"]


def test_everyone_full_is_refused_with_a_retry_after():
    admission = Admission(max_queue_wait_s=2.0, max_queued_per_replica=100)
    with pytest.raises(Overloaded) as caught:
        admission.admit([candidate("a", queued=20, finished_per_s=4.0)])  # 5 s wait, 3 s over
    assert caught.value.retry_after_s == pytest.approx(3.0)
    assert caught.value.retry_after_header == "3"
    assert caught.value.http_status == 429


def test_overflow_backlog_counts_against_every_replica():
    admission = Admission(max_queue_wait_s=100, max_queued_per_replica=4)
    with pytest.raises(Overloaded, match="retry after 1 s"):
        admission.admit([candidate("a"), candidate("b")], overflow_backlog=8)


def test_unreported_requests_count_until_the_next_report():
    admission = Admission(max_queue_wait_s=100, max_queued_per_replica=2)
    c = candidate("a")
    c.unreported_requests = 2
    with pytest.raises(Overloaded):
        admission.admit([c])
