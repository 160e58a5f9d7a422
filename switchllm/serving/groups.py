"""Route groups: serving a choice among N models (switchllm.routers.choice) under one name.

In the YAML config::

    routes:
      auto:
        router: mf
        models: [gpt-4o, gpt-4o-mini, llama-3.1-8b]
        objective: {willingness_to_pay: 200}     # or {quality_target: 0.02} / {max_quality: true}

and clients ask for ``model="auto"``. Ad hoc, without a config entry, a model name

    auto:<router>:<objective>[:<model>,<model>,...]

does the same, with ``<objective>`` one of ``wtp=<lambda>``, ``target=<epsilon>``, ``max``,
and the models defaulting to every configured model (e.g. ``auto:mf:wtp=200``,
``auto:mf:target=0.02:gpt-4o,gpt-4o-mini``). Every model must be configured (its prices are
the config's); the router must score each one (checked at start-up for config groups, per
request for ad-hoc names).

Fallback follows the candidates' order under the objective. Expected output tokens per model
come from `models.<name>.output_tokens` in the config, else the mean completion tokens the
decision log holds for the model, else `DEFAULT_OUTPUT_TOKENS`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchllm.routers.choice import Choice, ChoiceError, ModelChooser, Objective, estimate_tokens
from switchllm.serving.config import ConfigError, ModelNameError, ModelSpec

GROUP_PREFIX = "auto:"
MAX_ADHOC_GROUPS = 256


@dataclass(frozen=True)
class RouteGroup:
    name: str
    router: str  # a served router name
    models: tuple[str, ...]
    objective: Objective


def parse_routes(section: Any, models: Mapping[str, ModelSpec], where: str) -> dict[str,
                                                                                  RouteGroup]:
    """The YAML `routes:` mapping -> RouteGroup per name (ConfigError naming what is wrong)."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: routes must be a mapping of group name -> settings")
    groups = {}
    for name, settings in section.items():
        here = f"{where}: routes.{name}"
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{here} must be a mapping with router, models and objective")
        unknown = set(settings) - {"router", "models", "objective"}
        if unknown:
            raise ConfigError(f"{here}: unknown setting(s) {sorted(unknown)}")
        router, members = settings.get("router"), settings.get("models")
        if not isinstance(router, str) or not router:
            raise ConfigError(f"{here}.router must name a router (e.g. mf)")
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise ConfigError(f"{here}.models must be a list of model names")
        missing = [m for m in members if m not in models]
        if missing:
            raise ConfigError(f"{here}: model(s) {', '.join(missing)} are not in models:")
        try:
            objective = Objective.parse(settings.get("objective"))
        except ChoiceError as exc:
            raise ConfigError(f"{here}.objective: {exc}") from None
        groups[str(name)] = RouteGroup(str(name), router, tuple(members), objective)
    return groups


def parse_group_model(model: str, configured: Mapping[str, ModelSpec]) -> RouteGroup | None:
    """`auto:mf:wtp=200[:a,b,c]` -> RouteGroup; None when `model` is not of that form."""
    if not model.startswith(GROUP_PREFIX):
        return None
    parts = model[len(GROUP_PREFIX):].split(":", 2)
    usage = ("use auto:<router>:<objective>[:<model>,...] with objective wtp=<lambda>, "
             "target=<epsilon> or max (e.g. auto:mf:wtp=200)")
    if len(parts) < 2 or not parts[0]:
        raise ModelNameError(f"model {model!r}: {usage}")
    router, objective_text = parts[0], parts[1]
    key, _, value = objective_text.partition("=")
    kinds = {"wtp": "willingness_to_pay", "target": "quality_target", "max": "max_quality"}
    if key not in kinds or (key == "max") != (value == ""):
        raise ModelNameError(f"model {model!r}: bad objective {objective_text!r}; {usage}")
    try:
        objective = Objective(kinds[key], float(value) if value else 0.0)
    except ValueError:
        raise ModelNameError(f"model {model!r}: {value!r} is not a number") from None
    except ChoiceError as exc:
        raise ModelNameError(f"model {model!r}: {exc}") from None
    members = ([m for m in parts[2].split(",") if m] if len(parts) > 2
               else list(configured))
    missing = [m for m in members if m not in configured]
    if missing:
        raise ModelNameError(
            f"model {model!r}: {', '.join(map(repr, missing))} not configured here "
            f"(configured: {', '.join(configured)})", status=404, code="model_not_found")
    return RouteGroup(model, router, tuple(members), objective)


