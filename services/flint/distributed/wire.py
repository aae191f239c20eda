"""The per-step message the driver broadcasts to every shard worker.

Two broadcasts per step over the control process group: a fixed header
(int64 [8]) and one packed int64 payload. Slot maps travel once per sequence
(when first seen); later steps carry only (handle, start, n). A decode step
with B sequences is therefore 8 + 1 + 4B (+N) integers, whatever the context
length.

Header: [cmd, T, S, N, R, D, total_new_slots, 0]
Payload: input_ids[T] | handle[S] | start[S] | n[S] | logit_rows[N]
         | new_handle[R] | new_len[R] | new_slots[total_new_slots] | released[D]
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch

from flint.engine.runner import StepBatch

HEADER_LEN = 8
CMD_STEP = 1
CMD_STOP = 2


@dataclass
class StepMessage:
    input_ids: torch.Tensor                      # [T]
    handles: torch.Tensor                        # [S]
    starts: torch.Tensor                         # [S]
    news: torch.Tensor                           # [S]
    logit_rows: torch.Tensor                     # [N]
    registered: list[tuple[int, torch.Tensor]]   # (handle, slot map)
    released: list[int]


class SlotRegistry:
    """Driver side: stable small-int handles for sequences, and what workers still need to learn."""

    def __init__(self) -> None:
        self._handles: dict[Hashable, int] = {}
        self._next = 0
        self._released: list[int] = []

    def release(self, key: Hashable) -> None:
        handle = self._handles.pop(key, None)
        if handle is not None:
            self._released.append(handle)

    def encode(self, batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (header [8], payload [...]) int64 tensors for one step."""
        handles, starts, news, reg_handles, reg_lens, reg_slots = [], [], [], [], [], []
        for key, slots, start, n in batch.seqs:
            handle = self._handles.get(key)
            if handle is None:
                handle = self._handles[key] = self._next
                self._next += 1
                reg_handles.append(handle)
                reg_lens.append(int(slots.shape[0]))
                reg_slots.append(slots.to(torch.int64))
            handles.append(handle)
            starts.append(start)
            news.append(n)
        released, self._released = self._released, []
        ints = torch.tensor(handles + starts + news, dtype=torch.int64)
        parts = [batch.input_ids.to(torch.int64), ints, batch.logit_rows.to(torch.int64),
                 torch.tensor(reg_handles + reg_lens, dtype=torch.int64), *reg_slots,
                 torch.tensor(released, dtype=torch.int64)]
        payload = torch.cat(parts)
        total = sum(reg_lens)
        header = torch.tensor([CMD_STEP, batch.num_tokens, len(handles), int(batch.logit_rows.shape[0]),
                               len(reg_handles), len(released), total, 0], dtype=torch.int64)
        return header, payload


def stop_header() -> torch.Tensor:
    header = torch.zeros(HEADER_LEN, dtype=torch.int64)
    header[0] = CMD_STOP
    return header


def payload_len(header: torch.Tensor) -> int:
    _, t, s, n, r, d, total, _ = (int(x) for x in header.tolist())
    return t + 3 * s + n + 2 * r + total + d


def decode(header: torch.Tensor, payload: torch.Tensor) -> StepMessage:
    _, t, s, n, r, d, total, _ = (int(x) for x in header.tolist())
    at = 0

    def take(k: int) -> torch.Tensor:
        nonlocal at
        out = payload[at : at + k]
        at += k
        return out

    input_ids, handles, starts, news, rows = take(t), take(s), take(s), take(s), take(n)
    reg_handles, reg_lens = take(r).tolist(), take(r).tolist()
    registered = [(h, take(length)) for h, length in zip(reg_handles, reg_lens)]
    released = take(d).tolist()
    return StepMessage(input_ids, handles, starts, news, rows, registered, released)
