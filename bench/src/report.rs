//! results.csv -> results.md + bench.svg.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::reads_report::{hit, median};
use crate::svg::{self, Series};

#[derive(Clone, Debug)]
pub struct Row {
    pub target: String,
    pub clients: usize,
    pub seconds: f64,
    pub warmup: f64,
    pub value_size: usize,
    pub keys: String,
    pub conns: usize,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    // Columns added with the read workloads; CSVs written before them read
    // as a put workload with the per-kind and CPU figures missing (NaN).
    pub workload: String,
    pub consistency: String,
    pub rep: u32,
    pub get_ops: u64,
    pub get_p50_ms: f64,
    pub get_p99_ms: f64,
    pub put_ops: u64,
    pub put_p50_ms: f64,
    pub put_p99_ms: f64,
    pub get_empty: u64,
    pub gen_cpu: f64,
    pub server_cpu: f64,
    pub other_cpu: f64,
    /// Open loop: the offered rate (0: closed loop, and in CSVs written
    /// before the open loop).
    pub offered_rate: f64,
    pub unfinished: f64,
}

pub fn parse_csv(text: &str) -> Result<Vec<Row>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().context("empty CSV")?;
    let cols: Vec<&str> = header.split(',').collect();
    let idx = |name: &str| -> Result<usize> {
        cols.iter()
            .position(|c| *c == name)
            .with_context(|| format!("CSV has no column {name:?}"))
    };
    let i = [
        idx("target")?,
        idx("clients")?,
        idx("seconds")?,
        idx("warmup_s")?,
        idx("value_size")?,
        idx("keys")?,
        idx("etcd_conns")?,
        idx("ops")?,
        idx("errors")?,
        idx("ops_per_sec")?,
        idx("mean_ms")?,
        idx("p50_ms")?,
        idx("p90_ms")?,
        idx("p99_ms")?,
        idx("p999_ms")?,
        idx("max_ms")?,
    ];
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != cols.len() {
            bail!(
                "CSV line {}: {} fields, header has {}",
                n + 2,
                f.len(),
                cols.len()
            );
        }
        let num = |k: usize| -> Result<f64> {
            f[i[k]]
                .trim()
                .parse::<f64>()
                .with_context(|| format!("CSV line {}: bad number {:?}", n + 2, f[i[k]]))
        };
        let opt_str = |name: &str, default: &str| -> String {
            cols.iter()
                .position(|c| *c == name)
                .map_or(default.to_string(), |j| f[j].trim().to_string())
        };
        let opt_num = |name: &str| -> Result<f64> {
            match cols.iter().position(|c| *c == name) {
                None => Ok(f64::NAN),
                Some(j) => f[j]
                    .trim()
                    .parse::<f64>()
                    .with_context(|| format!("CSV line {}: bad number {:?}", n + 2, f[j])),
            }
        };
        let opt_count = |name: &str| -> Result<u64> {
            let v = opt_num(name)?;
            Ok(if v.is_finite() { v as u64 } else { 0 })
        };
        rows.push(Row {
            target: f[i[0]].trim().to_string(),
            clients: num(1)? as usize,
            seconds: num(2)?,
            warmup: num(3)?,
            value_size: num(4)? as usize,
            keys: f[i[5]].trim().to_string(),
            conns: num(6)? as usize,
            ops: num(7)? as u64,
            errors: num(8)? as u64,
            ops_per_sec: num(9)?,
            mean_ms: num(10)?,
            p50_ms: num(11)?,
            p90_ms: num(12)?,
            p99_ms: num(13)?,
            p999_ms: num(14)?,
            max_ms: num(15)?,
            workload: opt_str("workload", "put"),
            consistency: opt_str("consistency", "-"),
            rep: opt_count("rep")?.max(1) as u32,
            get_ops: opt_count("get_ops")?,
            get_p50_ms: opt_num("get_p50_ms")?,
            get_p99_ms: opt_num("get_p99_ms")?,
            put_ops: opt_count("put_ops")?,
            put_p50_ms: opt_num("put_p50_ms")?,
            put_p99_ms: opt_num("put_p99_ms")?,
            get_empty: opt_count("get_empty")?,
            gen_cpu: opt_num("gen_cpu")?,
            server_cpu: opt_num("server_cpu")?,
            other_cpu: opt_num("other_cpu")?,
            offered_rate: {
                let v = opt_num("offered_rate")?;
                if v.is_finite() {
                    v
                } else {
                    0.0
                }
            },
            unfinished: {
                let v = opt_num("unfinished")?;
                if v.is_finite() {
                    v
                } else {
                    0.0
                }
            },
        });
    }
    Ok(rows)
}

pub(crate) fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

