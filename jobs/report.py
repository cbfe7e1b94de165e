"""What the jobs show people: the plots they log to MLflow, the summary lines and the HTML
report. One place for matplotlib (headless), so every figure is drawn the same way; no job
draws or formats a table itself.
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    """matplotlib's pyplot on the headless Agg backend (jobs run without a display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def backtest_lines(table: pd.DataFrame | None) -> list[str]:
    """The user model's backtest (its training run's held-out horizon): totals, then by
    acquisition cohort, the network and BTYD beside what was realised."""
    if table is None:
        return []
    models = [c for c in table.columns if c.startswith("predicted_")]

    def row(r) -> str:
        cells = [f"{m.removeprefix('predicted_')} {r[m]:>12,.0f} ({(r[m] / r['actual'] - 1) * 100:+6.1f}%)"
                 if r["actual"] else f"{m.removeprefix('predicted_')} {r[m]:>12,.0f}" for m in models]
        return f"users {r['population']:>9,.0f}  actual {r['actual']:>12,.0f}  " + "  ".join(cells)

    total = table[table["segment"] == "all"].iloc[0]
    lines = ["backtest of the user model on its held-out horizon (weighted totals):", f"  {'all users':<10} {row(total)}"]
    lines += [f"  {r['group']:<10} {row(r)}" for _, r in
              table[table["segment"] == "cohort"].sort_values("group").iterrows()]
    return lines

def coverage_text(scores: Mapping[str, float]) -> str:
    """A candidate's P10-P90 coverage on the test split, over everyone and over the payers."""
    return (f"{scores['coverage_p10_p90']:.0%} of users ({scores['coverage_p10_p90_payers']:.0%} of payers)"
            if "coverage_p10_p90" in scores else "n/a")


def coverage_lines(table: pd.DataFrame, candidates) -> list[str]:
    """The P10-P90 coverage of each of ``candidates`` (names, repeats ignored) per decile of
    its prediction on the test split (a training run's interval_coverage table)."""
    lines = []
    for name in dict.fromkeys(candidates):
        part = table[table["candidate"] == name].sort_values("decile")
        if len(part):
            cells = " ".join(f"{int(r.decile)}:{r.coverage:.0%}" for r in part.itertuples())
            lines.append(f"    P10-P90 coverage by decile of the {name} prediction (1 = lowest): {cells}")
    return lines


def summary_lines(tables, profiles, champions: Mapping) -> list[str]:
    """The scoring summary: top synergy pairs, expansion opportunities, the revenue balance per
    platform, the personas and each champion's held-out figures."""
    syn, rev = tables["synergy_scores"], tables["revenue_metrics"]
    lines = ["top synergy pairs (Q x E):"] if len(syn) else []
    for r in syn.dropna(subset=["synergy"]).nlargest(5, "synergy").itertuples():
        lines.append(f"  {r.creator_id:<14} {r.platform:<11} synergy {r.synergy:.3f} (Q {r.q:.2f}, E {r.e:.2f})  "
                     f"R_C {r.r_c:>10,.2f}  next {r.predicted_revenue:>10,.2f}")
    if len(syn):
        lines.append("largest expansion opportunities (predicted revenue there, uplift over today):")
    for r in syn.dropna(subset=["uplift"]).nlargest(5, "uplift").itertuples():
        lines.append(f"  {r.creator_id:<14} -> {r.platform:<11} ({r.status})  potential {r.potential_revenue:>10,.2f}  "
                     f"uplift {r.uplift:>+10,.2f}")
    lines.append(f"revenue balance per platform: {'platform':<11} {'R_P':>10} {'ΣR_C':>11} {'gap':>11} "
                 f"{'share':>6} {'next (pred.)':>13}")
    for r in rev.sort_values("platform").itertuples():
        share = "n/a" if r.creator_share != r.creator_share else f"{r.creator_share:.1%}"
        lines.append(f"  {'':<27} {r.platform:<11} {r.r_p:>10,.2f} {r.sum_r_c:>11,.2f} {r.gap:>11,.2f} {share:>6} "
                     f"{r.predicted_revenue_next:>13,.2f}")
    if profiles is not None and len(profiles):
        lines.append("personas:")
        for r in profiles.sort_values("size", ascending=False).itertuples():
            rev_share = "n/a" if r.revenue_share != r.revenue_share else f"{r.revenue_share:.1%}"
            lines.append(f"  {r.persona_label[:50]:<50} {r.size:>7,} users {r.user_share:>6.1%}  revenue {rev_share:>6}")
    for model, (lineage, m) in champions.items():
        lines.append(f"champion {lineage['model_name']} v{lineage['model_version']} ({lineage['candidate']}): "
                     f"Gini {m['gini']:.3f}, Spearman "
                     f"{m['spearman']:.3f}, RMSE {m['rmse']:.2f}, total error {m['total_error_pct']:+.1f}%")
    return lines

