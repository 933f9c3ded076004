//! The read matrix's CSV -> reads.md + one SVG per workload.
//!
//! Each (system, workload, consistency, client model, clients) point may have
//! been measured several times (the `rep` column); every figure shown is the
//! median over those repetitions, taken metric by metric. etcd is compared
//! at its best: for each client count, the client model (one connection per
//! logical client, or K shared) with the highest median throughput, and
//! separately the one with the lowest median p50.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::report::{fmt_f, machine_lines, Row};
use crate::svg::{self, Series};

/// Issue 13's throughput target: ours linearizable ≥ this × etcd's
/// linearizable at the largest client count.
const THROUGHPUT_TARGET: f64 = 5.0;
/// Issue 13's latency target: ours 1-client p50 ≤ this × etcd's.
const P50_TARGET: f64 = 0.5;

/// Medians over the repetitions of one point.
#[derive(Clone, Debug)]
pub struct Agg {
    pub reps: usize,
    pub conns: usize,
    pub ops_per_sec: f64,
    pub ops_min: f64,
    pub ops_max: f64,
    pub get_p50_ms: f64,
    pub get_p99_ms: f64,
    pub put_p50_ms: f64,
    pub put_p99_ms: f64,
    pub gen_cpu: f64,
    pub server_cpu: f64,
    pub other_cpu: f64,
    pub errors: u64,
    pub get_empty: u64,
    /// Puts as a share of all operations in the window.
    pub put_share: f64,
    /// The per-repetition throughputs, in rep order.
    pub per_rep_ops: Vec<f64>,
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn aggregate(rows: &[&Row]) -> Agg {
    let col = |f: fn(&Row) -> f64| median(rows.iter().map(|r| f(r)).collect());
    let mut by_rep: Vec<(u32, f64)> = rows.iter().map(|r| (r.rep, r.ops_per_sec)).collect();
    by_rep.sort_by_key(|(rep, _)| *rep);
    Agg {
        reps: rows.len(),
        conns: rows[0].conns,
        ops_per_sec: col(|r| r.ops_per_sec),
        ops_min: rows
            .iter()
            .map(|r| r.ops_per_sec)
            .fold(f64::INFINITY, f64::min),
        ops_max: rows.iter().map(|r| r.ops_per_sec).fold(0.0, f64::max),
        get_p50_ms: col(|r| r.get_p50_ms),
        get_p99_ms: col(|r| r.get_p99_ms),
        put_p50_ms: col(|r| r.put_p50_ms),
        put_p99_ms: col(|r| r.put_p99_ms),
        gen_cpu: col(|r| r.gen_cpu),
        server_cpu: col(|r| r.server_cpu),
        other_cpu: col(|r| r.other_cpu),
        errors: rows.iter().map(|r| r.errors).sum(),
        get_empty: rows.iter().map(|r| r.get_empty).sum(),
        put_share: col(|r| r.put_ops as f64 / (r.put_ops + r.get_ops).max(1) as f64),
        per_rep_ops: by_rep.into_iter().map(|(_, o)| o).collect(),
    }
}

/// (target, workload, consistency, conns, clients) -> medians.
type Key = (String, String, String, usize, usize);

pub struct Matrix {
    points: BTreeMap<Key, Agg>,
}

impl Matrix {
    pub fn new(rows: &[Row]) -> Self {
        let mut groups: BTreeMap<Key, Vec<&Row>> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.workload != "put") {
            groups
                .entry((
                    r.target.clone(),
                    r.workload.clone(),
                    r.consistency.clone(),
                    r.conns,
                    r.clients,
                ))
                .or_default()
                .push(r);
        }
        Matrix {
            points: groups
                .into_iter()
                .map(|(k, rs)| (k, aggregate(&rs)))
                .collect(),
        }
    }

    fn models<'a>(
        &'a self,
        target: &'a str,
        workload: &'a str,
        consistency: &'a str,
        clients: usize,
    ) -> impl Iterator<Item = &'a Agg> + 'a {
        self.points
            .iter()
            .filter(move |((t, w, c, _, n), _)| {
                t == target && w == workload && c == consistency && *n == clients
            })
            .map(|(_, a)| a)
    }

    /// The client model with the highest median throughput.
    pub fn best_ops<'a>(
        &'a self,
        target: &'a str,
        workload: &'a str,
        consistency: &'a str,
        clients: usize,
    ) -> Option<&'a Agg> {
        self.models(target, workload, consistency, clients)
            .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec))
    }

    /// The client model with the lowest median Get p50.
    pub fn best_p50<'a>(
        &'a self,
        target: &'a str,
        workload: &'a str,
        consistency: &'a str,
        clients: usize,
    ) -> Option<&'a Agg> {
        self.models(target, workload, consistency, clients)
            .filter(|a| a.get_p50_ms.is_finite())
            .min_by(|a, b| a.get_p50_ms.total_cmp(&b.get_p50_ms))
    }

    fn clients(&self, workload: &str) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .points
            .keys()
            .filter(|k| k.1 == workload)
            .map(|k| k.4)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn workloads(&self) -> Vec<String> {
        let mut v: Vec<String> = self.points.keys().map(|k| k.1.clone()).collect();
        v.sort_by_key(|w| if w == "read" { 0 } else { 1 });
        v.dedup();
        v
    }
}