pub(crate) fn machine_lines(etcd_version: &str) -> Vec<String> {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, v)| v.trim().to_string());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or("unknown".to_string(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        });
    let kernel = match (
        read_trim("/proc/sys/kernel/ostype"),
        read_trim("/proc/sys/kernel/osrelease"),
    ) {
        (Some(t), Some(r)) => format!("{t} {r}"),
        (_, Some(r)) => r,
        _ => "unknown".into(),
    };
    let mut v = vec![
        format!("CPUs (nproc): {nproc}"),
        format!("CPU model: {model}"),
        format!("memory: {mem}"),
        format!("kernel: {kernel}"),
    ];
    if !etcd_version.is_empty() {
        v.push(format!("etcd: {etcd_version}"));
    }
    v
}

pub(crate) fn fmt_f(x: Option<f64>, prec: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.prec$}"),
        _ => "–".into(),
    }
}

/// The medians over repetitions of one (system, clients, connections) point.
#[derive(Clone, Debug)]
pub struct Cell {
    pub conns: usize,
    pub reps: usize,
    pub errors: u64,
    /// Puts in the measured window (median).
    pub ops: f64,
    pub ops_per_sec: f64,
    pub ops_min: f64,
    pub ops_max: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub gen_cpu: f64,
    pub server_cpu: f64,
    pub other_cpu: f64,
}

impl Cell {
    fn of(rows: &[&Row]) -> Cell {
        let col = |f: fn(&Row) -> f64| median(rows.iter().map(|r| f(r)).collect());
        Cell {
            conns: rows[0].conns,
            reps: rows.len(),
            errors: rows.iter().map(|r| r.errors).sum(),
            ops: col(|r| r.ops as f64),
            ops_per_sec: col(|r| r.ops_per_sec),
            ops_min: rows
                .iter()
                .map(|r| r.ops_per_sec)
                .fold(f64::INFINITY, f64::min),
            ops_max: rows.iter().map(|r| r.ops_per_sec).fold(0.0, f64::max),
            mean_ms: col(|r| r.mean_ms),
            p50_ms: col(|r| r.p50_ms),
            p90_ms: col(|r| r.p90_ms),
            p99_ms: col(|r| r.p99_ms),
            p999_ms: col(|r| r.p999_ms),
            max_ms: col(|r| r.max_ms),
            gen_cpu: col(|r| r.gen_cpu),
            server_cpu: col(|r| r.server_cpu),
            other_cpu: col(|r| r.other_cpu),
        }
    }

    /// "1/client" or "K shared".
    pub fn model(&self, clients: usize) -> String {
        if self.conns >= clients {
            "1/client".into()
        } else {
            format!("{} shared", self.conns)
        }
    }
}

/// Every put point: (system, clients) -> one cell per client model.
pub struct Points {
    cells: BTreeMap<(String, usize), Vec<Cell>>,
}

impl Points {
    pub fn new(rows: &[Row]) -> Points {
        let mut groups: BTreeMap<(String, usize, usize), Vec<&Row>> = BTreeMap::new();
        for r in rows {
            groups
                .entry((r.target.clone(), r.clients, r.conns.min(r.clients)))
                .or_default()
                .push(r);
        }
        let mut cells: BTreeMap<(String, usize), Vec<Cell>> = BTreeMap::new();
        for ((t, c, _), rs) in groups {
            cells.entry((t, c)).or_default().push(Cell::of(&rs));
        }
        Points { cells }
    }

    pub fn models(&self, target: &str, clients: usize) -> &[Cell] {
        self.cells
            .get(&(target.to_string(), clients))
            .map_or(&[], |v| v.as_slice())
    }

    /// The model with the highest median throughput.
    pub fn best(&self, target: &str, clients: usize) -> Option<&Cell> {
        self.models(target, clients)
            .iter()
            .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec))
    }

    /// The lowest median of `f` over the models.
    pub fn lowest(&self, target: &str, clients: usize, f: fn(&Cell) -> f64) -> Option<&Cell> {
        self.models(target, clients)
            .iter()
            .filter(|c| f(c).is_finite())
            .min_by(|a, b| f(a).total_cmp(&f(b)))
    }

    pub fn clients(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.cells.keys().map(|(_, c)| *c).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The rows of the CSV at `csv` that `keep` keeps.
pub(crate) fn read_rows(csv: &Path, keep: impl Fn(&Row) -> bool) -> Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    Ok(parse_csv(&text)?.into_iter().filter(|r| keep(r)).collect())
}

