"""The quick start's demo, run as a new user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dispatcher.events import EVENT_TYPES
from tests.conftest import query


def test_the_demo_delivers_every_type_retries_and_gives_up(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "demo", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for type_ in EVENT_TYPES:
        assert type_ in result.stdout
    db = tmp_path / "demo.db"
    states = dict(query(db, "SELECT webhook || ':' || state, count(*) FROM deliveries GROUP BY 1"))
    assert states == {
        "erp-sync:succeeded": 12,
        "crm-orders:succeeded": 9,
        "broken-endpoint:failed": 1,
    }
    assert query(db, "SELECT DISTINCT attempts FROM deliveries WHERE webhook = 'crm-orders'") == [
        (3,)
    ]
    assert query(db, "SELECT max(number) FROM attempts") == [(4,)]
