//! `eval report`: the Bradley–Terry fit against scikit-learn's (fixtures from
//! scripts/gen_bt_fixtures.py), the bootstrap, pair counting, kappa, per-set tables, the files
//! written, and the chart's PNG having visible labels.
use std::path::{Path, PathBuf};

use koala_eval::report::{ReportOptions, agreement, build, chart, read_ratings};
use koala_eval::{RatingRow, Side, Winner};

/// Largest allowed difference from scikit-learn's ratings, in Elo points.
const ELO_TOL: f64 = 0.05;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bt")
        .join(name)
}

fn row(prompt: &str, a: &str, b: &str, w: Winner, rater: &str) -> RatingRow {
    RatingRow {
        prompt_id: prompt.into(),
        system_a: a.into(),
        system_b: b.into(),
        winner: w,
        rater: rater.into(),
        left: Side::A,
        ts: 0,
        set: None,
    }
}

#[test]
fn bradley_terry_matches_scikit_learn() {
    for name in ["five_systems", "two_systems", "twelve_systems"] {
        let rows = read_ratings(&[fixture(&format!("{name}.jsonl"))]).unwrap();
        let exp: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("{name}.expected.json"))).unwrap(),
        )
        .unwrap();
        let opts = ReportOptions {
            bootstrap: 20,
            seed: 1,
        };
        let report = build(&rows, &opts).unwrap();
        let want = exp["ratings"].as_object().unwrap();
        assert_eq!(report.systems.len(), want.len(), "{name}");
        let mut worst: f64 = 0.0;
        for s in &report.systems {
            let w = want[&s.name].as_f64().unwrap();
            worst = worst.max((s.rating - w).abs());
            assert!(
                (s.rating - w).abs() < ELO_TOL,
                "{name}: {} ours {} sklearn {w}",
                s.name,
                s.rating
            );
            assert!(
                s.ci_low <= s.rating && s.rating <= s.ci_high,
                "{name}: {s:?}"
            );
        }
        eprintln!("{name}: largest difference from sklearn {worst:.2e} Elo");
        let mean = report.systems.iter().map(|s| s.rating).sum::<f64>() / want.len() as f64;
        assert!((mean - 1000.0).abs() < 1e-6, "{name}: mean {mean}");
        let rates = exp["win_rate"].as_object().unwrap();
        assert_eq!(report.pairs.len(), rates.len());
        for p in &report.pairs {
            let w = rates[&format!("{}|{}", p.a, p.b)].as_f64().unwrap();
            assert!((p.win_rate_a - w).abs() < 1e-12, "{name}: {p:?} vs {w}");
            assert!(p.a < p.b);
            assert!(
                p.ci_low <= p.win_rate_a && p.win_rate_a <= p.ci_high,
                "{p:?}"
            );
        }
    }
}

#[test]
fn bootstrap_is_seeded_and_sized_like_the_data() {
    let rows = read_ratings(&[fixture("five_systems.jsonl")]).unwrap();
    let o = |seed| ReportOptions {
        bootstrap: 100,
        seed,
    };
    let a = build(&rows, &o(7)).unwrap();
    let b = build(&rows, &o(7)).unwrap();
    let c = build(&rows, &o(8)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.systems, c.systems);
    // 2000 battles among 5 systems: about 800 each, so a 95% interval is some tens of points wide,
    // not zero and not hundreds.
    for s in &a.systems {
        let w = s.ci_high - s.ci_low;
        assert!((10.0..120.0).contains(&w), "{s:?}");
    }
    // The same seed gives the same interval whatever rayon's thread count.
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| build(&rows, &o(7)).unwrap());
    assert_eq!(one, a);
}

