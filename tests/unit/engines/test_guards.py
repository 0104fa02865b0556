"""Stop sequences and the babbling guard (pure logic)."""

from __future__ import annotations

import pytest

from sprout.engines.guards import (
    BABBLE_CODE_BLOCK,
    BABBLE_REPETITION,
    STOP_SEQUENCE,
    BabbleGuard,
    TextGuard,
)

CODE = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"
CHATTER = "Hope this helps! This function adds two numbers. Let me know if you need more help."


def test_stop_sequence_cuts_before_the_earliest_stop():
    guard = TextGuard.build(["\nUser:", "###"])
    assert not guard.check("An answer").stop
    d = guard.check("An answer ### more\nUser: hi")
    assert d.stop and d.reason == STOP_SEQUENCE and d.cut == len("An answer ")
    assert guard.finish("An answer ### more") == ("An answer ", STOP_SEQUENCE)
    assert guard.finish("no stop here") == ("no stop here", None)


def test_empty_and_duplicate_stop_strings_are_dropped():
    guard = TextGuard.build(["", "END", "END"])
    assert guard.stop == ("END",) and guard.active
    assert not TextGuard.build([]).active


def test_closed_code_block_followed_by_chatter_is_cut_after_the_fence():
    guard = BabbleGuard(trailing_chars=20)
    # Still writing code, and a short remark after the block: not yet babble.
    assert not guard.check(CODE[:30]).stop
    assert not guard.check(CODE).stop
    assert not guard.check(CODE + "Hope this helps!").stop
    d = guard.check(CODE + CHATTER)
    assert d.stop and d.reason == BABBLE_CODE_BLOCK
    assert (CODE + CHATTER)[: d.cut] == CODE.rstrip("\n")


def test_a_short_lead_in_to_another_block_is_not_babble():
    guard = BabbleGuard(trailing_chars=20)
    two_blocks = CODE + "Usage:\n```python\nprint(add(1, 2))\n```\n"
    assert not guard.check(two_blocks).stop
    d = guard.check(two_blocks + CHATTER)
    assert d.stop and (two_blocks + CHATTER)[: d.cut] == two_blocks.rstrip("\n")


def test_prose_before_the_first_block_is_never_cut():
    guard = BabbleGuard(trailing_chars=0)
    intro = "Sure! " * 50 + "\n```\ncode\n"
    assert not guard.check(intro).stop
    # A fence mid-line (inline ``` in prose) does not open a block.
    assert not guard.check("Use ``` to fence code. Then ``` again. And ``` once more.").stop


def test_closing_fence_line_still_being_written_waits():
    guard = BabbleGuard(trailing_chars=0)
    assert not guard.check("```\nx = 1\n```").stop


def test_repetition_loop_keeps_one_copy():
    guard = BabbleGuard(max_repeats=3, min_period_chars=10)
    unit = "and more words "
    text = "Answer: " + unit * 3
    d = guard.check(text)
    assert d.stop and d.reason == BABBLE_REPETITION
    assert text[: d.cut] == "Answer: " + unit
    assert not guard.check("Answer: " + unit * 2).stop
    # Short repeats (a table rule) are below the minimum period.
    assert not guard.check("| --- " * 10).stop
    assert not guard.check("0, " * 30).stop
    assert not BabbleGuard(max_repeats=0).check(text * 5).stop


def test_repetition_is_found_whatever_the_phase_at_the_end():
    guard = BabbleGuard(max_repeats=3, min_period_chars=10)
    unit = "we keep going "
    text = "x" + unit * 4 + unit[:5]
    assert guard.check(text).stop


def test_earliest_rule_wins():
    babble = BabbleGuard(trailing_chars=10)
    assert TextGuard.build(["Hope"], babble).finish(CODE + CHATTER) == (
        CODE.rstrip("\n"),
        BABBLE_CODE_BLOCK,
    )
    text, reason = TextGuard.build(["return"], babble).finish(CODE + CHATTER)
    assert reason == STOP_SEQUENCE and text == CODE[: CODE.index("return")]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"trailing_chars": -1},
        {"max_repeats": 1},
        {"min_period_chars": 0},
        {"min_period_chars": 50, "max_period_chars": 10},
    ],
)
def test_invalid_guard_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        BabbleGuard(**kwargs)


def test_incremental_checks_agree_with_the_final_cut():
    """Checking after every character stops exactly where finishing the whole text cuts."""
    guard = TextGuard.build(["STOP"], BabbleGuard(trailing_chars=15))
    full = CODE + CHATTER + " STOP"
    stopped_at = next(i for i in range(len(full) + 1) if guard.check(full[:i]).stop)
    partial, reason = guard.finish(full[:stopped_at])
    assert reason == BABBLE_CODE_BLOCK
    assert partial == guard.finish(full)[0] == CODE.rstrip("\n")
