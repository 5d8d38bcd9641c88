import pytest

from oss_serve.protos.inference_pb2 import SamplingParams
from oss_serve.router.errors import InvalidRequest
from oss_serve.router.sampling import check_prompt, checked_sampling

pytestmark = pytest.mark.unit


def test_max_tokens_defaults_to_what_fits_in_the_context():
    checked = checked_sampling(SamplingParams(), prompt_len=100, max_model_len=1024)
    assert checked.max_tokens == 924


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": -0.5}, "sampling.temperature"),
        ({"top_p": 0.0}, "sampling.top_p"),
        ({"top_k": -2}, "sampling.top_k"),
        ({"logprobs": 21}, "sampling.logprobs"),
        ({"max_tokens": 0}, "sampling.max_tokens"),
        ({"max_tokens": 1000}, "sampling.max_tokens"),
        ({"max_tokens": 5, "min_tokens": 6}, "sampling.min_tokens"),
        ({"stop": [""]}, "sampling.stop"),
        ({"stop_token_ids": [10**7]}, "sampling.stop_token_ids"),
        ({"logit_bias": {5: 101.0}}, "sampling.logit_bias"),
        ({"temperature": float("nan")}, "sampling.temperature"),
    ],
)
def test_bad_sampling_names_the_field(params, field):
    with pytest.raises(InvalidRequest) as caught:
        checked_sampling(SamplingParams(**params), prompt_len=100, max_model_len=1024)
    assert caught.value.field == field
    assert field in caught.value.message


def test_prompt_filling_the_context_is_refused():
    with pytest.raises(InvalidRequest, match="context is 1024"):
        checked_sampling(SamplingParams(), prompt_len=1024, max_model_len=1024)


def test_prompt_ids_are_checked():
    with pytest.raises(InvalidRequest, match="must not be empty"):
        check_prompt([])
    with pytest.raises(InvalidRequest, match="token id 201088"):
        check_prompt([1, 201088])
