"""Reading the revisited benchmark's files: the layout, the ground truth's checks, and the
restricted unpickler (plain data and numpy arrays only; nothing in the file is ever called)."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest

from dinossl.errors import DataError
from dinossl.eval.retrieval.benchmark_files import open_revisited, read_data_pickle

from tests.eval.retrieval.conftest import GROUND_TRUTH, write_gnd


def test_the_built_benchmark_reads_back(revisited_root):
    bench = open_revisited(revisited_root, "roxford5k")
    assert bench.imlist == tuple(f"db{i:02d}" for i in range(12))
    assert bench.qimlist == ("query0", "query1", "query2")
    assert [(q.easy, q.hard, q.junk) for q in bench.gnd] == [
        (tuple(t["easy"]), tuple(t["hard"]), tuple(t["junk"])) for t in GROUND_TRUTH]
    assert all(q.bbx is not None and q.bbx[2] > q.bbx[0] for q in bench.gnd)
    assert bench.path("db03") == revisited_root / "roxford5k" / "jpg" / "db03.jpg"
    assert bench.describe()["database_images"] == 12


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_in_the_ground_truth_are_accepted(tmp_path, protocol):
    record = {"imlist": ["a", "b"], "qimlist": ["q"],
              "gnd": [{"easy": np.array([0]), "hard": np.array([], dtype=np.int64), "junk": np.array([1]),
                       "bbx": np.array([1.0, 2.0, 30.0, 40.0]), "score": np.float64(0.5)}]}
    path = tmp_path / "gnd.pkl"
    path.write_bytes(pickle.dumps(record, protocol=protocol))
    data = read_data_pickle(path)
    assert data["gnd"][0]["easy"].tolist() == [0] and data["gnd"][0]["bbx"].tolist() == [1.0, 2.0, 30.0, 40.0]


class _RunsCode:
    """Unpickling this calls os.system (a pickle holding a function)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_holding_a_function_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "gnd.pkl"
    path.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": [_RunsCode(marker)]}))
    with pytest.raises(DataError, match=r"refused to unpickle \(it would import (posix|os)\.system\)"):
        read_data_pickle(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"imlist": ["a"], "check": eval}))  # a builtin function, not data
    with pytest.raises(DataError, match="builtins.eval"):
        read_data_pickle(path)


def _copy_benchmark(revisited_root, tmp_path):
    root = tmp_path / "bench"
    shutil.copytree(revisited_root, root)
    return root, root / "roxford5k" / "gnd_roxford5k.pkl"


@pytest.mark.parametrize("record, message", [
    (["not", "a", "dict"], "expected a dict"),
    ({"imlist": ["db00"], "gnd": []}, "missing qimlist"),
    ({"imlist": ["db00"], "qimlist": ["query0"], "gnd": [{"easy": [0]}, {"easy": [0]}]}, "one dict per query"),
    ({"imlist": ["db00"], "qimlist": ["query0"], "gnd": [{"easy": [3]}]}, "index 3, outside the 1 database"),
    ({"imlist": ["db00"], "qimlist": ["query0"], "gnd": [{"easy": ["x"]}]}, "integer database indices"),
    ({"imlist": ["db00"], "qimlist": ["query0"], "gnd": [{"junk": [0]}]}, "neither 'easy' nor 'hard'"),
    ({"imlist": ["db00"], "qimlist": ["query0"], "gnd": [{"easy": [0], "bbx": [1, 2]}]}, "must be 4 numbers"),
    ({"imlist": [], "qimlist": ["query0"], "gnd": [{"easy": []}]}, "'imlist' is empty"),
    ({"imlist": ["db00"], "qimlist": ["nowhere"], "gnd": [{"easy": [0]}]}, "not in"),
])
def test_malformed_ground_truth_names_the_problem(revisited_root, tmp_path, record, message):
    root, gnd = _copy_benchmark(revisited_root, tmp_path)
    write_gnd(gnd, record)
    with pytest.raises(DataError, match=message):
        open_revisited(root, "roxford5k")


def test_missing_files_and_folders(revisited_root, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_revisited(tmp_path / "nowhere", "roxford5k")
    with pytest.raises(DataError, match="rparis6k"):
        open_revisited(revisited_root, "rparis6k")
    root, gnd = _copy_benchmark(revisited_root, tmp_path)
    (root / "roxford5k" / "jpg" / "db05.jpg").unlink()
    with pytest.raises(DataError, match="1 of the 15 images .*first: db05.jpg"):
        open_revisited(root, "roxford5k")
    gnd.unlink()
    with pytest.raises(DataError, match="gnd_roxford5k.pkl does not exist"):
        open_revisited(root, "roxford5k")
    gnd.write_bytes(b"\x80\x04 truncated")
    with pytest.raises(DataError, match="not a readable pickle"):
        open_revisited(root, "roxford5k")
