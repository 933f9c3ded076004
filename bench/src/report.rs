//! results.csv -> results.md + bench.svg.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

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

pub fn report(
    csv: &Path,
    md: &Path,
    svg_path: &Path,
    etcd_version: &str,
    notes: &[String],
) -> Result<()> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let rows: Vec<Row> = parse_csv(&text)?
        .into_iter()
        .filter(|r| r.workload == "put")
        .collect();
    if rows.is_empty() {
        bail!("{} has no put rows", csv.display());
    }
    // (target, clients) -> row; a later row replaces an earlier one.
    let mut by: BTreeMap<(String, usize), Row> = BTreeMap::new();
    for r in &rows {
        by.insert((r.target.clone(), r.clients), r.clone());
    }
    let mut clients: Vec<usize> = by.keys().map(|(_, c)| *c).collect();
    clients.sort_unstable();
    clients.dedup();
    let get = |t: &str, c: usize| by.get(&(t.to_string(), c));

    let mut out = String::new();
    writeln!(out, "# Put throughput and latency: ours (rkv) vs etcd\n")?;
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
    writeln!(out, "- ops/s counts puts completed in the measured window; latency is per put, start to acknowledgement; percentiles are nearest-rank over every put")?;
    writeln!(out, "- both clusters: 3 members on 127.0.0.1 of this one machine, durable writes (fsync), the load generator on the same cores; each system is measured alone (the other cluster is stopped)")?;
    if let Some(c) = clients.iter().find_map(|&c| get("etcd", c)) {
        if c.conns == c.clients {
            writeln!(out, "- etcd client: one `etcd_client::Client` (gRPC channel balanced over all 3 endpoints) per logical client")?;
        } else {
            writeln!(out, "- etcd client: logical clients share `etcd_client::Client`s round-robin (see the conns column in results.csv)")?;
        }
    }
    writeln!(out, "- ours: one `driver_tokio::client::Client` (own session) per logical client, given all 3 members' client addresses")?;
    for n in notes {
        writeln!(out, "- {n}")?;
    }

    writeln!(out, "\n## Results\n")?;
    writeln!(out, "| clients | ours ops/s | ours p50 ms | ours p99 ms | etcd ops/s | etcd p50 ms | etcd p99 ms | throughput ratio (ours/etcd) |")?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for &c in &clients {
        let o = get("ours", c);
        let e = get("etcd", c);
        let ratio = match (o, e) {
            (Some(o), Some(e)) if e.ops_per_sec > 0.0 => {
                format!("{:.2}×", o.ops_per_sec / e.ops_per_sec)
            }
            _ => "–".into(),
        };
        writeln!(
            out,
            "| {c} | {} | {} | {} | {} | {} | {} | {ratio} |",
            fmt_f(o.map(|r| r.ops_per_sec), 0),
            fmt_f(o.map(|r| r.p50_ms), 2),
            fmt_f(o.map(|r| r.p99_ms), 2),
            fmt_f(e.map(|r| r.ops_per_sec), 0),
            fmt_f(e.map(|r| r.p50_ms), 2),
            fmt_f(e.map(|r| r.p99_ms), 2),
        )?;
    }

    writeln!(out, "\n### All percentiles\n")?;
    writeln!(out, "| system | clients | ops | errors | ops/s | mean ms | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |")?;
    writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for t in ["ours", "etcd"] {
        for &c in &clients {
            if let Some(r) = get(t, c) {
                writeln!(
                    out,
                    "| {t} | {c} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    r.ops, r.errors, r.ops_per_sec, r.mean_ms, r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms
                )?;
            }
        }
    }
    let errs: u64 = rows.iter().map(|r| r.errors).sum();
    if errs > 0 {
        writeln!(out, "\n**Warning:** {errs} puts failed or timed out in the measured windows (see the errors column).")?;
    }
    writeln!(out, "\n![throughput and p99 latency vs clients](bench.svg)")?;

    std::fs::write(md, &out).with_context(|| format!("writing {}", md.display()))?;
    print!("{out}");

    let series: Vec<Series> = [("ours", "#1f77b4"), ("etcd", "#d62728")]
        .iter()
        .filter_map(|&(t, color)| {
            let pts: Vec<&Row> = clients.iter().filter_map(|&c| get(t, c)).collect();
            if pts.is_empty() {
                return None;
            }
            Some(Series {
                name: t.to_string(),
                color: color.to_string(),
                clients: pts.iter().map(|r| r.clients as f64).collect(),
                ops_per_sec: pts.iter().map(|r| r.ops_per_sec).collect(),
                p50_ms: pts.iter().map(|r| r.p50_ms).collect(),
                p99_ms: pts.iter().map(|r| r.p99_ms).collect(),
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
            "{}\netcd,1,3,1,256,random,1,300,0,100.0,10.0,9.0,12.0,20.0,30.0,31.0\netcd,16,3,1,256,random,16,3000,0,1000.0,16.0,15.0,18.0,25.0,40.0,41.0\nours,1,3,1,256,random,1,600,0,200.0,5.0,4.5,6.0,8.0,9.0,9.5\n",
            // The header of CSVs written before the read workloads: still
            // read, as puts.
            "target,clients,seconds,warmup_s,value_size,keys,etcd_conns,ops,errors,ops_per_sec,mean_ms,p50_ms,p90_ms,p99_ms,p999_ms,max_ms"
        );
        let rows = parse_csv(&csv).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].clients, 16);
        let dir = std::env::temp_dir().join(format!("rkv-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = dir.join("r.csv");
        std::fs::write(&c, csv).unwrap();
        report(&c, &dir.join("r.md"), &dir.join("r.svg"), "3.4.23", &[]).unwrap();
        let md = std::fs::read_to_string(dir.join("r.md")).unwrap();
        assert!(
            md.contains("| 1 | 200 | 4.50 | 8.00 | 100 | 9.00 | 20.00 | 2.00× |"),
            "{md}"
        );
        assert!(md.contains("| 16 | – | – | – | 1000 |"), "{md}");
        let svg = std::fs::read_to_string(dir.join("r.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
