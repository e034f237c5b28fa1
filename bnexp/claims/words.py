"""Plain words for claims.md: the variants' names and the sentence a student can follow for
the rules that estimate a difference per level (compare, equivalent)."""

from __future__ import annotations

from typing import Any

from bnexp.claims.estimates import label

NAMES = {"torch": "BN", "bn": "BN", "none": "no normalisation", "custom": "bnexp's BN",
         "seed": "the write-up's literal BN", "dropout": "dropout", "weight_decay": "weight decay",
         "bn_dropout": "BN with dropout", "noisy": "noisy BN", "ghost": "ghost BN",
         "layer": "LayerNorm", "group": "GroupNorm"}


def name(value: str) -> str:
    return NAMES.get(str(value), value)


def level_forest(numbers: dict[str, Any], threshold: float, expect: str) -> list[dict[str, Any]]:
    """Each level's estimate and 95% interval for the forest plot (bnexp.figures.ForestRow's
    fields), against ``threshold`` in the claimed direction (``within`` for a margin)."""
    return [{"level": "" if level == "all" else level, "effect": est["effect"],
             "lo": est["interval"][0], "hi": est["interval"][1], "threshold": threshold,
             "scale": est["scale"], "expect": expect}
            for level, est in numbers.get("levels", {}).items()]


def level_sentences(numbers: dict[str, Any], what: str, a: str, b: str, metric: str,
                    margin: bool) -> list[str]:
    """One clause per level: the effect, its interval, the test and the Holm-adjusted p-values
    (of agreeing within the margin for an equivalence, of reaching the threshold otherwise)."""
    holm_p, parts = numbers.get("p_holm", {}), []
    for level, est in numbers.get("levels", {}).items():
        where = "" if level == "all" else f"at {level}, "
        lo, hi = est["interval"]
        if est["scale"] == "log":
            text = (f"{where}{what} with {a} was {est['effect']:.3g}x that with {b} "
                    f"(95% CI {lo:.3g} to {hi:.3g}")
        else:
            k, unit = label(metric)
            text = (f"{where}{what} with {a} minus that with {b} was "
                    f"{k * est['effect']:+.2f}{unit} (95% CI {k * lo:+.2f} to {k * hi:+.2f}")
        key = "" if level == "all" else level
        p_for, p_against = holm_p.get(f"{key}|for"), holm_p.get(f"{key}|against")
        text += f"; {est['test']} over {est['n'][0]} seeds"
        if p_for is None:
            text += ")"
        elif margin:
            text += (f"; Holm-adjusted p that they agree within the margin {p_for:.2g}, "
                     f"that they differ by more {p_against:.2g})")
        else:
            text += (f"; Holm-adjusted p that it reaches the threshold {p_for:.2g}, that "
                     f"it falls short {p_against:.2g})")
        parts.append(text)
    return parts
