"""danlu.lab.report on hand-made records: the expected deltas, p-values and Holm family are
computed independently here with numpy/scipy and a textbook Holm loop."""

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import t as t_dist
from scipy.stats import ttest_rel
from statsmodels.stats.weightstats import ttost_paired

from danlu.lab.report import build_report, render_markdown, write_report

BASE = [0.800, 0.820, 0.780, 0.810]
STEP_BASE = [0.830, 0.845, 0.800, 0.835]  # base given the steps of eda
ARMS = {
    "fgm": [0.830, 0.850, 0.805, 0.845],
    "ema": [0.805, 0.818, 0.784, 0.812],
    "fgm+ema": [0.840, 0.852, 0.812, 0.851],
    "eda": [0.815, 0.830, 0.790, 0.826],
}
WALL = {"base": 10.0, "fgm": 20.0, "ema": 10.5, "fgm+ema": 21.0, "eda": 40.0}


def rec(
    combo,
    seed,
    acc,
    n_train=500,
    match=None,
    steps_match=None,
    steps=100,
    wall=10.0,
    mem=100.0,
    best_epoch=2,
    task="snownlp",
):
    return {
        "task": task,
        "combo": combo,
        "seed": seed,
        "n_train": n_train,
        "match": match,
        "steps_match": steps_match,
        "metrics": {"accuracy": acc, "macro_f1": acc - 0.05},
        "dev": {"accuracy": acc + 0.01},
        "best_epoch": best_epoch,
        "epochs": [{"epoch": e, "steps": e * steps // 3} for e in (1, 2, 3)],
        "steps": steps,
        "wall_s": wall,
        "peak_mem_mb": mem,
        "smoke": False,
        "danlu": "0.1.0",
    }


def grid(n_train=500, arms=ARMS):
    records = []
    for seed in range(4):
        # base still improving (best epoch == last epoch) in seeds 0 and 1
        records.append(rec("base", seed, BASE[seed], n_train, best_epoch=3 if seed < 2 else 2))
        records.append(
            rec("base", seed, STEP_BASE[seed], n_train, match="eda", steps=500, wall=40.0)
        )
        for combo, accs in arms.items():
            eda = combo == "eda"
            records.append(
                rec(
                    combo,
                    seed,
                    accs[seed],
                    n_train,
                    steps_match="eda" if eda else None,
                    steps=500 if eda else 100,
                    wall=WALL[combo],
                    mem=150.0 if "fgm" in combo else 100.0,
                )
            )
    return records


def textbook_holm(p):
    m, adjusted, running = len(p), [0.0] * len(p), 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def expected_family():
    """(combo, baseline, delta values) of every comparison, p and Holm p, computed here."""
    pairs = [(c, "base", np.subtract(a, BASE), ttest_rel(a, BASE).pvalue) for c, a in ARMS.items()]
    pairs.append(
        (
            "eda",
            "step",
            np.subtract(ARMS["eda"], STEP_BASE),
            ttest_rel(ARMS["eda"], STEP_BASE).pvalue,
        )
    )
    holm_p = textbook_holm([p for *_, p in pairs])
    return [(c, b, d, p, h) for (c, b, d, p), h in zip(pairs, holm_p)]


def comparisons(report):
    return {
        (row.combo, "base" if c.baseline == "base" else "step"): c
        for row in report.tables[0].rows
        for c in row.comparisons
    }


def test_deltas_p_values_and_holm_over_the_whole_family():
    got = comparisons(build_report(grid()))
    family = expected_family()
    assert set(got) == {(c, b) for c, b, *_ in family}
    for combo, baseline, deltas, p, p_holm in family:
        c = got[(combo, baseline)]
        assert c.delta.n == 4
        assert c.delta.mean == pytest.approx(deltas.mean())
        assert c.delta.p == pytest.approx(p)
        assert c.p_holm == pytest.approx(p_holm)
        assert c.delta.boot_low <= c.delta.mean <= c.delta.boot_high
    # the step-matched comparison is part of the family: a 4-member Holm gives another p
    without = textbook_holm([p for c, b, _, p, _ in family if b == "base"])
    assert got[("fgm", "base")].p_holm != pytest.approx(without[0])


def test_verdict_words_and_baselines():
    got = comparisons(build_report(grid()))
    assert got[("fgm", "base")].verdict == "helps"
    assert got[("fgm+ema", "base")].verdict == "helps"
    # ema moved by +0.2 points: the paired TOST says it is within the ±1 point margin
    assert got[("ema", "base")].verdict == "equivalent within ±1.0"
    d = np.subtract(ARMS["ema"], BASE)
    tost = [ttost_paired(np.subtract(ARMS[c], BASE), np.zeros(4), -0.01, 0.01)[0] for c in ARMS]
    tost.append(ttost_paired(np.subtract(ARMS["eda"], STEP_BASE), np.zeros(4), -0.01, 0.01)[0])
    assert got[("ema", "base")].p_eq_holm == pytest.approx(textbook_holm(tost)[1])
    assert got[("ema", "base")].p_fresh == pytest.approx(
        t_dist.cdf(d.mean() / (d.std(ddof=1) * np.sqrt(1 + 1 / 4)), 3))
    assert got[("eda", "base")].verdict == "helps"
    assert got[("eda", "step")].verdict == "hurts"  # the gain came from the extra steps
    assert got[("eda", "step")].baseline == "base (step-matched, 500 steps)"


def test_table_rows_numbers_and_cost_ratios():
    report = build_report(grid())
    table = report.tables[0]
    assert report.task == "snownlp" and report.seeds == (0, 1, 2, 3) and report.scale == 100
    assert [(r.combo, r.match) for r in table.rows] == [
        ("base", None),
        ("base", "eda"),
        ("fgm", None),
        ("ema", None),
        ("fgm+ema", None),
        ("eda", None),
    ]
    fgm = table.rows[2]
    assert fgm.summary.mean == pytest.approx(np.mean(ARMS["fgm"]))
    assert fgm.summary.std == pytest.approx(np.std(ARMS["fgm"], ddof=1))
    assert (fgm.time_ratio, fgm.mem_ratio, fgm.steps_ratio) == pytest.approx((2.0, 1.5, 1.0))
    assert table.rows[5].steps_ratio == pytest.approx(5.0)

    md = render_markdown(report)
    d = np.mean(np.subtract(ARMS["fgm"], BASE)) * 100
    s = np.std(ARMS["fgm"], ddof=1) * 100
    fgm_line = next(line for line in md.splitlines() if line.startswith("| fgm "))
    assert f"{np.mean(ARMS['fgm']) * 100:.1f} ± {s:.1f}" in fgm_line
    assert f"{d:+.1f} [" in fgm_line and "| helps " in fgm_line and "| 2.00 " in fgm_line
    assert "↳ vs base (step-matched, 500 steps)" in md
    assert "- **eda** vs base (step-matched, 500 steps): **hurts**" in md
    assert "- **ema** vs base: **equivalent within ±1.0**" in md
    assert "nan" not in md


def test_interaction_line_picks_the_better_single():
    (it,) = build_report(grid()).tables[0].interactions
    assert (it.stack, it.singles, it.best_single) == ("fgm+ema", ("fgm", "ema"), "fgm")
    assert it.delta.mean == pytest.approx(np.mean(np.subtract(ARMS["fgm+ema"], ARMS["fgm"])))
    assert it.delta.p == pytest.approx(ttest_rel(ARMS["fgm+ema"], ARMS["fgm"]).pvalue)
    assert it.words == "fgm+ema beats the better of fgm, ema alone (fgm)"

    better_ema = dict(ARMS, ema=[0.845, 0.850, 0.815, 0.850])  # now ema is the better single
    (it,) = build_report(grid(arms=better_ema)).tables[0].interactions
    assert it.best_single == "ema"
    assert it.p_holm == pytest.approx(ttest_rel(ARMS["fgm+ema"], better_ema["ema"]).pvalue)
    assert it.words.startswith("fgm+ema: no detectable difference from the better single, ema")


def test_still_improving_flag_counts_base_seeds():
    md = render_markdown(build_report(grid()))
    assert (
        "base was still improving at its last epoch in 2 of 4 seeds: train longer (--epochs)" in md
    )
    done = [dict(r, best_epoch=1) for r in grid()]
    assert "still improving" not in render_markdown(build_report(done))


def test_one_table_per_n_train_in_order_of_appearance_and_base_first():
    records = [r for r in grid(n_train=None) if r["combo"] != "base"] + grid(n_train=None)[:1]
    records = grid(n_train=200) + [r for r in records if r["seed"] == 0]
    report = build_report(records)
    assert [t.n_train for t in report.tables] == [200, None]
    assert report.tables[1].rows[0].combo == "base"  # base first although its record came last
    (row,) = [r for r in report.tables[1].rows if r.combo == "fgm"]
    assert row.comparisons == () and "fgm shares 1 usable seed(s) with base: no test" in report.tables[1].flags
    assert "eda takes more steps (eda) but no step-matched base was run" in report.tables[1].flags
    md = render_markdown(report)
    assert md.index("n_train = 200") < md.index("full training pool")
    assert "nan" not in md


def test_metric_option():
    report = build_report(grid(), metric="macro_f1")
    row = report.tables[0].rows[2]
    assert row.summary.mean == pytest.approx(np.mean(ARMS["fgm"]) - 0.05)
    assert "macro_f1 mean ± std" in render_markdown(report)


def test_refusals():
    with pytest.raises(ValueError, match="no result records"):
        build_report([])
    with pytest.raises(ValueError, match=r"mix 2 tasks \['snownlp', 'rt'\]"):
        build_report(grid() + [rec("base", 9, 0.7, task="rt")])
    with pytest.raises(ValueError, match="add base to --combos"):
        build_report([r for r in grid() if r["combo"] != "base"])
    with pytest.raises(ValueError, match=r"metric 'f2' is missing .* \['accuracy', 'macro_f1'\]"):
        build_report(grid(), metric="f2")


def test_duplicate_cells_warn_and_keep_the_first():
    records = grid()
    with pytest.warns(UserWarning, match="duplicate cell combo='fgm' seed=0"):
        report = build_report(records + [dict(records[2], metrics={"accuracy": 0.1})])
    assert comparisons(report)[("fgm", "base")].delta.mean == pytest.approx(0.03)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_write_report_files_pngs_and_deterministic_rerender(tmp_path):
    write_jsonl(tmp_path / "results.jsonl", grid())
    md = write_report(tmp_path)
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == md
    assert md.startswith("# danlu lab: snownlp") and "How to read a verdict" in md
    for name in ("deltas.png", "cost.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert write_report(tmp_path) == md  # same JSONL, same bootstrap, same markdown


def test_write_report_refuses_an_empty_results_file(tmp_path):
    (tmp_path / "results.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="results.jsonl is missing or empty"):
        write_report(tmp_path)


def test_import_does_not_load_matplotlib_or_scipy():
    code = (
        "import sys, danlu.lab.report; "
        "print(sorted(m for m in ('matplotlib', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_single_seed_report_has_no_nan_and_no_verdict():
    md = render_markdown(build_report([r for r in grid() if r["seed"] == 0]))
    assert "shares 1 usable seed(s) with base: no test" in md and "nan" not in md and "1 seed (0)" in md
    assert not any(f"| {word} " in md or f": {word} (" in md for word in ("helps", "hurts"))


def test_no_interaction_without_every_single_and_unpaired_flags():
    no_ema = {k: v for k, v in ARMS.items() if k != "ema"}
    assert build_report(grid(arms=no_ema)).tables[0].interactions == ()
    records = grid() + [rec("swa", 7, 0.8)]  # a seed base never ran
    table = build_report(records).tables[0]
    assert "swa shares 0 usable seed(s) with base: no test" in table.flags
    assert [r.comparisons for r in table.rows if r.combo == "swa"] == [()]


def test_smoke_runs_are_labelled():
    md = render_markdown(build_report([dict(r, smoke=True) for r in grid()]))
    assert "**Smoke run**" in md
    assert "Smoke" not in render_markdown(build_report(grid()))


def test_time_ratio_uses_training_time_when_recorded():
    records = []
    for seed in range(3):
        for combo, train_s in (("base", 4.0), ("fgm", 8.0)):
            r = rec(combo, seed, 0.8 + 0.01 * seed, wall=20.0)  # same wall: eval dominates
            records.append({**r, "train_s": train_s})
    table = build_report(records).tables[0]
    assert [row.time_ratio for row in table.rows] == pytest.approx([1.0, 2.0])


def test_diverged_cells_are_listed_and_left_out_pairwise():
    records = grid()
    for r in records:
        if (r["combo"], r["seed"], r["match"]) == ("fgm", 0, None):
            r["diverged"] = "non-finite training loss"
    table = build_report(records).tables[0]
    got = {(row.combo, c.baseline): c for row in table.rows for c in row.comparisons}
    fgm = got[("fgm", "base")]
    assert fgm.delta.n == 3
    assert fgm.delta.mean == pytest.approx(np.mean(np.subtract(ARMS["fgm"], BASE)[1:]))
    assert got[("ema", "base")].delta.n == 4  # only fgm's pair loses seed 0
    assert table.diverged == ("fgm seed 0: non-finite training loss",)
    assert "Diverged runs (rule fixed before the run" in render_markdown(build_report(records))


def test_undecided_lines_give_the_detectable_effect_and_the_seeds_needed():
    from danlu.lab.stats import detectable_effect, seeds_needed

    noisy = dict(ARMS, ema=[0.78, 0.85, 0.77, 0.83])  # deltas -2, +3, -1, +2 points
    report = build_report(grid(arms=noisy))
    (ema,) = [c for row in report.tables[0].rows if row.combo == "ema" for c in row.comparisons]
    d = np.subtract(noisy["ema"], BASE)
    assert ema.verdict == "undecided at n=4 seeds"
    assert ema.detectable == pytest.approx(detectable_effect(d.std(ddof=1), 4, 0.05 / 5))
    assert ema.needed == seeds_needed(0.01, d.std(ddof=1), 0.05 / 5)
    assert f"detecting ±1.0 points needs about {ema.needed} seeds" in render_markdown(report)


def test_flat_deltas_are_explained():
    flat = dict(ARMS, ema=[b + 0.005 for b in BASE])  # every seed +0.5 points
    md = render_markdown(build_report(grid(arms=flat)))
    assert "All 4 seeds moved by the same Δ" in md and "sign-flip = 0.125" in md