def scoring_lines(result: Mapping) -> list[str]:
    """The closing lines of a scoring run, from its results (jobs.score's ``scoring`` result):
    the summary, then the user model's backtest."""
    fit = result.get("btyd")
    shown = [f"BTYD fitted on {fit['customers']:,} customers ({fit['repeat_customers']:,} repeat)"] if fit else []
    return (shown + summary_lines(result["tables"], result["profiles"], result["champions"])
            + backtest_lines(result["backtest"]))


def _embedded(draw) -> str:
    """One figure drawn by ``draw(ax)``, as an <img> with the PNG inline."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'

def html_page(as_of, result: Mapping, backtest_png: bytes | None = None) -> str:
    """One self-contained HTML page of a scoring run's results: four plots (five with the user
    model's backtest) and the summary."""
    tables, lines = result["tables"], scoring_lines(result)
    syn, rev = tables["synergy_scores"], tables["revenue_metrics"].sort_values("platform")
    top = syn.dropna(subset=["synergy"]).nlargest(12, "synergy").iloc[::-1]
    grow = syn.dropna(subset=["uplift"]).nlargest(12, "uplift").iloc[::-1]

    def synergy(ax):
        ax.barh(top["creator_id"] + " @ " + top["platform"], top["synergy"], color="#4477aa")
        ax.set_xlabel("synergy = Q x E")
        ax.set_title("Top creator x platform synergy")

    def expansion(ax):
        ax.barh(grow["creator_id"] + " -> " + grow["platform"], grow["uplift"], color="#228833")
        ax.set_xlabel("predicted uplift next period (CNY)")
        ax.set_title("Largest expansion opportunities")

    def balance(ax):
        x = range(len(rev))
        ax.bar([i - 0.27 for i in x], rev["r_p"], width=0.27, label="R_P (platform, promotion)", color="#4477aa")
        ax.bar(list(x), rev["sum_r_c"], width=0.27, label="ΣR_C (creators)", color="#ee6677")
        ax.bar([i + 0.27 for i in x], rev["predicted_revenue_next"], width=0.27, label="predicted next period",
               color="#ccbb44")
        ax.set_xticks(list(x), rev["platform"])
        ax.set_ylabel("CNY")
        ax.set_title("Revenue balance per platform")
        ax.legend(fontsize=8)

    def personas(ax):
        bottom = [0.0] * len(rev)
        names = sorted({k for m in rev["predicted_by_persona"] for k, _ in (m.items() if isinstance(m, dict) else m)})
        for name in names:
            values = [dict(m).get(name, 0.0) for m in rev["predicted_by_persona"]]
            ax.bar(rev["platform"], values, bottom=bottom, label=name[:40])
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_ylabel("predicted revenue next period (CNY)")
        ax.set_title("Predicted revenue by persona")
        ax.legend(fontsize=7)

    body = "".join(_embedded(d) for d in (synergy, expansion, balance, personas))
    if backtest_png is not None:  # the plot the training run logged, as it is
        body += f'<img alt="" src="data:image/png;base64,{base64.b64encode(backtest_png).decode()}">'
    text = html.escape("\n".join(lines))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ipsynergy {as_of}</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1600px} img{margin:0.5em}"
            "pre{background:#f6f6f6;padding:1em}</style></head>"
            f"<body><h1>ipsynergy — {as_of}</h1><div>{body}</div><h2>Summary</h2><pre>{text}</pre></body></html>")

def persona_lines(profiles: pd.DataFrame) -> list[str]:
    """The personas of one run, largest first: label, users, user share, revenue share."""
    lines = [f"{'persona':<58} {'users':>7} {'share':>7} {'revenue':>8}"]
    for r in profiles.itertuples():
        rev = "n/a" if r.revenue_share is None or r.revenue_share != r.revenue_share else f"{r.revenue_share:.1%}"
        lines.append(f"{r.persona_label[:58]:<58} {r.size:>7,} {r.user_share:>7.1%} {rev:>8}")
    return lines


