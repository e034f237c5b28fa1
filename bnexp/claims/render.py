"""claims.md and claims.json: the verdicts, their reasons in plain words, the numbers behind
them and what produced them, written to a temporary folder and moved into place only when
complete (a failure leaves the previous results as they were)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnexp import metrics
from bnexp.claims.estimates import seed_of, select
from bnexp.claims.measure import chosen_words
from bnexp.claims.outcome import NOT_SUPPORTED, Verdict
from bnexp.claims.rules import RULES
from bnexp.claims.spec import Claim, Spec, shipped_path
from bnexp.claims.typed import declared
from bnexp.jsonio import staging, write_json_atomic
from bnexp.report import fmt
from bnexp.runs import Group, Run, code_versions, group_runs

PREVIEW_BUDGETS = ("test", "quick")  # their verdicts are worded as preliminary
SweepRuns = tuple[list[Run], list, Path, list[str]]  # runs, unreadable dirs, sweep dir, args


def write_claims(out: Path, budget: str, spec: Spec, claims: list[Claim], skipped: list[Claim],
                 verdicts: dict[str, Verdict], wheres: dict[str, str],
                 sweep_runs: dict[str, SweepRuns], provenance: dict[str, Any]) -> Path:
    """claims.md, figures/ and claims.json under ``out``."""
    from bnexp import figures

    with staging(out, ("figures", "claims.md", "claims.json")) as tmp:
        forest = _forest(claims, verdicts, tmp / "figures" / "forest.png", provenance)
        sections = []
        for claim in claims:
            runs, problems, _, args = sweep_runs[claim.sweep]
            shown, _ = select(runs, claim.where)  # figures: the runs the rule uses
            made = (figures.all_figures(group_runs(shown)[1], tmp / "figures" / claim.id,
                                        _stamp(provenance)) if shown else {})
            made = {t: out / p.relative_to(tmp) for t, p in made.items()}
            sections.append(section(claim, budget, args, runs, verdicts[claim.id],
                                    wheres[claim.id], made, problems, out, spec))
        text = (header(budget, spec, claims, skipped, verdicts, provenance)
                + (f"![Every claim's effect against its threshold](figures/{forest.name})\n\n"
                   if forest else "") + "\n".join(sections))
        (tmp / "claims.md").write_text(text + "\n")
        write_json_atomic(tmp / "claims.json", {
            "provenance": provenance, "alpha": spec.alpha,
            "preliminary": budget in PREVIEW_BUDGETS,
            "claims": [{**claim_json(c, verdicts[c.id], sweep_runs[c.sweep]),
                        "preliminary": budget in PREVIEW_BUDGETS} for c in claims],
            "not_run": [{"id": c.id, "reason": f"its sweep does not support data="
                         f"{provenance['dataset']}"} for c in skipped]})
    return out / "claims.md"


def _forest(claims: list[Claim], verdicts: dict[str, Verdict], path: Path,
            prov: dict[str, Any]) -> Path | None:
    """One forest plot: every claim level's estimate in units of its threshold."""
    from bnexp import figures

    rows = []
    for c in claims:
        rule = RULES[c.rule.type]
        v = verdicts[c.id]
        for r in (rule.forest(c.rule, v.numbers) if hasattr(rule, "forest") else []):
            label = c.title.split(" ", 1)[0] + " " + c.id + (f" ({r['level']})" if r["level"] else "")
            verdict = v.numbers.get("level_verdicts", {}).get(r["level"] or "all", v.verdict)
            rows.append(figures.ForestRow(label, r["effect"], r["lo"], r["hi"], r["threshold"],
                                          r["scale"], r["expect"], verdict))
    return figures.forest_plot(rows, path, _stamp(prov))


def _stamp(prov: dict[str, Any]) -> str:
    from bnexp import figures

    command = " ".join(["bnexp claims --budget", prov["budget"], *prov["overrides"]])
    return figures.stamp_text(command, prov["started"])