#[test]
fn pairs_are_counted_from_the_name_first_side() {
    let rows = vec![
        row("p1", "koala", "alpaca", Winner::A, "ann"),
        row("p2", "alpaca", "koala", Winner::B, "ann"),
        row("p3", "alpaca", "koala", Winner::A, "ann"),
        row("p4", "koala", "alpaca", Winner::BothBad, "ann"),
        row("p5", "alpaca", "koala", Winner::Tie, "ann"),
    ];
    let r = build(&rows, &ReportOptions::default()).unwrap();
    let p = &r.pairs[0];
    assert_eq!((p.a.as_str(), p.b.as_str()), ("alpaca", "koala"));
    assert_eq!((p.wins_a, p.ties, p.wins_b), (1, 2, 2));
    assert!((p.win_rate_a - 2.0 / 5.0).abs() < 1e-12);
    assert_eq!(r.systems[0].name, "koala");
    assert_eq!(r.systems[0].battles, 5);
}

#[test]
fn kappa_between_people_and_against_the_judge() {
    use Winner::*;
    // Four items, two people: they agree on three (A, B, Tie) and disagree on one (A vs B).
    // Symmetric table over 8 ordered pairs: diag A:2, B:2, T:2; off A-B:1, B-A:1.
    // p_o = 6/8; marginals A 3/8, B 3/8, T 2/8 → p_e = 18/64 + 4/64 = 22/64.
    let mut rows = vec![];
    for (k, (x, y)) in [(A, A), (B, B), (Tie, BothBad), (A, B)]
        .into_iter()
        .enumerate()
    {
        let p = format!("p{k}");
        rows.push(row(&p, "x", "y", x, "ann"));
        // Bob saw the pair the other way round; his verdict is mirrored.
        let mirrored = match y {
            A => B,
            B => A,
            other => other,
        };
        rows.push(row(&p, "y", "x", mirrored, "bob"));
    }
    // The judge agrees with ann on p0 and p1 and calls a tie on p2 and p3.
    for (k, v) in [A, B, Tie, Tie].into_iter().enumerate() {
        rows.push(row(&format!("p{k}"), "x", "y", v, "judge:gpt-4"));
    }
    let ag = agreement(&rows);
    let hh = ag.human_human.unwrap();
    assert_eq!((hh.comparisons, hh.items), (8, 4));
    assert!((hh.observed - 0.75).abs() < 1e-12);
    let pe = 22.0 / 64.0;
    assert!((hh.kappa.unwrap() - (0.75 - pe) / (1.0 - pe)).abs() < 1e-12);
    // Judge vs people: ann A,B,T,A and bob A,B,T,B against the judge's A,B,T,T: 6 of 8 agree.
    let hj = ag.human_judge.unwrap();
    assert_eq!((hj.comparisons, hj.items), (8, 4));
    assert!((hj.observed - 0.75).abs() < 1e-12);
    // People's marginals A 3/8, B 3/8, T 2/8; the judge's A 2/8, B 2/8, T 4/8.
    let pe = (3.0 * 2.0 + 3.0 * 2.0 + 2.0 * 4.0) / 64.0;
    assert!((hj.kappa.unwrap() - (0.75 - pe) / (1.0 - pe)).abs() < 1e-12);
    // Only one kind of rater: no kappa.
    let people: Vec<RatingRow> = rows
        .iter()
        .filter(|r| !r.rater.starts_with("judge:"))
        .cloned()
        .collect();
    assert!(agreement(&people).human_judge.is_none());
}