/// The columns of the main table, in order: (label, target, consistency).
const COLUMNS: [(&str, &str, &str); 5] = [
    ("ours linearizable", "ours", "linearizable"),
    ("ours lease", "ours", "lease"),
    ("ours local", "ours", "local"),
    ("etcd linearizable", "etcd", "linearizable"),
    ("etcd serializable", "etcd", "local"),
];

fn model_name(a: &Agg, clients: usize) -> String {
    if a.conns >= clients {
        "1 conn/client".into()
    } else {
        format!("{} shared conns", a.conns)
    }
}

fn workload_title(w: &str) -> &str {
    match w {
        "read" => "read-only (Gets of preloaded keys)",
        "mixed90" => "mixed: 90% Gets / 10% Puts",
        other => other,
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}×"))
}

/// One workload's main table.
fn main_table(out: &mut String, m: &Matrix, w: &str) -> Result<()> {
    writeln!(out, "\n### {}\n", workload_title(w))?;
    writeln!(
        out,
        "Throughput is every operation completed in the window{}; p50 is the Gets' median latency. Medians over repetitions; etcd columns show its best client model for that point (named beside the number when it is not one connection per client).\n",
        if w == "mixed90" { " (Gets and Puts)" } else { "" }
    )?;
    let mut head = String::from("| clients |");
    let mut rule = String::from("|---:|");
    for (label, _, _) in COLUMNS {
        write!(head, " {label} ops/s | p50 ms |")?;
        rule.push_str("---:|---:|");
    }
    head.push_str(" ours lin ÷ etcd lin (ops/s) | ours lin ÷ etcd lin (p50) | ours local ÷ etcd serializable (ops/s) |");
    rule.push_str("---:|---:|---:|");
    writeln!(out, "{head}\n{rule}")?;
    for n in m.clients(w) {
        let mut line = format!("| {n} |");
        for (_, t, c) in COLUMNS {
            let ops = m.best_ops(t, w, c, n);
            let p50 = m.best_p50(t, w, c, n);
            let note = |a: Option<&Agg>| match a {
                Some(a) if t == "etcd" && a.conns < n => format!(" ({})", model_name(a, n)),
                _ => String::new(),
            };
            write!(
                line,
                " {}{} | {}{} |",
                fmt_f(ops.map(|a| a.ops_per_sec), 0),
                note(ops),
                fmt_f(p50.map(|a| a.get_p50_ms), 3),
                note(p50),
            )?;
        }
        let ops = |t, c| m.best_ops(t, w, c, n).map(|a| a.ops_per_sec);
        let p50 = |t, c| m.best_p50(t, w, c, n).map(|a| a.get_p50_ms);
        write!(
            line,
            " {} | {} | {} |",
            fmt_ratio(ratio(
                ops("ours", "linearizable"),
                ops("etcd", "linearizable")
            )),
            fmt_ratio(ratio(
                p50("ours", "linearizable"),
                p50("etcd", "linearizable")
            )),
            fmt_ratio(ratio(ops("ours", "local"), ops("etcd", "local"))),
        )?;
        writeln!(out, "{line}")?;
    }
    Ok(())
}

pub(crate) fn hit(ok: bool) -> &'static str {
    if ok {
        "**HIT**"
    } else {
        "**MISS**"
    }
}

