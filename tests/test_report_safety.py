"""What a table's values and folder names can do to a report: nothing outside -o, nothing to the page's scripts."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import synthetic
from conftest import tree_digest

from analysis import html, load
from bnsweep.cli import main

HOSTILE = ["</script>", "<!--<script>", "<!--", "-->", "</SCRIPT ", "a & b > c", "<\\/script>", "\u2028\u2029", "]]>"]


@pytest.mark.parametrize("value", HOSTILE)
def test_inlined_json_has_no_markup_and_reads_back_unchanged(value):
    obj = {"data": {"values": [{"norm": value, value: 1}]}, "title": value}
    text = html.script_json(obj)
    assert not set("<>&") & set(text)
    assert json.loads(text) == obj


def test_the_page_keeps_its_three_scripts_whatever_a_value_holds():
    specs = {"fig": {"data": {"values": [{"norm": v} for v in HOSTILE]}}}
    page = html.page("t", "<p>body</p>", specs)
    tail = page[page.index("<script type='application/json'"):]  # after the library bundle
    assert len(re.findall(r"<script", tail, re.IGNORECASE)) == 2 and len(re.findall(r"</script", tail, re.IGNORECASE)) == 2
    inlined = tail[tail.index(">") + 1: tail.index("</script>")]
    assert json.loads(inlined) == specs


def _dotdot_partition(out):
    """A copy of one real cell's cells file under a partition folder named `sweep=..`."""
    src = next((out / "cells").rglob("*.parquet"))
    dest = out / "cells" / "sweep=.." / "arch=vgg" / "norm=batch" / src.name
    dest.parent.mkdir(parents=True)
    shutil.copy(src, dest)
    return dest


def test_a_partition_named_dotdot_is_no_sweep(tmp_path, capsys):
    out = tmp_path / "out"
    synthetic.write_runs(str(out))
    _dotdot_partition(out)
    capsys.readouterr()
    assert load.sweeps(str(out)) == [synthetic.SWEEP]
    assert f"skipped {out}/cells/sweep=..: '..' is not a sweep name" in capsys.readouterr().err


def test_report_never_writes_outside_o_through_a_dotdot_partition(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "cells").mkdir(parents=True)
    synthetic.write_runs(str(tmp_path / "real"))
    shutil.copytree(tmp_path / "real" / "cells" / f"sweep={synthetic.SWEEP}", out / "cells" / "sweep=..")
    shutil.rmtree(tmp_path / "real")
    dest = tmp_path / "reports" / "inner"
    before = tree_digest(tmp_path)
    capsys.readouterr()
    assert main(["report", str(out), "-o", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"error: no sweep has rows under {str(out)!r} yet"
    assert tree_digest(tmp_path) == before and not (tmp_path / "reports").exists()