def claim_json(claim: Claim, v: Verdict, sweep: SweepRuns) -> dict[str, Any]:
    runs, problems, sweep_dir, args = sweep
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {"id": claim.id, "title": claim.title, "verdict": v.verdict, "reason": v.reason,
            "effect": v.effect, "rule": declared(claim.rule), "numbers": v.numbers,
            "sweep": str(sweep_dir), "args": args,
            "runs": len(runs), "statuses": statuses, "code_versions": code_versions(runs),
            "not_completed": [{"dir": r.dir.name, "status": r.status,
                               "why": r.summary.get("error") or r.summary.get("diverged_step")}
                              for r in runs if r.status != metrics.COMPLETED],
            "unreadable": [{"dir": str(p), "why": why} for p, why in problems]}


def _spec_name(spec: Spec) -> str:
    return "configs/claims/claims.yaml" if spec.path == shipped_path() else str(spec.path)


def header(budget: str, spec: Spec, claims: list[Claim], skipped: list[Claim],
           verdicts: dict[str, Verdict], prov: dict[str, Any]) -> str:
    word = "Preliminary verdict" if budget in PREVIEW_BUDGETS else "Verdict"
    lines = ["# What does Batch Normalization actually do? — bnexp claims", ""]
    if budget in PREVIEW_BUDGETS:
        lines += [f"> **Preview.** The `{budget}` budget runs few seeds and short training to "
                  "give a first look in minutes; its verdicts are preliminary. The verdicts we "
                  "stand behind come from `bnexp claims --budget standard` (>= 5 seeds).", ""]
    lines += [
        f"Budget **{budget}**, dataset **{prov['dataset']}**. Each verdict comes from the rule "
        f"declared in `{_spec_name(spec)}` before the runs, applied by "
        "`bnexp/claims/`; none is written by hand. Every claim has an effect-size threshold "
        "and two one-sided tests against it: that the effect reaches it (for) and that it "
        f"falls short (against); {_family_words(verdicts)}, at alpha = {spec.alpha}. "
        "'Supported' means the whole declared effect is shown, 'not supported' that the effect "
        "is shown to be smaller (or zero, or reversed); anything else is 'inconclusive', with "
        "the reason.", "",
        f"| claim | {word.lower()} |", "|---|---|",
        *[f"| {c.title} | **{verdicts[c.id].verdict}** |" for c in claims], "",
        f"Produced by bnexp {prov['bnexp']} (git {prov['git_sha'] or 'unknown'}), torch "
        f"{prov['torch']}, claims.yaml sha256 {prov['claims_yaml_sha256'][:12]}, threads "
        f"{prov['threads']}, devices {prov['devices']}, {prov['cpu_count']} CPUs; started "
        f"{prov['started']}, {prov['wall_time_s']:.0f} s; load average "
        f"{prov['load_average_start'][0]:.2f} at the start, {prov['load_average_end'][0]:.2f} at "
        "the end. Machine-readable: `claims.json`.", ""]
    if skipped:
        lines += ["Not run on this dataset: " + ", ".join(c.id for c in skipped) + ".", ""]
    return "\n".join(lines) + "\n"


def _family_words(verdicts: dict[str, Verdict]) -> str:
    family = max((v.numbers.get("holm_family", 0) for v in verdicts.values()), default=0)
    computed = sum(len(v.numbers.get("p_values", {})) for v in verdicts.values())
    if family <= computed:
        return f"all {computed} p-values of this call are Holm-adjusted together"
    return (f"the {computed} p-values of this call are Holm-adjusted as part of the claims "
            f"file's whole declared family of {family} tests, the {family - computed} not "
            "computed here counting as never rejected (p = 1), so a call with --only decides "
            "exactly as strictly as a full one")


def plain(claim: Claim, v: Verdict, preview: bool = False) -> str:
    """The verdict in one or two sentences a student can follow: effect, interval, test,
    threshold, conclusion (each rule type words its own)."""
    parts, bound = RULES[claim.rule.type].plain(claim.rule, v.numbers, claim.say)
    if not parts:
        return ""
    text = "; ".join(parts)
    so = (f"so, from this preview, it is **preliminarily {v.verdict}**" if preview
          else f"so it is **{v.verdict}**")
    return (f"In plain words: {text[0].upper() + text[1:]}. The claim needed {bound}, with a "
            f"significant test; {so}.")


