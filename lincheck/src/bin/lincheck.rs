//! `lincheck`: checks recorded histories for linearizability and prints the
//! verdict of each file and of each of its partitions (keys).
//!
//! ```text
//! lincheck [--format auto|jsonl|etcd|kv] [--budget SECS] [--steps N]
//!          [--memory MB] [--all] [--html OUT] FILE...
//! ```
//!
//! Formats: `jsonl`, the key/value histories the lab tests export with
//! `HISTORY_DIR=<dir>`; `etcd`, Jepsen etcd logs (a register); `kv`,
//! porcupine's EDN key/value histories. `auto` (the default) goes by the
//! file's extension: `.jsonl`, `.log`, `.txt` or `.edn`.
//!
//! `--html OUT` writes the timeline of a violation: to `OUT` for one file,
//! to `OUT/<file name>.html` for several. `--all` searches every partition
//! instead of stopping at the first violation.
//!
//! Exit status: 0 if every file is linearizable, 1 if some file is not (and
//! none is unknown or unreadable), 2 if some verdict is unknown or some file
//! could not be read or parsed, or the arguments are wrong.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use lincheck::{
    check_with, parse_etcd_log, parse_history_jsonl, parse_kv_edn, write_violation_html,
    CheckOptions, KvModel, Model, Operation, PartitionVerdict, RegisterModel, Verdict,
};

const USAGE: &str = "usage: lincheck [--format auto|jsonl|etcd|kv] [--budget SECS] [--steps N] \
                     [--memory MB] [--all] [--html OUT] FILE...";

/// A history format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Auto,
    Jsonl,
    Etcd,
    Kv,
}

struct Args {
    format: Format,
    options: CheckOptions,
    html: Option<PathBuf>,
    files: Vec<PathBuf>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        format: Format::Auto,
        options: CheckOptions::with_time_budget(Duration::from_secs(60)),
        html: None,
        files: Vec::new(),
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--format" => {
                parsed.format = match value("--format")?.as_str() {
                    "auto" => Format::Auto,
                    "jsonl" => Format::Jsonl,
                    "etcd" => Format::Etcd,
                    "kv" => Format::Kv,
                    other => return Err(format!("unknown format {other:?}")),
                }
            }
            "--budget" => {
                let secs: f64 = value("--budget")?
                    .parse()
                    .map_err(|_| "--budget takes seconds".to_string())?;
                parsed.options.time_budget = Some(
                    Duration::try_from_secs_f64(secs)
                        .map_err(|_| "--budget takes seconds".to_string())?,
                );
            }
            "--steps" => {
                let steps = value("--steps")?
                    .parse()
                    .map_err(|_| "--steps takes a number".to_string())?;
                parsed.options.max_steps = Some(steps);
            }
            "--memory" => {
                let mb: usize = value("--memory")?
                    .parse()
                    .map_err(|_| "--memory takes megabytes".to_string())?;
                parsed.options.memory_limit_bytes = mb.saturating_mul(1 << 20);
            }
            "--all" => parsed.options.stop_at_first_violation = false,
            "--html" => parsed.html = Some(PathBuf::from(value("--html")?)),
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}")),
            file => parsed.files.push(PathBuf::from(file)),
        }
    }
    if parsed.files.is_empty() {
        return Err("no file given".into());
    }
    Ok(parsed)
}

fn format_of(path: &Path, format: Format) -> Result<Format, String> {
    if format != Format::Auto {
        return Ok(format);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => Ok(Format::Jsonl),
        Some("log") => Ok(Format::Etcd),
        Some("txt" | "edn") => Ok(Format::Kv),
        _ => Err("cannot tell the format from the extension; use --format".into()),
    }
}

/// Checks one file, writing its report to `out`; returns its exit status
/// (0, 1 or 2).
fn check_file(
    path: &Path,
    args: &Args,
    html: Option<PathBuf>,
    out: &mut String,
) -> Result<u8, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let parse_error = |e: lincheck::ParseError| e.to_string();
    match format_of(path, args.format)? {
        Format::Jsonl => {
            let history = parse_history_jsonl(&text).map_err(parse_error)?;
            report(&KvModel, &history, args, html, out, |op| {
                format!("key {:?}", op.input.key)
            })
        }
        Format::Kv => {
            let history = parse_kv_edn(&text).map_err(parse_error)?;
            report(&KvModel, &history, args, html, out, |op| {
                format!("key {:?}", op.input.key)
            })
        }
        Format::Etcd => {
            let history = parse_etcd_log(&text).map_err(parse_error)?;
            report(&RegisterModel, &history, args, html, out, |_| {
                "register".into()
            })
        }
        Format::Auto => unreachable!("format_of resolves auto"),
    }
}

/// Checks a parsed history and writes the verdicts to `out`.
fn report<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    args: &Args,
    html: Option<PathBuf>,
    out: &mut String,
    name: impl Fn(&Operation<M::Input, M::Output>) -> String,
) -> Result<u8, String> {
    let report = check_with(model, history, &args.options);
    let reason = report
        .unknown_reason
        .map_or(String::new(), |r| format!(" ({r})"));
    let _ = writeln!(
        out,
        "  {}{reason}: {} operations, {} partition(s), {} steps, {:.1} ms, {:.1} MB",
        report.verdict.name(),
        history.len(),
        report.partitions.len(),
        report.steps,
        report.elapsed.as_secs_f64() * 1e3,
        report.peak_bytes as f64 / f64::from(1 << 20),
    );
    for p in &report.partitions {
        let verdict = match p.verdict {
            PartitionVerdict::Unknown(r) => format!("unknown ({r})"),
            v => v.name().to_string(),
        };
        let _ = writeln!(
            out,
            "    partition {} ({}): {verdict}, {} operations, {} steps, {} memo entries",
            p.index,
            name(&history[p.first_op]),
            p.ops,
            p.steps,
            p.memo_entries
        );
    }
    match &report.verdict {
        Verdict::Linearizable => Ok(0),
        Verdict::Unknown => Ok(2),
        Verdict::NotLinearizable(v) => {
            for line in v.describe(model).lines() {
                let _ = writeln!(out, "  {line}");
            }
            if let Some(page) = html {
                write_violation_html(&page, model, v)
                    .map_err(|e| format!("cannot write {}: {e}", page.display()))?;
                let _ = writeln!(out, "  timeline: {}", page.display());
            }
            Ok(1)
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("lincheck: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let (Some(dir), true) = (&args.html, args.files.len() > 1) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("lincheck: cannot create {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    let mut worst = 0;
    let mut stdout = std::io::stdout().lock();
    for path in &args.files {
        let mut out = format!("{}\n", path.display());
        let html = args.html.as_ref().map(|out| {
            if args.files.len() == 1 {
                out.clone()
            } else {
                let name = path
                    .file_name()
                    .map_or("history".into(), |n| n.to_os_string());
                let mut page = out.join(name);
                page.as_mut_os_string().push(".html");
                page
            }
        });
        let status = check_file(path, &args, html, &mut out).unwrap_or_else(|e| {
            let _ = writeln!(out, "  error: {e}");
            2
        });
        worst = worst.max(status);
        // A closed pipe (`| head`) ends the output, not the checking's
        // verdict.
        if stdout.write_all(out.as_bytes()).is_err() {
            break;
        }
    }
    ExitCode::from(worst)
}
