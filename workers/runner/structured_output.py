"""Structured outputs on the replica: xgrammar grammars masked in through the engine's
logits-processor hook, one bitmask per step for every constrained request of the batch.

For harmony output the grammar is the whole assistant turn, token by token: headers are
the request's valid harmony headers (special tokens matched by id, never by their text),
analysis text is free (any non-special token, optionally at most a budget), and only the
final message (`response_format`) and function-call arguments (`tools`) follow their JSON
schemas. So reasoning is never forced into JSON and a JSON answer always sits behind its
own `<|channel|>final<|message|>` header (the failure of sglang#31019). `raw` specs
constrain the whole output (completions).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar as xgr
from xgrammar import structural_tag as st

from oss_serve.common.logging import get_logger
from oss_serve.common.vocab import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    ENDOFTEXT,
    MESSAGE,
    RETURN,
    SPECIAL_TOKENS,
    START,
    VOCAB_SIZE,
    o200k_harmony,
)
from oss_serve.workers.engine.sampling_params import InvalidRequestError, SamplingParams
from oss_serve.workers.engine.structured_output_spec import (
    RESUME_ARG,
    SPEC_ARG,
    FunctionGrammar,
    StructuredOutputSpec,
)
from oss_serve.workers.runner.logits_processors import RequestLogitsProcessor

log = get_logger(__name__)
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}
MAX_JSON_WHITESPACE = 2  # a random or confused model must not pad JSON forever
_SPECIAL_IDS: list[int | str] = sorted(SPECIAL_TOKENS.values())
_compile_lock = threading.Lock()


# --- vocabulary and compiler (once per process) ---------------------------------------------


@functools.cache
def tokenizer_info() -> xgr.TokenizerInfo:
    """o200k_harmony for xgrammar. Special tokens get a byte string that starts with 0xFF
    (never valid UTF-8), so text rules (JSON, constant strings) can never match them and
    only the grammar's explicit token elements can."""
    encoding = o200k_harmony()
    by_rank = {rank: data for data, rank in encoding._mergeable_ranks.items()}
    names = {token_id: name for name, token_id in SPECIAL_TOKENS.items()}
    vocab = [
        b"\xff" + names[i].encode() if i in names else by_rank.get(i, b"\xff<|unused|>")
        for i in range(VOCAB_SIZE)
    ]
    return xgr.TokenizerInfo(
        vocab, xgr.VocabType.RAW, vocab_size=VOCAB_SIZE, stop_token_ids=[ENDOFTEXT]
    )


@functools.cache
def _compiler() -> xgr.GrammarCompiler:
    # xgrammar's own cache keys structural tags without their token ids (two grammars that
    # differ only in a token element share one entry): cache by our spec instead.
    return xgr.GrammarCompiler(tokenizer_info(), max_threads=2, cache_enabled=False)


@functools.lru_cache(maxsize=256)
def compile_spec(spec: StructuredOutputSpec) -> xgr.CompiledGrammar:
    """The compiled grammar of a spec (cached: clients repeat schemas).

    Raises InvalidRequestError naming the schema when xgrammar cannot compile it."""
    try:
        tag = harmony_structural_tag(spec) if not spec.raw else None
        with _compile_lock:
            if tag is None:
                return _compiler().compile_json_schema(
                    json.dumps(_schema(spec.final_json_schema, "response_format")),
                    max_whitespace_cnt=MAX_JSON_WHITESPACE,
                )
            return _compiler().compile_structural_tag(tag)
    except InvalidRequestError:
        raise
    except Exception as err:  # xgrammar raises RuntimeError/ValueError subclasses
        raise InvalidRequestError(
            f"the JSON schema cannot be compiled to a grammar: {err}", field="response_format"
        ) from err


def _schema(text: str, field: str) -> dict[str, Any] | bool:
    if not text:
        return ANY_JSON_OBJECT
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidRequestError(f"{field} schema is not JSON: {err}", field=field) from err
    if not isinstance(value, dict | bool):
        raise InvalidRequestError(f"{field} schema must be a JSON object", field=field)
    return value


# --- the harmony turn as a grammar ------------------------------------------------------------


def _tok(token_id: int) -> st.TokenFormat:
    return st.TokenFormat(token=token_id)


def _text(value: str) -> st.ConstStringFormat:
    return st.ConstStringFormat(value=value)


def _free_text(max_tokens: int | None = None) -> st.AnyTokensFormat:
    return st.AnyTokensFormat(exclude_tokens=_SPECIAL_IDS, max_tokens=max_tokens)


def _json(schema: dict[str, Any] | bool) -> st.JSONSchemaFormat:
    return st.JSONSchemaFormat(json_schema=schema, max_whitespace_cnt=MAX_JSON_WHITESPACE)


def _message(channel: str, content: st.Format, end: int) -> st.SequenceFormat:
    elements: list[st.Format] = [_tok(CHANNEL), _text(channel), _tok(MESSAGE), content, _tok(end)]
    return st.SequenceFormat(elements=elements)


def _function_call(function: FunctionGrammar) -> st.OrFormat:
    """Both header layouts the model uses: recipient before or after the channel."""
    name = function.name
    arguments = _json(_schema(function.parameters_json_schema, f"tools[{name}].parameters"))
    json_body: list[st.Format] = [
        _tok(CONSTRAIN),
        _text("json"),
        _tok(MESSAGE),
        arguments,
        _tok(CALL),
    ]
    return st.OrFormat(
        elements=[
            st.SequenceFormat(
                elements=[
                    _text(f" to=functions.{name}"),
                    _tok(CHANNEL),
                    _text("commentary "),
                    *json_body,
                ]
            ),
            st.SequenceFormat(
                elements=[_tok(CHANNEL), _text(f"commentary to=functions.{name} "), *json_body]
            ),
        ]
    )


