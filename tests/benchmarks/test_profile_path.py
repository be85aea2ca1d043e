"""benchmarks/profile_path.py: reading py-spy's raw (collapsed-stack) output."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import profile_path  # noqa: E402

RAW = """\
process 1:"python x";main (x.py:1);loop (asyncio/base_events.py:10);_write_loop (grpctunnel/session.py:276) 6
process 1:"python x";main (x.py:1);loop (asyncio/base_events.py:10);select (selectors.py:468) 3
process 1:"python x";main (x.py:1);loop (asyncio/base_events.py:10);_write_loop (grpctunnel/session.py:275) 1
"""


def test_parse_raw_counts_own_and_inclusive_samples(tmp_path: Path) -> None:
    raw = tmp_path / "p.raw.txt"
    raw.write_text(RAW)
    own_line, own_fn, incl_fn, total = profile_path.parse_raw(raw)
    assert total == 10
    assert own_line["_write_loop (grpctunnel/session.py:276)"] == 6
    assert own_fn["_write_loop (grpctunnel/session.py)"] == 7
    assert incl_fn["main (x.py)"] == 10
    assert incl_fn["select (selectors.py)"] == 3
    assert not any(k.startswith("process ") for k in incl_fn)

    text = profile_path.summarise("serve", raw, 55.0, 20, top=5)
    assert "CPU 55 % of one core; 10 busy samples (50 % of 20)" in text
    assert "70.0 %  _write_loop (grpctunnel/session.py)" in text


def test_summarise_without_a_profile(tmp_path: Path) -> None:
    text = profile_path.summarise("expose", tmp_path / "missing.txt", 12.0, 100, top=5)
    assert "no profile" in text
