"""log.jsonl rewinding on resume."""

import json

from dinossl.train.run_log import RunLog, rewind_log


def test_rewind_drops_the_records_a_resumed_run_writes_again(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    log.write({"kind": "step", "step": 1})
    position = log.position()
    log.write({"kind": "step", "step": 2})
    log.write({"kind": "knn", "epoch": 1, "top1": 40.0})
    log.write({"kind": "warning", "message": "m", "step": 2})
    log.write({"kind": "epoch", "epoch": 1})
    with (tmp_path / "log.jsonl").open("a") as handle:
        handle.write('{"kind": "step", "st')  # cut short by a kill
    assert rewind_log(tmp_path, position) == 4
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows == [{"kind": "step", "step": 1}, {"kind": "knn", "epoch": 1, "top1": 40.0}]
    assert rewind_log(tmp_path, None) == 0 and rewind_log(tmp_path / "absent", 0) == 0