def harmony_structural_tag(spec: StructuredOutputSpec) -> st.StructuralTag:
    """(analysis | preamble)* then the answer: a final message or a function call.

    With a reasoning budget: at most one analysis message of at most that many tokens and
    no preambles, so even a model that never ends its reasoning answers in time."""
    next_message = st.SequenceFormat(elements=[_tok(START), _text("assistant")])
    answers: list[st.Format] = [_function_call(f) for f in spec.functions]
    if not spec.require_function_call:
        final = _json(_schema(spec.final_json_schema, "response_format"))
        answers.append(_message("final", final if spec.final_json_schema else _free_text(), RETURN))
    if not answers:
        raise InvalidRequestError("tool_choice requires a tool, but no tools were given", "tools")
    answer = answers[0] if len(answers) == 1 else st.OrFormat(elements=answers)
    if spec.reasoning_token_budget is not None:
        analysis = _message("analysis", _free_text(max(0, spec.reasoning_token_budget)), END)
        lead_in: st.Format = st.OptionalFormat(
            content=st.SequenceFormat(elements=[analysis, next_message])
        )
    else:
        messages: list[st.Format] = [_message("analysis", _free_text(), END)]
        if spec.functions and not spec.require_function_call:
            messages.append(_message("commentary", _free_text(), END))
        lead_in = st.StarFormat(
            content=st.SequenceFormat(
                elements=[
                    messages[0] if len(messages) == 1 else st.OrFormat(elements=messages),
                    next_message,
                ]
            )
        )
    return st.StructuralTag(format=st.SequenceFormat(elements=[lead_in, answer]))


# --- the logits processor -----------------------------------------------------------------------


class StructuredOutputProcessor(RequestLogitsProcessor):
    """One request's grammar matcher; all of a step's matchers fill one bitmask together."""

    _batch_matcher: xgr.BatchGrammarMatcher | None = None
    _bitmasks: dict[int, torch.Tensor] = {}

    def __init__(
        self,
        grammar: xgr.CompiledGrammar,
        resume_token_ids: Sequence[int] = (),
        spec: StructuredOutputSpec | None = None,  # the spec it was compiled from, if any
    ) -> None:
        self._matcher = xgr.GrammarMatcher(grammar)
        self._spec = spec
        self.broken = False  # a token outside the grammar was forced in: stop masking
        for token_id in resume_token_ids:
            self.accept_token(int(token_id))

    def recipe(self) -> StructuredOutputRecipe | None:
        return None if self._spec is None else StructuredOutputRecipe(self._spec)

    def accept_token(self, token_id: int) -> None:
        if self.broken or self._matcher.is_terminated():
            return
        if not self._matcher.accept_token(token_id):
            self.broken = True
            log.warning("structured output: token outside the grammar", token_id=token_id)

    def fork(self) -> StructuredOutputProcessor:
        twin = StructuredOutputProcessor.__new__(StructuredOutputProcessor)
        twin._matcher = self._matcher.fork()
        twin._spec = self._spec
        twin.broken = self.broken
        return twin

    @classmethod
    def apply_batch(
        cls,
        processors: Sequence[RequestLogitsProcessor],
        rows: Sequence[int],
        output_token_ids: Sequence[Sequence[int]],
        logits: torch.Tensor,
    ) -> None:
        active = [
            (p, row)
            for p, row in zip(processors, rows, strict=True)
            if isinstance(p, StructuredOutputProcessor) and not p.broken
        ]
        if not active:
            return
        bitmask = cls._bitmask(logits.shape[0])  # indexed by logits row, as xgrammar applies it
        indices = [row for _, row in active]
        if cls._batch_matcher is None:
            cls._batch_matcher = xgr.BatchGrammarMatcher(max_threads=2)
        cls._batch_matcher.batch_fill_next_token_bitmask(
            [p._matcher for p, _ in active], bitmask, indices
        )
        xgr.apply_token_bitmask_inplace(
            logits, bitmask.to(logits.device), vocab_size=VOCAB_SIZE, indices=indices
        )

    @classmethod
    def _bitmask(cls, rows: int) -> torch.Tensor:
        """A reused [rows, words] int32 buffer (the engine steps in one thread; rows that no
        matcher fills this step are never applied)."""
        size = 1 << max(0, rows - 1).bit_length()
        if size not in cls._bitmasks:
            cls._bitmasks[size] = xgr.allocate_token_bitmask(size, VOCAB_SIZE)
        return cls._bitmasks[size][:rows]


def make_processor(
    spec: StructuredOutputSpec, resume_token_ids: Sequence[int] = ()
) -> StructuredOutputProcessor:
    return StructuredOutputProcessor(compile_spec(spec), resume_token_ids, spec)


@dataclass(frozen=True)
class StructuredOutputRecipe:
    """What a TP/EP rank needs to rebuild a request's matcher: the spec, never the matcher
    (xgrammar's GrammarMatcher cannot be pickled); compiled once per spec per process."""

    spec: StructuredOutputSpec

    def build(self, output_token_ids: Sequence[int]) -> StructuredOutputProcessor:
        return make_processor(self.spec, output_token_ids)


def sampling_params_from_args(args: dict[str, Any]) -> SamplingParams:
    """SamplingParams from vLLM-named arguments plus a StructuredOutputSpec under SPEC_ARG
    (and the tokens already emitted under RESUME_ARG), whose grammar processor is built
    here (the replica host's `make_sampling_params`)."""
    values = dict(args)
    spec = values.pop(SPEC_ARG, None)
    resume = values.pop(RESUME_ARG, ())
    if spec is not None:
        values["logits_processors"] = [make_processor(spec, resume)]
    return SamplingParams.from_dict(values)
