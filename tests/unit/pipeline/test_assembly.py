"""kstap.pipeline.assembly's timing constants against the stream's watermark."""

from __future__ import annotations

from kstap.capture import fanout
from kstap.pipeline import assembly
from kstap.remote import hub


def test_live_blocks_retire_inside_the_stream_watermark_lag() -> None:
    # A worker's watermark promises every packet older than (loop point - lag) has been handed over;
    # that holds only when the kernel retires a block (plus slack) within the lag.
    assert assembly.LIVE_RETIRE_MS + fanout.SLACK_MS < hub.WATERMARK_LAG_MS
    assert assembly.LIVE_RETIRE_MS < assembly.FILE_RETIRE_MS