/// The two targets of issue 13 for one workload.
fn targets(out: &mut String, m: &Matrix, w: &str) -> Result<()> {
    let clients = m.clients(w);
    let (Some(&lo), Some(&hi)) = (clients.first(), clients.last()) else {
        return Ok(());
    };
    let ours = m.best_ops("ours", w, "linearizable", hi);
    let etcd = m.best_ops("etcd", w, "linearizable", hi);
    match (ours, etcd) {
        (Some(o), Some(e)) if e.ops_per_sec > 0.0 => {
            let r = o.ops_per_sec / e.ops_per_sec;
            // The least favourable pairing of repetitions: our slowest
            // against etcd's fastest (its best model).
            let worst = o.ops_min / e.ops_max;
            writeln!(
                out,
                "- {} throughput at {hi} clients, ours linearizable ≥ {THROUGHPUT_TARGET}× etcd linearizable: {:.0} vs {:.0} ops/s ({}) = **{r:.2}×** → {} (least favourable pairing of repetitions, our slowest vs etcd's fastest: {worst:.2}×; per repetition ours {:?}, etcd {:?})",
                workload_title(w),
                o.ops_per_sec,
                e.ops_per_sec,
                model_name(e, hi),
                hit(r >= THROUGHPUT_TARGET),
                o.per_rep_ops.iter().map(|x| x.round()).collect::<Vec<_>>(),
                e.per_rep_ops.iter().map(|x| x.round()).collect::<Vec<_>>(),
            )?;
        }
        _ => writeln!(
            out,
            "- {} throughput at {hi} clients: not measured for both systems",
            workload_title(w)
        )?,
    }
    let ours = m.best_p50("ours", w, "linearizable", lo);
    let etcd = m.best_p50("etcd", w, "linearizable", lo);
    match (ours, etcd) {
        (Some(o), Some(e)) if e.get_p50_ms > 0.0 => {
            let r = o.get_p50_ms / e.get_p50_ms;
            writeln!(
                out,
                "- {} Get p50 at {lo} client, ours linearizable ≤ {P50_TARGET}× etcd linearizable: {:.3} vs {:.3} ms = **{r:.2}×** → {}",
                workload_title(w),
                o.get_p50_ms,
                e.get_p50_ms,
                hit(r <= P50_TARGET),
            )?;
        }
        _ => writeln!(
            out,
            "- {} p50 at {lo} client: not measured for both systems",
            workload_title(w)
        )?,
    }
    Ok(())
}

/// Where the CPU went: per system, the median over its points of the cores
/// used by everything else on the machine (interference), and at the
/// largest client count of each workload, whether the machine was
/// saturated and by whom.
fn cpu_section(out: &mut String, m: &Matrix) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get()) as f64;
    writeln!(out, "\n## CPU\n")?;
    writeln!(out, "Cores used during the measured windows, from /proc: the load generator's process, the servers' processes, and the rest of the machine's busy time (other sessions' work, and kernel threads such as ksoftirqd, which carry part of the loopback traffic of both systems).\n")?;
    for t in ["ours", "etcd"] {
        let other: Vec<f64> = m
            .points
            .iter()
            .filter(|(k, _)| k.0 == t)
            .map(|(_, a)| a.other_cpu)
            .collect();
        if other.is_empty() {
            continue;
        }
        let lo = other
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .fold(f64::INFINITY, f64::min);
        let hi = other
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .fold(0.0, f64::max);
        writeln!(
            out,
            "- everything else on the machine during the {t} windows: median {:.2} cores (per point {lo:.2}–{hi:.2}) of {cores:.0}",
            median(other.clone()),
        )?;
    }
    for w in m.workloads() {
        let Some(&n) = m.clients(&w).last() else {
            continue;
        };
        for (label, t, c) in COLUMNS {
            let Some(a) = m.best_ops(t, &w, c, n) else {
                continue;
            };
            let total = a.gen_cpu + a.server_cpu + a.other_cpu;
            writeln!(
                out,
                "- {w}, {label}, {n} clients: load generator {:.2}, servers {:.2}, other {:.2} = {total:.2} of {cores:.0} cores{}",
                a.gen_cpu,
                a.server_cpu,
                a.other_cpu,
                if total >= 0.9 * cores {
                    " (machine saturated: CPU-bound)"
                } else {
                    ""
                },
            )?;
        }
    }
    Ok(())
}