def _tuned_line(claim: Claim, tuned: dict[str, Any]) -> list[str]:
    if not tuned or claim.tune is None:
        return []
    how = ("for each seed, the best on the other seeds' validation split" if any(
        c.get("select") == "crossfit" for c in tuned.values()) else "chosen on the validation split")
    return [f"**Each variant at its own best {claim.tune.by}** ({how}, by "
            f"{claim.tune.metric}): " + ", ".join(
                f"{claim.factor}={k}: {chosen_words(c)}"
                + (" (at the edge of the grid: the best may lie beyond it)" if c["edge"] else "")
                + (f" (tied with {', '.join(f'{x:g}' for x in c['tied'] if x != c['value'])}"
                   ": the larger wins, as declared)" if c.get("tied") else "")
                for k, c in tuned.items()) + ".", ""]


def _table(claim: Claim, groups: list[Group]) -> list[str]:
    reported = claim.report
    lines = ["", "| " + " | ".join(["group", "runs (status)", *reported]) + " |",
             "|" + "---|" * (2 + len(reported))]
    for g in groups:
        status = ", ".join(f"{n} {k}" for k, n in sorted(g.statuses().items()))
        cells = [fmt(g.stat(m, statuses=metrics.FINISHED),
                     100 if m.endswith("acc") else 1, 2 if m.endswith("acc") else 4)
                 for m in reported]
        lines.append(f"| {g.label} | {len(g.runs)} ({status}) | " + " | ".join(cells) + " |")
    return lines


def _experiment(claim: Claim, args: list[str], runs: list[Run], where: str, spec: Spec) -> str:
    sweep = spec.sweeps[claim.sweep]
    verb = "time" if sweep.timing else "train -m"
    preset = f" (`configs/experiment/{sweep.preset}.yaml`)" if sweep.preset else ""
    seeds = sorted({seed_of(r) for r in runs})
    return (f"- Experiment: `bnexp {verb} {' '.join(args)}`{preset}; {len(runs)} runs, seeds "
            f"{seeds}" + (f"; the rule uses {where}" if where else ""))


def section(claim: Claim, budget: str, args: list[str], runs: list[Run], v: Verdict,
            where: str, made: dict[str, Path], problems: list, out: Path, spec: Spec) -> str:
    word = "Preliminary verdict" if budget in PREVIEW_BUDGETS else "Verdict"
    reason = v.reason[:1].upper() + v.reason[1:]
    preview = budget in PREVIEW_BUDGETS
    lines = [f"## {claim.title}", ""]
    answer = plain(claim, v, preview)
    if answer:  # the answer first: the estimate and its interval
        lines += [answer, ""]
    lines += [f"**{word}: {v.verdict}.** {reason}.", ""]
    if v.verdict == NOT_SUPPORTED and claim.if_not_supported:
        wrong = ("Where the write-up may be wrong (preliminary: a preview budget)" if preview
                 else "Where the write-up is wrong")
        lines += [f"**{wrong}:** {claim.if_not_supported.strip()}", ""]
    lines += _tuned_line(claim, v.numbers.get("tuned", {}))
    lines += [f"- Measured: {v.effect}.",
              f"- Decision rule (declared before the runs): {claim.decision}",
              _experiment(claim, args, runs, where, spec)]
    lines += [f"- Same learning rate for both (descriptive, no Holm): {line}"
              for line in v.numbers.get("same_setting", [])]
    lines += [f"- Also measured (not part of the verdict): {line}"
              for line in v.numbers.get("also", [])]
    lines += _table(claim, group_runs(runs)[1])
    not_done = [r for r in runs if r.status != metrics.COMPLETED]
    if not_done:
        lines += ["", f"Runs that did not complete ({len(not_done)}, counted above): "
                  + ", ".join(f"`{r.dir.name}` {r.status}" for r in not_done[:12])
                  + (" ..." if len(not_done) > 12 else "")]
    lines += [f"\n- skipped unreadable `{p}`: {reason}" for p, reason in problems]
    lines.append("")
    for title, path in made.items():
        lines += [f"![{title}]({path.relative_to(out)})", ""]
    return "\n".join(lines)
