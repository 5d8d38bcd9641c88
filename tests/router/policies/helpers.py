from oss_serve.router.policies import Candidate, RouteRequest
from oss_serve.router.prefix_index import PromptBlocks
from oss_serve.streams.registry import ReplicaLoad

BS = 4


def candidate(replica_id: str, running: int = 0, queued: int = 0, **load) -> Candidate:
    return Candidate(ReplicaLoad(replica_id=replica_id, running=running, queued=queued, **load))


def request(token_ids: list[int], session_key: str | None = None) -> RouteRequest:
    return RouteRequest("req", PromptBlocks(token_ids, BS), session_key)
