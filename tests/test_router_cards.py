import json

import numpy as np
import pytest

from switchllm.errors import CardError, UnknownModelError, UnknownRouterError
from switchllm.routers import available_routers, load_card, load_router
from switchllm.routers.random import RandomRouter


def test_random_router_is_uniform_and_batched():
    router = load_router("random")
    rates = router.win_rate(["hello"] * 20000)
    assert rates.shape == (20000,)
    assert 0.0 <= rates.min() and rates.max() <= 1.0
    assert abs(rates.mean() - 0.5) < 0.01
    assert abs(float(np.mean(rates >= 0.3)) - 0.7) < 0.01


def test_random_router_threshold_for_share_is_exact():
    router = RandomRouter()
    assert router.threshold_for_strong_share(0.3) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        router.threshold_for_strong_share(1.5)


def test_card_round_trip(tmp_path):
    router = RandomRouter(seed=3)
    router.card_info["validation"] = {"apgr": 0.5}
    router.save(tmp_path / "card")
    card = json.loads((tmp_path / "card" / "router.json").read_text())
    assert card["type"] == "random" and card["params"] == {"seed": 3}
    loaded = load_card(tmp_path / "card")
    assert isinstance(loaded, RandomRouter) and loaded.seed == 3
    assert loaded.card_info["validation"] == {"apgr": 0.5}
    assert np.array_equal(loaded.win_rate(["a", "b"]), RandomRouter(seed=3).win_rate(["a", "b"]))


def test_bad_cards_are_clear_errors(tmp_path):
    with pytest.raises(CardError, match="router.json is missing"):
        load_card(tmp_path)
    (tmp_path / "router.json").write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        load_card(tmp_path)
    (tmp_path / "router.json").write_text(json.dumps({"type": "random"}))
    (tmp_path / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(CardError, match="not a valid safetensors"):
        load_card(tmp_path)
    (tmp_path / "weights.safetensors").unlink()
    (tmp_path / "router.json").write_text(json.dumps({"type": "os.system"}))
    with pytest.raises(CardError, match="unknown router type"):
        load_card(tmp_path)


def test_unknown_router_names():
    assert "random" in available_routers()
    with pytest.raises(UnknownRouterError, match="unknown router 'nope'"):
        load_router("nope")


def test_resolve_pair_checks_known_models():
    router = RandomRouter()
    router.models = ["big", "small"]
    assert router.resolve_pair("big", "small") == ("big", "small")
    with pytest.raises(UnknownModelError, match="does not know model 'huge'"):
        router.win_rate(["x"], strong="huge", weak="small")
