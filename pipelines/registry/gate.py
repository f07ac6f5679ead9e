"""The champion gate's rule: given the NDCG@10 of an ALS challenger, the champion and popularity on the
challenger's holdout, which one serves. Pure: `pipelines.registry.promotion` reads the registry, calls
`decide` under the promotion lock and writes the decision's tags."""

from __future__ import annotations

import math
from dataclasses import dataclass

from als_store.model_tags import (KIND_POPULARITY, TAG_GATE_ALS_NDCG, TAG_GATE_ALS_VERSION,
                                  TAG_GATE_CHALLENGER_NDCG, TAG_GATE_CHAMPION_LOAD_ERROR, TAG_GATE_CHAMPION_NDCG,
                                  TAG_GATE_CHAMPION_VERSION, TAG_GATE_DECISION, TAG_GATE_MARGIN,
                                  TAG_GATE_POPULARITY_NDCG, TAG_GATE_POPULARITY_VERSION, TAG_GATE_REASON,
                                  TAG_GATE_RULE)

RULE_FIRST_MODEL = "first_model"  # no champion: beat popularity
RULE_BEATS_CHAMPION = "beats_champion"  # beat the champion by more than the margin, and popularity
RULE_CHAMPION_UNSCORABLE = "champion_unscorable"  # the champion could not be loaded or scored: beat popularity
RULE_ALREADY_CHAMPION = "already_champion"
# the optional stability rule (StabilityRule): it beat the champion, by too little for how many lists it changes
RULE_SMALL_GAIN_UNSTABLE = "small_gain_unstable"
# The rules under which the gate promotes popularity (counted on the challenger's training data) instead:
RULE_POPULARITY_FIRST_MODEL = "popularity_first_model"  # no champion, and the challenger did not beat popularity
RULE_POPULARITY_BEATS_CHAMPION = "popularity_beats_champion"  # an ALS champion below popularity by the margin,
#                                                                and the challenger did not win
RULE_POPULARITY_CHAMPION_UNSCORABLE = "popularity_champion_unscorable"  # unscorable champion, challenger lost
RULE_POPULARITY_REFRESH = "popularity_refresh"  # a popularity champion the challenger did not beat: fresh counts
POPULARITY_RULES = (RULE_POPULARITY_FIRST_MODEL, RULE_POPULARITY_BEATS_CHAMPION, RULE_POPULARITY_CHAMPION_UNSCORABLE,
                    RULE_POPULARITY_REFRESH)
RULES = (RULE_FIRST_MODEL, RULE_BEATS_CHAMPION, RULE_CHAMPION_UNSCORABLE, RULE_ALREADY_CHAMPION,
         RULE_SMALL_GAIN_UNSTABLE, *POPULARITY_RULES)


