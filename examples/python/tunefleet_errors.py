"""Structured details of a failed Tunefleet call, for Python clients.

Every Tunefleet error carries a google.rpc.Status in the
`grpc-status-details-bin` trailer: an ErrorInfo (a stable `reason` such as
INVALID_FIELD, FILE_IN_USE, JOB_STATE, QUOTA_EXCEEDED, PROMPT_BLOCKED, in the
domain tunefleet.dev) and, where they apply, BadRequest field violations
("hyperparameters.epochs"), PreconditionFailure violations (the job holding a
file), QuotaFailure violations and RetryInfo. A prompt blocked by a content
filter also carries its filter results (a tunefleet.v1.ChatCompletionResponse).

    try:
        jobs.CreateJob(request, metadata=md)
    except grpc.RpcError as err:
        d = error_details(err)
        print(d.reason, d.field_violations)

Needs the stubs the build generates (build/python holds google/rpc and
tunefleet/v1) on sys.path.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from google.rpc import error_details_pb2, status_pb2
from tunefleet.v1 import inference_pb2

DETAILS_KEY = "grpc-status-details-bin"


@dataclass
class ErrorDetails:
    code: int = 0
    message: str = ""
    reason: str = ""
    domain: str = ""
    metadata: Dict[str, str] = field(default_factory=dict)
    # (field path, description)
    field_violations: List[Tuple[str, str]] = field(default_factory=list)
    # (type, subject, description): e.g. ("FILE_HELD", "ftjob-…", "…")
    precondition_violations: List[Tuple[str, str, str]] = field(default_factory=list)
    # (subject, description)
    quota_violations: List[Tuple[str, str]] = field(default_factory=list)
    retry_delay: Optional[float] = None  # seconds
    # The prompt's filter results when a content filter blocked it.
    prompt_filter: Optional[inference_pb2.ChatCompletionResponse] = None
    unknown_types: List[str] = field(default_factory=list)

    def lines(self):
        """The details in plain words, one line each."""
        out = ["%s (%s)" % (self.message, self.reason or "no reason")]
        out += ["field %s: %s" % v for v in self.field_violations]
        out += ["%s %s: %s" % ("held by" if t == "FILE_HELD" else "blocked by", s, d)
                for t, s, d in self.precondition_violations]
        out += ["quota %s: %s" % v for v in self.quota_violations]
        if self.retry_delay is not None:
            out.append("retry after %.3gs" % self.retry_delay)
        return out


def _info(d, m):
    d.reason, d.domain, d.metadata = m.reason, m.domain, dict(m.metadata)


def _retry(d, m):
    d.retry_delay = m.retry_delay.seconds + m.retry_delay.nanos / 1e9


def _prompt_filter(d, m):
    d.prompt_filter = m


# Each detail type this helper reads, and where it goes in ErrorDetails.
_READERS = [
    (error_details_pb2.ErrorInfo, _info),
    (error_details_pb2.BadRequest, lambda d, m: d.field_violations.extend(
        (v.field, v.description) for v in m.field_violations)),
    (error_details_pb2.PreconditionFailure, lambda d, m: d.precondition_violations.extend(
        (v.type, v.subject, v.description) for v in m.violations)),
    (error_details_pb2.QuotaFailure, lambda d, m: d.quota_violations.extend(
        (v.subject, v.description) for v in m.violations)),
    (error_details_pb2.RetryInfo, _retry),
    (inference_pb2.ChatCompletionResponse, _prompt_filter),
]


def parse_status(raw: bytes) -> ErrorDetails:
    """Decodes a serialized google.rpc.Status."""
    status = status_pb2.Status.FromString(raw)
    d = ErrorDetails(code=status.code, message=status.message)
    for any_msg in status.details:
        for cls, read in _READERS:
            if any_msg.Is(cls.DESCRIPTOR):
                msg = cls()
                any_msg.Unpack(msg)
                read(d, msg)
                break
        else:
            d.unknown_types.append(any_msg.type_url)
    return d


def error_details(err) -> ErrorDetails:
    """The structured details of a grpc.RpcError (empty when it has none)."""
    for key, value in err.trailing_metadata() or ():
        if key == DETAILS_KEY:
            return parse_status(value)
    return ErrorDetails(code=err.code().value[0], message=err.details() or "")