#[test]
fn per_set_tables_and_the_files_written() {
    let rows = read_ratings(&[fixture("five_systems.jsonl")]).unwrap();
    let r = build(
        &rows,
        &ReportOptions {
            bootstrap: 30,
            seed: 3,
        },
    )
    .unwrap();
    let sets: Vec<&str> = r.per_set.iter().map(|s| s.set.as_str()).collect();
    assert_eq!(sets, ["koala", "self-instruct"]);
    assert_eq!(
        r.per_set.iter().map(|s| s.battles).sum::<u64>(),
        rows.len() as u64
    );
    for s in &r.per_set {
        assert_eq!(s.systems.len(), 5);
    }
    let dir = tempfile::tempdir().unwrap();
    let written = r.write(dir.path()).unwrap();
    assert_eq!(written.len(), 4);
    // The notebook view: the rating table, then the same chart as winrates.svg, inline.
    let html = r.to_html().unwrap();
    let svg = std::fs::read_to_string(dir.path().join("winrates.svg")).unwrap();
    assert!(
        html.ends_with(&format!("{svg}</div>")),
        "the chart is not winrates.svg"
    );
    for s in &r.systems {
        assert!(
            html.contains(&format!(
                "<td>{}</td><td style=\"text-align:right\">{:.1}</td>",
                s.name, s.rating
            )),
            "{} is not in the table",
            s.name
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    for key in ["name", "rating", "ci_low", "ci_high", "battles"] {
        assert!(json["systems"][0].get(key).is_some(), "{key}");
    }
    for key in [
        "a",
        "b",
        "wins_a",
        "ties",
        "wins_b",
        "win_rate_a",
        "ci_low",
        "ci_high",
    ] {
        assert!(json["pairs"][0].get(key).is_some(), "{key}");
    }
    assert!(json["agreement"]["human_human"]["kappa"].is_number());
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("| 1 | chatgpt |"), "{md}");
    assert!(md.contains("## Eval set `self-instruct`"));
    let svg = std::fs::read_to_string(dir.path().join("winrates.svg")).unwrap();
    assert!(svg.contains("alpaca vs chatgpt (n="), "labels in the SVG");
    assert!(svg.contains("first system wins"), "legend in the SVG");
}

/// Dark pixels in a rectangle of an RGB(A) PNG.
fn dark_pixels(
    path: &Path,
    x: std::ops::Range<u32>,
    y: std::ops::Range<u32>,
) -> (usize, (u32, u32)) {
    koala_chart::dark_pixels(path, x, y).unwrap()
}

#[test]
fn png_labels_are_drawn() {
    let rows = read_ratings(&[fixture("five_systems.jsonl")]).unwrap();
    let r = build(
        &rows,
        &ReportOptions {
            bootstrap: 10,
            seed: 0,
        },
    )
    .unwrap();
    // KOALA_REPORT_KEEP=DIR keeps a full report there, to look at the chart.
    if let Ok(keep) = std::env::var("KOALA_REPORT_KEEP") {
        r.write(Path::new(&keep)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("w.png");
    chart::write_png(&r.pairs, "title", &png).unwrap();
    let l = chart::layout(&r.pairs).unwrap();
    let (_, size) = dark_pixels(&png, 0..1, 0..1);
    assert_eq!(size, l.size);
    // Each row's label area (left of the bars) holds text.
    for k in 0..r.pairs.len() as u32 {
        let y0 = (l.rows_y0 + k as i32 * l.row_height) as u32;
        let (n, _) = dark_pixels(&png, 0..(l.bar_x0 - 4) as u32, y0..y0 + l.row_height as u32);
        assert!(n > 60, "row {k}: only {n} dark pixels in the label area");
    }
    // The title is drawn too.
    let (n, _) = dark_pixels(&png, 0..l.size.0, 0..40);
    assert!(n > 20, "title: {n}");
}

#[test]
fn bad_input_is_an_error_that_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ratings.jsonl");
    let good = serde_json::to_string(&row("p", "x", "y", Winner::A, "ann")).unwrap();
    std::fs::write(&p, format!("{good}\n{good}\n{{\"winner\":\"c\"}}\n")).unwrap();
    let e = read_ratings(&[p]).unwrap_err().to_string();
    assert!(e.contains("ratings.jsonl:3:"), "{e}");
    let e = build(
        &[row("p", "x", "x", Winner::A, "ann")],
        &ReportOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("with itself"), "{e}");
    assert!(build(&[], &ReportOptions::default()).is_err());
    let zero = ReportOptions {
        bootstrap: 0,
        seed: 0,
    };
    assert!(build(&[row("p", "x", "y", Winner::A, "a")], &zero).is_err());
}