@dataclass(frozen=True)
class StabilityRule:
    """The optional rule against churn (off unless given): a challenger that beats the champion by less than
    ``min_gain`` NDCG@10 while it changes the first item of more than ``max_first_item_changed`` of the
    users' lists (the evaluation's ``first_item_changed_share`` against that champion) is refused."""

    min_gain: float
    max_first_item_changed: float

    def refuses(self, gain: float, first_item_changed: float | None) -> bool:
        """Whether the rule refuses; a stability not measured against this champion (None) refuses nothing."""
        return (first_item_changed is not None and gain < self.min_gain
                and first_item_changed > self.max_first_item_changed)


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for one ALS challenger. ``promote``: the challenger became champion;
    ``promote_popularity``: the popularity baseline measured on the same holdout did instead (registered as
    version ``popularity_version`` by `promote_if_better`); neither: the champion stays."""

    promote: bool
    reason: str
    challenger_version: int
    challenger_ndcg: float
    champion_version: int | None
    champion_ndcg: float | None
    popularity_ndcg: float
    margin: float
    rule: str = RULE_BEATS_CHAMPION
    champion_load_error: str | None = None
    promote_popularity: bool = False
    champion_kind: str | None = None
    popularity_version: int | None = None

    @property
    def changes_champion(self) -> bool:
        return self.promote or self.promote_popularity

    def _scores(self) -> dict[str, str]:
        return {
            TAG_GATE_REASON: self.reason,
            TAG_GATE_CHAMPION_VERSION: "" if self.champion_version is None else str(self.champion_version),
            TAG_GATE_CHAMPION_NDCG: _fmt(self.champion_ndcg),
            TAG_GATE_POPULARITY_NDCG: _fmt(self.popularity_ndcg),
            TAG_GATE_MARGIN: _fmt(self.margin),
            TAG_GATE_CHAMPION_LOAD_ERROR: self.champion_load_error or "",
        }

    def tags(self) -> dict[str, str]:
        """The challenger version's tags (and asset metadata) describing the decision."""
        tags = {
            TAG_GATE_DECISION: "promoted" if self.promote else "rejected",
            TAG_GATE_RULE: self.rule,
            TAG_GATE_CHALLENGER_NDCG: _fmt(self.challenger_ndcg),
            **self._scores(),
        }
        if self.popularity_version is not None:
            tags[TAG_GATE_POPULARITY_VERSION] = str(self.popularity_version)
        return tags

    def popularity_tags(self) -> dict[str, str]:
        """The promoted popularity version's tags: the same decision seen from it. Its own NDCG@10 is its
        `gate.challenger_ndcg_at_10` (it is the candidate that won), the ALS challenger's is `gate.als_*`."""
        return {
            TAG_GATE_DECISION: "promoted",
            TAG_GATE_RULE: self.rule,
            TAG_GATE_CHALLENGER_NDCG: _fmt(self.popularity_ndcg),
            **self._scores(),
            TAG_GATE_ALS_VERSION: str(self.challenger_version),
            TAG_GATE_ALS_NDCG: _fmt(self.challenger_ndcg),
        }


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def decide(
    challenger_version: int,
    challenger_ndcg: float,
    champion_version: int | None,
    champion_ndcg: float | None,
    popularity_ndcg: float,
    margin: float = 0.0,
    champion_load_error: str | None = None,
    champion_kind: str | None = None,
    popularity_available: bool = False,
    champion_popularity_of: int | None = None,
    stability_rule: StabilityRule | None = None,
    first_item_changed: float | None = None,
) -> GateDecision:
    """The rule, always on the challenger's holdout. An ALS challenger is promoted only if it beats popularity,
    and

    - ``first_model`` (no champion): that is all;
    - ``beats_champion``: it must also beat the champion's NDCG@10 + margin (a tie keeps the champion),
      whatever the champion's kind;
    - ``champion_unscorable`` (the champion could not be loaded or scored): beating popularity is all it can
      be judged on, so a broken champion never blocks promotions, and never lets a weak model through.

    When the challenger is not promoted and ``popularity_available`` (the caller can register the popularity
    model counted on the challenger's training data), popularity is promoted instead where it is the best
    measured: with no champion (``popularity_first_model``), over an unscorable champion
    (``popularity_champion_unscorable``), over an ALS champion it beats by more than the margin
    (``popularity_beats_champion``), and over a popularity champion, whose counts it refreshes without a
    comparison (``popularity_refresh``). ``already_champion``: the challenger, or the popularity counted on
    its data (``champion_popularity_of``), is the champion already. NaN never wins.

    ``stability_rule`` (`StabilityRule`, optional): a challenger that won under ``beats_champion`` with a gain
    below its ``min_gain`` while ``first_item_changed`` (the share of the holdout users whose first item it
    changes against this champion; None: not measured, and the rule does not apply) exceeds its
    ``max_first_item_changed`` is refused (``small_gain_unstable``): the champion stays."""
    common = dict(challenger_version=challenger_version, challenger_ndcg=challenger_ndcg,
                  champion_version=champion_version, champion_ndcg=champion_ndcg,
                  popularity_ndcg=popularity_ndcg, margin=margin, champion_load_error=champion_load_error,
                  champion_kind=champion_kind)
    if champion_version is None:
        rule = RULE_FIRST_MODEL
    elif champion_version == challenger_version or (
            champion_kind == KIND_POPULARITY and champion_popularity_of == challenger_version):
        rule = RULE_ALREADY_CHAMPION
    elif champion_ndcg is None or not math.isfinite(champion_ndcg):
        rule = RULE_CHAMPION_UNSCORABLE
    else:
        rule = RULE_BEATS_CHAMPION

    def keep(reason: str) -> GateDecision:
        return GateDecision(False, reason, rule=rule, **common)

    def popularity(popularity_rule: str, reason: str) -> GateDecision:
        return GateDecision(False, f"{reason}: popularity promoted", rule=popularity_rule, promote_popularity=True,
                            **common)

    if rule == RULE_ALREADY_CHAMPION:
        if champion_version == challenger_version:
            return keep("challenger is already the champion")
        return keep(f"champion v{champion_version} is the popularity counted on v{challenger_version}'s data already")
    popularity_ok = popularity_available and math.isfinite(popularity_ndcg)
    if not math.isfinite(challenger_ndcg):
        beats_popularity = False
        versus_popularity = f"challenger NDCG@10 is {challenger_ndcg}"
    else:
        beats_popularity = challenger_ndcg > popularity_ndcg
        versus_popularity = (f"challenger NDCG@10 {challenger_ndcg:.5f} {'>' if beats_popularity else '<='} "
                             f"popularity {popularity_ndcg:.5f}")
    if rule == RULE_FIRST_MODEL:
        if beats_popularity:
            return GateDecision(True, f"first model: {versus_popularity}", rule=rule, **common)
        if popularity_ok:
            return popularity(RULE_POPULARITY_FIRST_MODEL, f"first model: {versus_popularity}")
        return keep(f"first model: {versus_popularity}")
    if rule == RULE_CHAMPION_UNSCORABLE:
        cause = champion_load_error or f"NDCG@10 {champion_ndcg}"
        reason = f"champion v{champion_version} could not be scored ({cause}): {versus_popularity}"
        if beats_popularity:
            return GateDecision(True, reason, rule=rule, **common)
        if popularity_ok:
            return popularity(RULE_POPULARITY_CHAMPION_UNSCORABLE, reason)
        return keep(reason)
    what = "popularity champion" if champion_kind == KIND_POPULARITY else "champion"
    if math.isfinite(challenger_ndcg):
        beats_champion = challenger_ndcg > champion_ndcg + margin
        reason = (f"challenger NDCG@10 {challenger_ndcg:.5f} {'>' if beats_champion else '<='} {what} "
                  f"v{champion_version} {champion_ndcg:.5f} + margin {margin:g}")
    else:
        beats_champion, reason = False, versus_popularity
    if beats_champion and beats_popularity:
        gain = challenger_ndcg - champion_ndcg
        if stability_rule is not None and stability_rule.refuses(gain, first_item_changed):
            return GateDecision(False, f"{reason}, but a gain of {gain:.5f} < {stability_rule.min_gain:g} changes the "
                                       f"first item for {first_item_changed:.1%} > "
                                       f"{stability_rule.max_first_item_changed:.1%} of the users",
                                rule=RULE_SMALL_GAIN_UNSTABLE, **common)
        return GateDecision(True, reason, rule=rule, **common)
    if beats_champion:
        reason += f", but {versus_popularity}"
    if popularity_ok and champion_kind == KIND_POPULARITY:
        return popularity(RULE_POPULARITY_REFRESH, f"{reason}; counted again on this training data")
    if popularity_ok and popularity_ndcg > champion_ndcg + margin:
        return popularity(RULE_POPULARITY_BEATS_CHAMPION,
                          f"{reason}; popularity {popularity_ndcg:.5f} > champion v{champion_version} "
                          f"{champion_ndcg:.5f} + margin {margin:g}")
    return keep(reason)