fn detail_table(out: &mut String, m: &Matrix) -> Result<()> {
    writeln!(out, "\n### Every point (medians over repetitions)\n")?;
    writeln!(out, "CPU columns are cores used during the window (CPU seconds per second; the machine has {}): the load generator, the three servers together, and everything else on the machine.\n", std::thread::available_parallelism().map_or(0, |n| n.get()))?;
    writeln!(out, "| system | workload | consistency | conns | clients | reps | ops/s | ops/s min–max | get p50 ms | get p99 ms | put p50 ms | put p99 ms | puts % | gen cpu | servers cpu | other cpu | errors | empty gets |")?;
    writeln!(
        out,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for ((t, w, c, conns, n), a) in &m.points {
        let c = if t == "etcd" && c == "local" {
            "serializable"
        } else {
            c.as_str()
        };
        writeln!(
            out,
            "| {t} | {w} | {c} | {conns} | {n} | {} | {:.0} | {:.0}–{:.0} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} |",
            a.reps,
            a.ops_per_sec,
            a.ops_min,
            a.ops_max,
            fmt_f(Some(a.get_p50_ms), 3),
            fmt_f(Some(a.get_p99_ms), 3),
            fmt_f(Some(a.put_p50_ms), 3),
            fmt_f(Some(a.put_p99_ms), 3),
            a.put_share * 100.0,
            fmt_f(Some(a.gen_cpu), 2),
            fmt_f(Some(a.server_cpu), 2),
            fmt_f(Some(a.other_cpu), 2),
            a.errors,
            a.get_empty,
        )?;
    }
    Ok(())
}

/// `svg_name`: the SVG files' name prefix, as linked from the markdown.
pub fn render_md(
    rows: &[Row],
    svg_name: &str,
    etcd_version: &str,
    notes: &[String],
) -> Result<String> {
    let m = Matrix::new(rows);
    if m.points.is_empty() {
        bail!("no read or mixed90 rows");
    }
    let mut out = String::new();
    writeln!(
        out,
        "# Reads: ours (rkv) vs etcd, linearizable and local/serializable\n"
    )?;
    writeln!(out, "Produced by `scripts/bench-vs-etcd` (`BENCH_MODE=reads` for the full matrix); raw rows (one per repetition) in the CSV beside this file, plots in `{svg_name}-<workload>.svg`.\n")?;
    writeln!(out, "## Machine\n")?;
    for l in machine_lines(etcd_version) {
        writeln!(out, "- {l}")?;
    }
    let first = rows
        .iter()
        .find(|r| r.workload != "put")
        .expect("non-empty");
    writeln!(out, "\n## Setup\n")?;
    writeln!(out, "- each point: {} s measured after {} s warm-up, repeated (see reps); every logical client does sequential operations (one outstanding), keys uniformly random over the preloaded keyspace, {}-byte ASCII values", first.seconds, first.warmup, first.value_size)?;
    writeln!(out, "- read = Gets only; mixed90 = each operation a Get with probability 0.9, else a Put, drawn from the client's seeded generator; every key was written once before the measured points, so Gets return values (`empty gets` counts any that did not)")?;
    writeln!(out, "- ours: linearizable = `ReadConsistency::Linearizable` (ReadIndex: one quorum round, no disk write), lease = `ReadConsistency::Lease` on a cluster started with `--read-policy lease`, local = `ReadConsistency::Local` (the contacted server's applied state, possibly stale)")?;
    writeln!(out, "- etcd: linearizable = a default Range (etcd serves it after a ReadIndex round), serializable = Range with `serializable` (the member's own state, possibly stale); etcd has no lease read. Client models measured: one `etcd_client::Client` per logical client, and 16 and 64 shared round-robin; the tables take etcd's best per point")?;
    writeln!(out, "- ops/s counts operations completed in the measured window; latencies are start to answer, percentiles nearest-rank over every operation of the window, then the median over repetitions")?;
    for n in notes {
        writeln!(out, "- {n}")?;
    }
    writeln!(out, "\n## Issue 13 targets\n")?;
    for w in m.workloads() {
        targets(&mut out, &m, &w)?;
    }
    writeln!(out, "\n## Results")?;
    for w in m.workloads() {
        main_table(&mut out, &m, &w)?;
        writeln!(
            out,
            "\n![{w}: throughput and Get latency (etcd: its best client model) vs clients]({svg_name}-{w}.svg)"
        )?;
    }
    cpu_section(&mut out, &m)?;
    detail_table(&mut out, &m)?;
    let errs: u64 = m.points.values().map(|a| a.errors).sum();
    let empty: u64 = m.points.values().map(|a| a.get_empty).sum();
    if errs > 0 {
        writeln!(out, "\n**Warning:** {errs} operations failed or timed out in the measured windows (see the errors column).")?;
    }
    if empty > 0 {
        writeln!(
            out,
            "\n**Warning:** {empty} Gets found no value (see the empty gets column)."
        )?;
    }
    Ok(out)
}

fn series(m: &Matrix, w: &str) -> Vec<Series> {
    let colors = ["#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#ff7f0e"];
    let short = [
        "ours lin",
        "ours lease",
        "ours local",
        "etcd lin",
        "etcd serial",
    ];
    let clients = m.clients(w);
    COLUMNS
        .iter()
        .zip(colors.iter().zip(short))
        .filter_map(|(&(_, t, c), (color, name))| {
            let pts: Vec<(usize, &Agg, &Agg)> = clients
                .iter()
                .filter_map(|&n| Some((n, m.best_ops(t, w, c, n)?, m.best_p50(t, w, c, n)?)))
                .collect();
            if pts.is_empty() {
                return None;
            }
            Some(Series {
                name: name.to_string(),
                color: color.to_string(),
                clients: pts.iter().map(|p| p.0 as f64).collect(),
                ops_per_sec: pts.iter().map(|p| p.1.ops_per_sec).collect(),
                p50_ms: pts.iter().map(|p| p.2.get_p50_ms).collect(),
                p99_ms: pts.iter().map(|p| p.1.get_p99_ms).collect(),
            })
        })
        .collect()
}

pub fn report(
    csv: &Path,
    md: &Path,
    svg_prefix: &Path,
    etcd_version: &str,
    notes: &[String],
) -> Result<()> {
    let rows = crate::report::read_rows(csv, |_| true)?;
    let svg_name = svg_prefix
        .file_name()
        .map_or("reads".into(), |n| n.to_string_lossy().into_owned());
    let out = render_md(&rows, &svg_name, etcd_version, notes)?;
    std::fs::write(md, &out).with_context(|| format!("writing {}", md.display()))?;
    print!("{out}");
    let m = Matrix::new(&rows);
    for w in m.workloads() {
        let path = format!("{}-{w}.svg", svg_prefix.display());
        let title = format!(
            "{} on 3-member clusters, one {}-core machine",
            workload_title(&w),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        std::fs::write(
            &path,
            svg::render_with(&title, "throughput (ops/s)", &series(&m, &w)),
        )
        .with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::parse_csv;

    #[allow(clippy::too_many_arguments)]
    fn row(
        t: &str,
        w: &str,
        c: &str,
        conns: usize,
        n: usize,
        rep: u32,
        ops: f64,
        p50: f64,
    ) -> String {
        format!("{t},{n},10,2,256,random,{conns},{},0,{ops},1.0,{p50},1.0,2.0,3.0,4.0,{w},{c},{rep},{},{p50},2.0,0,nan,nan,0,0.5,1.0,0.1,0,0", (ops * 10.0) as u64, (ops * 10.0) as u64)
    }

    #[test]
    fn medians_best_model_and_targets() {
        let mut csv = vec![crate::CSV_HEADER.to_string()];
        for (rep, o) in [(1, 900.0), (2, 1000.0), (3, 5000.0)] {
            csv.push(row(
                "ours",
                "read",
                "linearizable",
                256,
                256,
                rep,
                o * 10.0,
                0.1,
            ));
            csv.push(row("ours", "read", "linearizable", 1, 1, rep, 4000.0, 0.2));
        }
        for rep in 1..=3 {
            csv.push(row(
                "etcd",
                "read",
                "linearizable",
                256,
                256,
                rep,
                1500.0,
                9.0,
            ));
            csv.push(row(
                "etcd",
                "read",
                "linearizable",
                16,
                256,
                rep,
                2000.0,
                7.0,
            ));
            csv.push(row("etcd", "read", "linearizable", 1, 1, rep, 1000.0, 0.5));
        }
        let rows = parse_csv(&csv.join("\n")).unwrap();
        let m = Matrix::new(&rows);
        let o = m.best_ops("ours", "read", "linearizable", 256).unwrap();
        assert_eq!(o.reps, 3);
        assert_eq!(o.ops_per_sec, 10_000.0);
        let e = m.best_ops("etcd", "read", "linearizable", 256).unwrap();
        assert_eq!(e.conns, 16);
        let md = render_md(&rows, "reads", "3.4.23", &[]).unwrap();
        // 10000 / 2000 = 5× at 256 clients: hit; 0.2 / 0.5 = 0.4 at 1: hit.
        assert!(md.contains("= **5.00×** → **HIT**"), "{md}");
        assert!(md.contains("= **0.40×** → **HIT**"), "{md}");
        assert!(md.contains("2000 (16 shared conns)"), "{md}");
        assert!(md.contains("| 1 | 4000 | 0.200 |"), "{md}");
    }

    #[test]
    fn median_of_even_and_nan() {
        assert_eq!(median(vec![1.0, 3.0]), 2.0);
        assert_eq!(median(vec![f64::NAN, 5.0, 1.0, 3.0]), 3.0);
        assert!(median(vec![]).is_nan());
    }
}