def persona_plots(z, names: list[str], sizes: list[int], out: Path) -> list[Path]:
    """The personas run's plots: the centres (z-scores) as a heat map, and the sizes."""
    plt = _pyplot()
    heat, ax = plt.subplots(figsize=(1.0 + 0.55 * z.shape[1], 1.2 + 0.5 * len(names)))
    im = ax.imshow(z.values, cmap="RdBu_r", vmin=-2.5, vmax=2.5, aspect="auto")
    ax.set_xticks(range(z.shape[1]), z.columns, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    heat.colorbar(im, ax=ax, label="centre (z-score)")
    ax.set_title("Persona centres")
    heat.tight_layout()
    bars, bx = plt.subplots(figsize=(7, 1 + 0.45 * len(names)))
    bx.barh(names, sizes, color="#4477aa")
    bx.invert_yaxis()
    bx.set_xlabel("users")
    bx.set_title("Persona sizes")
    bars.tight_layout()
    paths = [out / "persona_centres_z.png", out / "persona_sizes.png"]
    heat.savefig(paths[0], dpi=110)
    bars.savefig(paths[1], dpi=110)
    plt.close("all")
    return paths

def training_plots(actual: np.ndarray, predicted: np.ndarray, folds: list, deciles: pd.DataFrame, title: str,
                   out: Path) -> list[Path]:
    """The training run's plots: predicted vs actual and decile calibration on the test split, and
    each fold's loss curve."""
    plt = _pyplot()
    paths = [out / "predicted_vs_actual.png", out / "decile_calibration.png", out / "loss_curve.png"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(np.log1p(np.clip(actual, 0, None)), np.log1p(predicted), s=6, alpha=0.35, color="#4477aa")
    top = max(np.log1p(np.clip(actual, 0, None)).max(), np.log1p(predicted).max()) * 1.02
    ax.plot([0, top], [0, top], color="#888", lw=1)
    ax.set_xlabel("actual revenue, ln(1 + x)")
    ax.set_ylabel("predicted revenue, ln(1 + x)")
    ax.set_title(f"{title}: predicted vs actual (test)")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    pos = deciles["decile"].to_numpy()
    ax.bar(pos - 0.2, deciles["mean_predicted"], width=0.4, label="predicted", color="#4477aa")
    ax.bar(pos + 0.2, deciles["mean_actual"], width=0.4, label="actual", color="#ee6677")
    ax.set_xticks(pos)
    ax.set_xlabel("decile of predicted revenue")
    ax.set_ylabel("mean revenue")
    ax.set_title(f"{title}: decile calibration (test)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, f in enumerate(folds):
        epochs = [h[0] for h in f.history]
        line, = ax.plot(epochs, [h[1] for h in f.history], lw=1, label=f"fold {k} train")
        ax.plot(epochs, [h[2] for h in f.history], lw=1, ls="--", color=line.get_color(), label=f"fold {k} held out")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (weighted, per row)")
    ax.set_title(f"{title}: loss")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close("all")
    return paths

def backtest_figure(table: pd.DataFrame, title: str, out: Path) -> Path:
    """Predicted (each model) and realised revenue on the held-out horizon, by decile and by
    acquisition cohort."""
    plt = _pyplot()
    models = [c for c in table.columns if c.startswith("predicted_")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, segment, label in ((axes[0], "decile", "decile of predicted revenue"),
                               (axes[1], "cohort", "acquisition cohort (month of first activity)")):
        rows = table[table["segment"] == segment].sort_values("group")
        pos = np.arange(len(rows))
        width = 0.8 / (1 + len(models))
        ax.bar(pos, rows["actual"], width=width, label="actual", color="#ee6677")
        for i, m in enumerate(models, start=1):
            ax.bar(pos + i * width, rows[m], width=width, label=m.removeprefix("predicted_"))
        ax.set_xticks(pos + width * len(models) / 2, rows["group"], rotation=45, fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("revenue in the held-out horizon (total)")
    axes[0].legend()
    fig.suptitle(f"{title}: backtest on the held-out horizon")
    fig.tight_layout()
    path = out / "backtest.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
