"""The ledger: every state change of a request or task happens here, in one transaction.

Methods that make work runnable return the ``Dispatch`` list to hand to the broker: callers send them only
after the transaction committed, so a message never names a task the ledger does not have. A message that
is lost (broker restart, crash before send) is sent again by ``due_for_dispatch`` once its lease runs out.

``Ledger`` is composed of one class per domain (filing, tasks, holds, reads, aggregates, outbox, lineage,
chain), each in its own module over the shared ``LedgerCore`` (engine, sessions, keys). Appending to the
audit chains is ``appends``; their rules are ``proof``, and the walk that checks them ``verification``.
"""

from orchestrator.ledger.aggregates import AggregateLedger, Overview, Snapshot, Waiting
from orchestrator.ledger.chain import ChainLedger
from orchestrator.ledger.common import (
    DONE_TASK,
    FINISHED,
    PARKED_TASK,
    REGIMES,
    REQUEST_STATUSES,
    RESURRECTION_ACTOR,
    TASK_STATUSES,
    TERMINAL_REQUEST,
    TERMINAL_TASK,
    Dispatch,
    Filing,
    IdempotencyConflict,
    InvalidInput,
    LedgerError,
    Outcome,
    PlannedTask,
    RequestStatus,
    TaskRun,
    TaskStatus,
    UnknownRequest,
    due_date,
    now,
    stored_idempotency_key,
)
from orchestrator.ledger.filing import FilingLedger
from orchestrator.ledger.holds import HoldLedger
from orchestrator.ledger.lineage import LineageLedger
from orchestrator.ledger.reads import ReadLedger, status_object, valid_cursor
from orchestrator.ledger.tasks import TaskLedger


class Ledger(FilingLedger, TaskLedger, HoldLedger, ReadLedger, AggregateLedger, LineageLedger, ChainLedger):
    """The whole ledger: what each process opens (see ``orchestrator.service``)."""


__all__ = [
    "DONE_TASK", "FINISHED", "PARKED_TASK", "REGIMES", "REQUEST_STATUSES", "RESURRECTION_ACTOR", "TASK_STATUSES",
    "TERMINAL_REQUEST", "TERMINAL_TASK", "Dispatch", "Filing", "IdempotencyConflict", "InvalidInput", "Ledger",
    "LedgerError", "Outcome", "Overview", "PlannedTask", "RequestStatus", "Snapshot", "TaskRun", "TaskStatus",
    "UnknownRequest", "Waiting", "due_date", "now", "status_object", "stored_idempotency_key", "valid_cursor",
]