def logged_output_tokens(log_location: str | Path | None) -> dict[str, float]:
    """Mean completion tokens per model in the decision log (empty when there is none)."""
    if not log_location:
        return {}
    from switchllm.serving.log_store import open_store

    return open_store(log_location).mean_completion_tokens()


@dataclass(frozen=True)
class GroupDecision:
    """A route group's decision; `router`, `model`, `routing_s` as in a pair Decision."""

    group: str
    router: str
    model: str
    order: tuple[str, ...]
    predicted_quality: float
    expected_cost: float
    best_model: str
    routing_s: float
    threshold: None = None
    win_rate: None = None


class GroupRouting:
    """Builds a ModelChooser per group and decides off the event loop."""

    def __init__(self, groups: Mapping[str, RouteGroup], routers: Any,
                 models: Mapping[str, ModelSpec], log_location: str | Path | None = None) -> None:
        self.routers = routers  # RouterSet
        self.models = models
        logged = logged_output_tokens(log_location)
        self.output_tokens = {name: (spec.output_tokens if spec.output_tokens is not None
                                     else logged.get(name))
                              for name, spec in models.items()}
        self.output_tokens = {k: v for k, v in self.output_tokens.items() if v}
        self.groups = dict(groups)
        self.choosers: dict[str, ModelChooser] = {}
        for name, group in self.groups.items():
            try:
                self.choosers[name] = self._chooser(group)
            except (ChoiceError, ModelNameError) as exc:
                raise ConfigError(f"routes.{name}: {exc}") from None
        self._adhoc: OrderedDict[str, ModelChooser] = OrderedDict()

    def _chooser(self, group: RouteGroup) -> ModelChooser:
        router = self.routers.get(group.router)
        return ModelChooser(
            router, group.models,
            {m: self.models[m].input_price for m in group.models},
            {m: self.models[m].output_price for m in group.models},
            group.objective, self.output_tokens)

    def resolve(self, model: str) -> ModelChooser | None:
        """The chooser for a group name or an ad-hoc `auto:` name; None for neither.
        Raises ModelNameError (a 4xx) for a bad ad-hoc name."""
        chooser = self.choosers.get(model)
        if chooser is not None:
            return chooser
        chooser = self._adhoc.get(model)
        if chooser is not None:
            self._adhoc.move_to_end(model)
            return chooser
        group = parse_group_model(model, self.models)
        if group is None:
            return None
        try:
            chooser = self._chooser(group)
        except ChoiceError as exc:
            raise ModelNameError(f"model {model!r}: {exc}") from None
        self._adhoc[model] = chooser
        if len(self._adhoc) > MAX_ADHOC_GROUPS:
            self._adhoc.popitem(last=False)
        return chooser

    async def decide(self, name: str, chooser: ModelChooser, router_name: str, text: str,
                     input_tokens: int, batcher: Any) -> GroupDecision:
        """The group's choice for one request. `batcher` (the router's MicroBatcher) runs it
        on the router's worker thread, batched with concurrent requests to the same group."""
        started = time.perf_counter()
        choice: Choice = await batcher.choose(chooser, text, input_tokens)
        return GroupDecision(
            group=name, router=router_name, model=choice.model, order=choice.order,
            predicted_quality=choice.quality[choice.model],
            expected_cost=choice.expected_cost[choice.model], best_model=choice.best_model,
            routing_s=time.perf_counter() - started)


def router_of(chooser: ModelChooser, routers: Any) -> str:
    """The served name of a chooser's router."""
    for name, router in routers.routers.items():
        if router is chooser.router:
            return name
    return chooser.router.kind


def request_input_tokens(messages: list[Any]) -> int:
    """Tokeniser-free estimate of a request's input tokens: every message's text."""
    from switchllm.serving.config import content_text

    return estimate_tokens("".join(content_text(m.get("content")) for m in messages
                                   if isinstance(m, Mapping)))
