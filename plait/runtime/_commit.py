"""Turning one activation's commands into one ``Commit``: the business rules of effects.

What a command means for storage lives here, so every backend gets the same commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..backends.base import (
    Commit,
    Delivery,
    HookReg,
    HookResume,
    NewRun,
    RunRecord,
    StepTask,
    Timer,
)
from ..kernel import commands as cmd
from ..kernel import events as ev
from ..kernel.errors import ErrorInfo
from ..kernel.status import RunStatus

__all__ = ["build_commit", "parent_notice", "continue_run_id"]


def parent_notice(
    record: RunRecord,
    close: ev.Event | RunStatus,
    result: Any = None,
    error: ErrorInfo | None = None,
    reason: str = "",
) -> Delivery | None:
    """The ``Child*`` event a closing run sends to its parent's inbox (None without parent)."""
    if record.parent_run_id is None or record.parent_seq is None:
        return None
    seq = record.parent_seq
    if close is RunStatus.COMPLETED:
        event: ev.Event = ev.ChildCompleted(seq, result)
    elif close is RunStatus.FAILED:
        assert error is not None
        event = ev.ChildFailed(seq, error)
    elif close is RunStatus.CANCELLED:
        event = ev.ChildCancelled(seq)
    elif close is RunStatus.TERMINATED:
        event = ev.ChildTerminated(seq, reason)
    else:
        return None
    return Delivery(record.parent_run_id, event)


def continue_run_id(run_id: str) -> str:
    """The run id of the next run of a continue-as-new chain (derived, so never duplicated)."""
    from ..kernel.machine import derive_child_run_id

    return derive_child_run_id(run_id, 0)


def build_commit(
    record: RunRecord,
    lease: int,
    now: float,
    new_events: Sequence[ev.Event],
    commands: Sequence[cmd.Command],
    inbox_upto: int,
    new_seed: Callable[[], str],
    pre_lease: Callable[[], tuple[int, float] | None] | None = None,
) -> Commit:
    """``pre_lease`` gives each scheduled step a lease and its expiry (eager dispatch), or
    None to leave it for any worker to claim."""
    run_id = record.run_id
    steps: list[StepTask] = []
    timers: list[Timer] = []
    cancel_timers: list[int] = []
    new_runs: list[NewRun] = []
    hooks: list[HookReg] = []
    dispose: list[str] = []
    resumes: list[HookResume] = []
    deliveries: list[Delivery] = []
    status = RunStatus.RUNNING
    result: Any = None
    error: ErrorInfo | None = None
    continued_to: str | None = None
    for c in commands:
        if isinstance(c, cmd.ScheduleStep):
            leased = pre_lease() if pre_lease is not None else None
            if leased is None:
                steps.append(StepTask(run_id, c.seq, c.name, c.args, 1, now))
            else:
                steps.append(StepTask(run_id, c.seq, c.name, c.args, 1, now, *leased))
        elif isinstance(c, cmd.StartTimer):
            timers.append(Timer(run_id, c.seq, c.fire_at))
        elif isinstance(c, cmd.CancelTimer):
            cancel_timers.append(c.timer_seq)
        elif isinstance(c, cmd.StartChild):
            child = RunRecord(
                run_id=c.child_run_id,
                workflow=c.workflow,
                status=RunStatus.PENDING,
                created_at=now,
                key=c.key,
                parent_run_id=run_id,
                parent_seq=c.seq,
                parent_close=c.parent_close,
                queue=c.queue,
            )
            started = ev.RunStarted(
                run_id=c.child_run_id,
                workflow=c.workflow,
                args=c.args,
                key=c.key,
                parent_run_id=run_id,
                parent_seq=c.seq,
                seed=new_seed(),
                time=now,
            )
            new_runs.append(
                NewRun(
                    child,
                    (started,),
                    on_started=Delivery(run_id, ev.ChildStarted(c.seq, c.child_run_id)),
                    on_conflict=Delivery(run_id, ev.ChildStartFailed(c.seq, c.key)),
                )
            )
        elif isinstance(c, cmd.RequestCancelChild):
            deliveries.append(Delivery(c.child_run_id, ev.CancelRequested(f"parent {run_id}")))
        elif isinstance(c, cmd.ResumeHook):
            resumes.append(
                HookResume(
                    c.token,
                    c.payload,
                    on_delivered=Delivery(run_id, ev.HookResumeResult(c.seq, True)),
                    on_missing=Delivery(run_id, ev.HookResumeResult(c.seq, False)),
                )
            )
        elif isinstance(c, cmd.SendSignal):
            deliveries.append(Delivery(c.run_id, ev.SignalReceived(c.name, c.payload)))
        elif isinstance(c, cmd.CreateHook):
            hooks.append(HookReg(c.token, c.seq, Delivery(run_id, ev.HookConflict(c.seq, c.token))))
        elif isinstance(c, cmd.DisposeHook):
            # A hook opened and closed in this same activation is never registered, so no
            # HookConflict can reach a disposed hook; backends apply the remaining disposals
            # (of hooks from earlier commits) before registrations, so a token closed and
            # opened again in one activation moves to the new hook.
            if any(h.seq == c.hook_seq for h in hooks):
                hooks = [h for h in hooks if h.seq != c.hook_seq]
            else:
                dispose.append(c.token)
        elif isinstance(c, cmd.RecordPatch):
            pass
        elif isinstance(c, cmd.CompleteRun):
            status, result = RunStatus.COMPLETED, c.result
        elif isinstance(c, cmd.FailRun):
            status, error = RunStatus.FAILED, c.error
        elif isinstance(c, cmd.CancelRun):
            status = RunStatus.CANCELLED
        elif isinstance(c, cmd.ContinueAsNew):
            status = RunStatus.CONTINUED_AS_NEW
            continued_to = continue_run_id(run_id)
            nxt = RunRecord(
                run_id=continued_to,
                workflow=c.workflow,
                status=RunStatus.PENDING,
                created_at=now,
                key=record.key,
                parent_run_id=record.parent_run_id,
                parent_seq=record.parent_seq,
                parent_close=record.parent_close,
                queue=record.queue,
            )
            started = ev.RunStarted(
                run_id=continued_to,
                workflow=c.workflow,
                args=c.args,
                key=record.key,
                parent_run_id=record.parent_run_id,
                parent_seq=record.parent_seq,
                seed=new_seed(),
                time=now,
            )
            new_runs.append(NewRun(nxt, (started,)))
        else:  # pragma: no cover - a new command kind must be handled above
            raise AssertionError(f"unhandled command {c!r}")
    notice = parent_notice(record, status, result, error)
    if notice is not None:
        deliveries.append(notice)
    return Commit(
        run_id=run_id,
        lease=lease,
        now=now,
        events=tuple(new_events),
        inbox_upto=inbox_upto,
        status=status,
        result=result,
        error=error,
        continued_to=continued_to,
        steps=tuple(steps),
        timers=tuple(timers),
        cancel_timers=tuple(cancel_timers),
        new_runs=tuple(new_runs),
        hooks=tuple(hooks),
        dispose_hooks=tuple(dispose),
        hook_resumes=tuple(resumes),
        deliveries=tuple(deliveries),
    )
