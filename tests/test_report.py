"""pruning_report.json through its one type (PruningReport), one writer and one reader: exact round trips of real and
older reports, the schema version, a missing report, and the written file equal to the report prune / recover return."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_factory import save_tiny_model_folder
from shear_hub.errors import ShearHubError
from shear_hub.report import REPORT_NAME, SCHEMA_VERSION, UNSET, PruningReport, read_report, write_report
from tiny_models import _CORPUS


def _json(value) -> object:
    """What writing and reading back does to a value (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    from shear_hub.pruning import prune

    root = tmp_path_factory.mktemp("report")
    save_tiny_model_folder(root / "dense", layers=2, intermediate=32)
    result = prune(str(root / "dense"), root / "pruned", method="magnitude", sparsity=0.25, structures="heads,mlp",
                   progress=False, seq_len=16, eval_seq_len=16, eval_windows=2)
    (root / "text.txt").write_text(" ".join(_CORPUS * 30))
    return root, result


def test_prune_writes_what_it_returns(pruned):
    root, result = pruned
    on_disk = json.loads((root / "pruned" / REPORT_NAME).read_text())
    assert on_disk == _json(result.report.to_dict())
    assert "save" in on_disk["timings_s"]  # recorded before the report was written, not after
    assert on_disk["schema_version"] == result.report.schema_version == SCHEMA_VERSION


def test_real_report_round_trips(pruned, tmp_path):
    root, _ = pruned
    on_disk = json.loads((root / "pruned" / REPORT_NAME).read_text())
    report = read_report(root / "pruned")
    assert report.to_dict() == on_disk and PruningReport.from_dict(on_disk).to_dict() == on_disk
    assert report.extra == {}  # every key prune writes is a field
    assert list(on_disk)[1:] == [k for k in PruningReport.keys() if k in on_disk]  # written in field order
    assert report.method == "magnitude" and report.params_after < report.params_before
    write_report(tmp_path, report)
    assert json.loads((tmp_path / REPORT_NAME).read_text()) == on_disk


def test_older_and_hand_written_reports_round_trip(tmp_path):
    older = {"base_model": "org/base", "method": "wanda", "recovery": None, "calibration": None, "previous": True}
    report = PruningReport.from_dict(older)
    assert report.schema_version is None and report.extra == {"previous": True}
    assert report.dims_before is UNSET and not report.dims_before
    assert report.to_dict() == older  # absent keys stay absent, null ones stay null, unknown ones are kept
    write_report(tmp_path, report)  # rewriting stamps the version on the file and on the object alike
    assert json.loads((tmp_path / REPORT_NAME).read_text()) == {**older, "schema_version": SCHEMA_VERSION}
    assert report.to_dict() == {**older, "schema_version": SCHEMA_VERSION}
    with pytest.raises(ShearHubError, match="JSON object"):
        PruningReport.from_dict(["not", "a", "report"])


def test_missing_report_is_explicit(tmp_path):
    assert read_report(tmp_path, missing_ok=True) is None
    assert read_report(tmp_path / "no-such-folder", missing_ok=True) is None
    assert read_report("org/hub-id", missing_ok=True) is None
    with pytest.raises(ShearHubError, match=f"no {REPORT_NAME} in"):
        read_report(tmp_path)
    with pytest.raises(ShearHubError, match="not a folder"):
        read_report(tmp_path / "no-such-folder")
    (tmp_path / REPORT_NAME).write_text("{truncated")
    with pytest.raises(ShearHubError, match="not valid JSON"):  # broken is never "missing"
        read_report(tmp_path, missing_ok=True)
    (tmp_path / REPORT_NAME).write_text("[1, 2]")
    with pytest.raises(ShearHubError, match="not a JSON object"):
        read_report(tmp_path, missing_ok=True)


def test_recover_writes_what_it_returns(pruned, tmp_path):
    from shear_hub.recovery import RecoveryConfig, recover

    root, _ = pruned
    cfg = RecoveryConfig(steps=2, batch_size=2, seq_len=16, data=str(root / "text.txt"), save_every=0, log_every=1)
    result = recover(str(root / "pruned"), tmp_path / "recovered", cfg)
    on_disk = json.loads((Path(tmp_path) / "recovered" / REPORT_NAME).read_text())
    assert on_disk == _json(result.report.to_dict())
    assert "save" in on_disk["recovery"]["timings_s"]
    assert on_disk["method"] == "magnitude" and on_disk["dims_after"]  # the pruning history is kept