pub fn report(
    csv: &Path,
    md: &Path,
    svg_path: &Path,
    etcd_version: &str,
    notes: &[String],
) -> Result<()> {
    let rows = read_rows(csv, |r| r.workload == "put" && r.offered_rate == 0.0)?;
    if rows.is_empty() {
        bail!("{} has no closed-loop put rows", csv.display());
    }
    let points = Points::new(&rows);
    let clients = points.clients();
    let reps = rows.iter().map(|r| r.rep).max().unwrap_or(1);

    let mut out = String::new();
    writeln!(
        out,
        "# Put throughput and latency: ours (rkv) vs etcd at its best\n"
    )?;
    writeln!(
        out,
        "Produced by `scripts/bench-vs-etcd`; raw numbers in `results.csv`, plot in `bench.svg`.\n"
    )?;
    writeln!(out, "## Machine\n")?;
    for l in machine_lines(etcd_version) {
        writeln!(out, "- {l}")?;
    }
    writeln!(out, "\n## Setup\n")?;
    let first = &rows[0];
    writeln!(
        out,
        "- each point: {} s measured after {} s warm-up; every logical client does sequential puts (one outstanding request), {}-byte ASCII values, {} keys",
        first.seconds, first.warmup, first.value_size, first.keys
    )?;
    writeln!(out, "- ops/s counts puts completed in the measured window; latency is per put, start to acknowledgement; percentiles are nearest-rank over every put; every figure is the median over {reps} repetition(s) (the systems alternate which goes first)")?;
    writeln!(out, "- both clusters: 3 members on 127.0.0.1 of this one machine, durable writes (fsync), the load generator on the same cores; each system is measured alone (the other cluster is stopped)")?;
    writeln!(out, "- client models: `1/client` is one connection per logical client (etcd: one `etcd_client::Client`, a gRPC channel balanced over the 3 endpoints; ours: one `driver_tokio::client::Client`, each its own session and connections); `K shared` is K connections shared round-robin by the logical clients (etcd: K `etcd_client::Client`s, as etcd's own `benchmark --conns K --clients N` does; ours: K `driver_tokio::client::SharedConns` pools, each logical client still its own session)")?;
    writeln!(out, "- each system's figure at a point is its client model with the highest median throughput (named in the model column); the other models are in the table under it")?;
    for n in notes {
        writeln!(out, "- {n}")?;
    }

    writeln!(out, "\n## Results\n")?;
    writeln!(out, "| clients | ours ops/s | model | p50 ms | p99 ms | p99.9 ms | etcd ops/s (best) | model | p50 ms | p99 ms | p99.9 ms | ours / etcd |")?;
    writeln!(
        out,
        "|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    )?;
    for &c in &clients {
        let o = points.best("ours", c);
        let e = points.best("etcd", c);
        let ratio = match (o, e) {
            (Some(o), Some(e)) if e.ops_per_sec > 0.0 => {
                format!("**{:.2}×**", o.ops_per_sec / e.ops_per_sec)
            }
            _ => "–".into(),
        };
        writeln!(
            out,
            "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {ratio} |",
            fmt_f(o.map(|r| r.ops_per_sec), 0),
            o.map_or("–".into(), |r| r.model(c)),
            fmt_f(o.map(|r| r.p50_ms), 2),
            fmt_f(o.map(|r| r.p99_ms), 2),
            fmt_f(o.map(|r| r.p999_ms), 2),
            fmt_f(e.map(|r| r.ops_per_sec), 0),
            e.map_or("–".into(), |r| r.model(c)),
            fmt_f(e.map(|r| r.p50_ms), 2),
            fmt_f(e.map(|r| r.p99_ms), 2),
            fmt_f(e.map(|r| r.p999_ms), 2),
        )?;
    }

    // The issue 15 targets, where the points exist.
    writeln!(out, "\n### Targets\n")?;
    let top = clients.iter().copied().max().unwrap_or(0);
    if let (Some(o), Some(e)) = (points.best("ours", top), points.best("etcd", top)) {
        let r = o.ops_per_sec / e.ops_per_sec;
        writeln!(
            out,
            "- puts/s at {top} clients ≥ 10× etcd at its best: {:.0} against {:.0} ({}), **{r:.2}×**: {}",
            o.ops_per_sec,
            e.ops_per_sec,
            e.model(top),
            hit(r >= 10.0)
        )?;
        if let Some(el) = points.lowest("etcd", top, |c| c.p99_ms) {
            writeln!(
                out,
                "- p99.9 at {top} clients below etcd's p99 (its lowest over the models, {}): {:.2} ms against {:.2} ms: {}",
                el.model(top),
                o.p999_ms,
                el.p99_ms,
                hit(o.p999_ms < el.p99_ms)
            )?;
        }
    }
    if let (Some(o), Some(e)) = (
        points.lowest("ours", 1, |c| c.p50_ms),
        points.lowest("etcd", 1, |c| c.p50_ms),
    ) {
        let r = o.p50_ms / e.p50_ms;
        writeln!(
            out,
            "- 1-client put p50 ≤ 0.4× etcd's: {:.3} ms against {:.3} ms, **{r:.2}×**: {}",
            o.p50_ms,
            e.p50_ms,
            hit(r <= 0.4)
        )?;
    }

    writeln!(out, "\n### Every client model (medians over repetitions)\n")?;
    writeln!(out, "| system | clients | model | reps | errors | puts | ops/s | ops/s min–max | mean ms | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | CPU gen / servers / other (cores) |")?;
    writeln!(
        out,
        "|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"
    )?;
    for t in ["ours", "etcd"] {
        for &c in &clients {
            for r in points.models(t, c) {
                writeln!(
                    out,
                    "| {t} | {c} | {} | {} | {} | {:.0} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} / {} / {} |",
                    r.model(c), r.reps, r.errors, r.ops, r.ops_per_sec, r.ops_min, r.ops_max, r.mean_ms, r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms,
                    fmt_f(Some(r.gen_cpu), 2), fmt_f(Some(r.server_cpu), 2), fmt_f(Some(r.other_cpu), 2),
                )?;
            }
        }
    }
    let errs: u64 = rows.iter().map(|r| r.errors).sum();
    if errs > 0 {
        writeln!(out, "\n**Warning:** {errs} puts failed or timed out in the measured windows (see the errors column).")?;
    }
    writeln!(out, "\n![throughput and p99 latency vs clients, each system at its best client model per point](bench.svg)")?;

    std::fs::write(md, &out).with_context(|| format!("writing {}", md.display()))?;
    print!("{out}");

    let series: Vec<Series> = [
        ("ours", "ours (best model)", "#1f77b4"),
        ("etcd", "etcd (best model)", "#d62728"),
    ]
    .iter()
    .filter_map(|&(t, name, color)| {
        let pts: Vec<(usize, &Cell)> = clients
            .iter()
            .filter_map(|&c| points.best(t, c).map(|b| (c, b)))
            .collect();
        if pts.is_empty() {
            return None;
        }
        Some(Series {
            name: name.to_string(),
            color: color.to_string(),
            clients: pts.iter().map(|(c, _)| *c as f64).collect(),
            ops_per_sec: pts.iter().map(|(_, r)| r.ops_per_sec).collect(),
            p50_ms: pts.iter().map(|(_, r)| r.p50_ms).collect(),
            p99_ms: pts.iter().map(|(_, r)| r.p99_ms).collect(),
        })
    })
    .collect();
    let title = format!(
        "3-member clusters on one {}-core machine, {}-byte puts",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        first.value_size
    );
    std::fs::write(svg_path, svg::render(&title, &series))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_roundtrip_and_report() {
        let csv = format!(
            "{}\netcd,1,3,1,256,random,1,300,0,100.0,10.0,9.0,12.0,20.0,30.0,31.0\netcd,16,3,1,256,random,16,3000,0,1000.0,16.0,15.0,18.0,25.0,40.0,41.0\netcd,16,3,1,256,random,4,3600,0,1200.0,13.0,12.0,14.0,21.0,33.0,35.0\nours,1,3,1,256,random,1,600,0,200.0,5.0,4.5,6.0,8.0,9.0,9.5\n",
            // The header of CSVs written before the read workloads: still
            // read, as puts.
            "target,clients,seconds,warmup_s,value_size,keys,etcd_conns,ops,errors,ops_per_sec,mean_ms,p50_ms,p90_ms,p99_ms,p999_ms,max_ms"
        );
        let rows = parse_csv(&csv).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1].clients, 16);
        let dir = std::env::temp_dir().join(format!("rkv-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = dir.join("r.csv");
        std::fs::write(&c, csv).unwrap();
        report(&c, &dir.join("r.md"), &dir.join("r.svg"), "3.4.23", &[]).unwrap();
        let md = std::fs::read_to_string(dir.join("r.md")).unwrap();
        assert!(
            md.contains("| 1 | 200 | 1/client | 4.50 | 8.00 | 9.00 | 100 | 1/client | 9.00 | 20.00 | 30.00 | **2.00×** |"),
            "{md}"
        );
        // etcd's best model at 16 clients is the faster shared one.
        assert!(
            md.contains("| 16 | – | – | – | – | – | 1200 | 4 shared | 12.00 | 21.00 | 33.00 | – |"),
            "{md}"
        );
        assert!(
            md.contains("| etcd | 16 | 1/client | 1 | 0 | 3000 | 1000 |"),
            "{md}"
        );
        let svg = std::fs::read_to_string(dir.join("r.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
