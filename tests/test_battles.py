import numpy as np
import pytest

from switchllm.data.battles import Battles
from switchllm.errors import DataError


def test_from_scores_makes_every_pair_once_with_ties():
    scores = np.array([[1.0, 0.0, np.nan], [0.5, 0.5, 1.0]])
    battles = Battles.from_scores(["p0", "p1"], ["a", "b", "c"], scores)
    got = sorted(
        (battles.prompts[p], battles.models[a], battles.models[b], float(o))
        for p, a, b, o in zip(battles.prompt_idx, battles.model_a, battles.model_b,
                              battles.outcome, strict=True)
    )
    assert got == [
        ("p0", "a", "b", 1.0),  # p0: c unscored, so only a-b
        ("p1", "a", "b", 0.5),
        ("p1", "a", "c", 0.0),
        ("p1", "b", "c", 0.0),
    ]


def test_from_scores_rejects_data_with_nothing_to_compare():
    with pytest.raises(DataError, match="nothing to compare"):
        Battles.from_scores(["p"], ["a", "b"], np.array([[1.0, np.nan]]))


def test_select_prompts_and_concat_reindex():
    b1 = Battles.from_records([("x", "a", "b", 1.0), ("y", "a", "b", 0.0)])
    b2 = Battles.from_records([("y", "b", "c", 0.5)])
    only_y = b1.select_prompts(np.array([False, True]))
    assert only_y.prompts == ["y"] and only_y.outcome.tolist() == [0.0]
    merged = b1.concat(b2)
    assert merged.models == ["a", "b", "c"]
    assert merged.prompts == ["x", "y"]
    assert [merged.prompts[i] for i in merged.prompt_idx] == ["x", "y", "y"]
    assert [merged.models[i] for i in merged.model_b] == ["b", "b", "c"]


def test_fingerprint_changes_with_data():
    b1 = Battles.from_records([("x", "a", "b", 1.0)])
    b2 = Battles.from_records([("x", "a", "b", 0.0)])
    assert b1.fingerprint() == Battles.from_records([("x", "a", "b", 1.0)]).fingerprint()
    assert b1.fingerprint() != b2.fingerprint()


def test_emphasize_pair_gives_the_pair_its_share_of_weight():
    battles = Battles.from_records([("x", "a", "b", 1.0), ("x", "a", "c", 1.0),
                                    ("y", "b", "c", 0.0), ("y", "b", "a", 0.5)])
    emphasized = battles.emphasize_pair("a", "b", share=0.75)
    pair = np.array([True, False, False, True])
    assert emphasized.weight[pair].sum() == pytest.approx(3 * emphasized.weight[~pair].sum())
    assert emphasized.weight[~pair].tolist() == [1.0, 1.0]
    with pytest.raises(DataError, match="unknown model"):
        battles.emphasize_pair("a", "zzz")
