"""Domain errors -> gRPC status with google.rpc details."""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from controller.errors import BaryonError

log = logging.getLogger(__name__)
DOMAIN = "baryon"


def status_of(err: BaryonError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    code = grpc.StatusCode[err.grpc_code_name]
    status = status_pb2.Status(code=getattr(code_pb2, err.grpc_code_name), message=err.message)
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status.details.append(detail)
    if err.field_violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in err.field_violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        status.details.append(detail)
    return code, status


async def abort(context: grpc.aio.ServicerContext, err: BaryonError) -> None:  # type: ignore[type-arg]
    code, status = status_of(err)
    await context.abort(
        code,
        err.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )
