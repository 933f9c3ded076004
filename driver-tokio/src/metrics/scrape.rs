//! A strict reader of the OpenMetrics text format, for the tests and for
//! tools that read a node's `/metrics`: it refuses what a Prometheus server
//! would refuse rather than skip it, so a test that parses an exposition
//! proves it well formed.
//!
//! It checks: every line is metadata (`# HELP`, `# TYPE`, `# UNIT`) or a
//! sample, and the text ends with `# EOF`; each family's lines are together
//! and declared once; a sample's name is its family's name with a suffix
//! its type allows (`_total` for a counter, `_bucket`/`_count`/`_sum` for a
//! histogram); label names and escaped values are well formed; no series
//! appears twice; and a histogram's buckets are cumulative, end at `+Inf`
//! and agree with its `_count`.

use std::collections::{BTreeMap, BTreeSet};

/// One sample: a series and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series name (a family name and its suffix).
    pub name: String,
    /// The labels, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// Each family's type, by family name.
    pub types: BTreeMap<String, String>,
}

/// Where and why an exposition is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    /// What is wrong.
    pub why: String,
}

impl Scrape {
    /// Parses a whole exposition.
    pub fn parse(text: &str) -> Result<Scrape, ParseError> {
        let mut scrape = Scrape::default();
        let mut family: Option<String> = None;
        let mut closed: BTreeSet<String> = BTreeSet::new();
        let mut seen: BTreeSet<(String, BTreeMap<String, String>)> = BTreeSet::new();
        let Some(body) = text.strip_suffix("# EOF\n") else {
            return Err(ParseError {
                line: text.lines().count(),
                why: "does not end with \"# EOF\"".into(),
            });
        };
        for (i, line) in body.lines().enumerate() {
            let fail = |why: String| ParseError { line: i + 1, why };
            if let Some(meta) = line.strip_prefix("# ") {
                let mut parts = meta.splitn(3, ' ');
                let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let rest = parts.next().unwrap_or("");
                if !is_metric_name(name) {
                    return Err(fail(format!("bad family name {name:?}")));
                }
                if family.as_deref() != Some(name) {
                    if let Some(done) = family.take() {
                        closed.insert(done);
                    }
                    if closed.contains(name) {
                        return Err(fail(format!("family {name} appears twice")));
                    }
                    family = Some(name.to_string());
                }
                match kind {
                    "HELP" | "UNIT" => {}
                    "TYPE" => {
                        const TYPES: [&str; 8] = [
                            "counter",
                            "gauge",
                            "histogram",
                            "gaugehistogram",
                            "stateset",
                            "info",
                            "summary",
                            "unknown",
                        ];
                        if !TYPES.contains(&rest) {
                            return Err(fail(format!("unknown type {rest:?}")));
                        }
                        if scrape.types.insert(name.into(), rest.into()).is_some() {
                            return Err(fail(format!("{name} typed twice")));
                        }
                    }
                    other => return Err(fail(format!("unknown metadata {other:?}"))),
                }
                continue;
            }
            let sample = parse_sample(line).map_err(fail)?;
            let Some(fam) = family.as_deref() else {
                return Err(fail("a sample before any family".into()));
            };
            let ty = scrape.types.get(fam).map_or("unknown", String::as_str);
            let suffix = sample.name.strip_prefix(fam).unwrap_or("-");
            let allowed: &[&str] = match ty {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_count", "_sum", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            if !allowed.contains(&suffix) {
                return Err(fail(format!(
                    "{} is not a series of {ty} {fam}",
                    sample.name
                )));
            }
            if (suffix == "_bucket") != sample.labels.contains_key("le") {
                return Err(fail(format!("{}: le only on buckets", sample.name)));
            }
            if !seen.insert((sample.name.clone(), sample.labels.clone())) {
                return Err(fail(format!("{} {:?} twice", sample.name, sample.labels)));
            }
            scrape.samples.push(sample);
        }
        scrape.check_histograms()?;
        Ok(scrape)
    }

    /// The value of the series `name` with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|&(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Every series named `name`, whatever its labels.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    fn check_histograms(&self) -> Result<(), ParseError> {
        let fail = |why: String| ParseError { line: 0, why };
        for (fam, _) in self.types.iter().filter(|(_, t)| *t == "histogram") {
            let count_name = format!("{fam}_count");
            for count in self.series(&count_name) {
                let mut buckets: Vec<(f64, f64)> = Vec::new();
                for b in self.series(&format!("{fam}_bucket")) {
                    let mut rest = b.labels.clone();
                    let le = rest.remove("le").unwrap_or_default();
                    if rest == count.labels {
                        let bound =
                            parse_value(&le).ok_or_else(|| fail(format!("{fam}: le={le:?}")))?;
                        buckets.push((bound, b.value));
                    }
                }
                let increasing = buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
                if !increasing {
                    return Err(fail(format!("{fam}: buckets not cumulative in order")));
                }
                match buckets.last() {
                    Some(&(bound, n)) if bound == f64::INFINITY && n == count.value => {}
                    _ => return Err(fail(format!("{fam}: no +Inf bucket equal to _count"))),
                }
            }
        }
        Ok(())
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    !name.contains(':') && is_metric_name(name)
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        t if t.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E') => None,
        t => t.parse().ok(),
    }
}

/// `name{a="x",b="y"} value` (labels optional; no timestamp, as we write
/// none).
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("not a sample: {line:?}"))?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad series name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find("=\"").ok_or("a label without =\"")?;
            let key = &rest[..eq];
            if !is_label_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            let (value, after) = unescape(&rest[eq + 2..])?;
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            rest = after.strip_prefix(',').unwrap_or(after);
            if !after.starts_with([',', '}']) {
                return Err("labels not separated by ','".into());
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .filter(|v| !v.contains(' '))
        .and_then(parse_value)
        .ok_or_else(|| format!("bad value in {line:?}"))?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A label value up to its closing quote, with `\\`, `\"` and `\n`
/// unescaped; returns it and what follows the quote.
fn unescape(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                other => return Err(format!("bad escape {other:?}")),
            },
            '\n' => return Err("a newline in a label value".into()),
            c => value.push(c),
        }
    }
    Err("an unterminated label value".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP a_seconds A.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\n\
        a_seconds_sum 1.5\na_seconds_count 2\na_seconds_bucket{le=\"0.5\"} 1\na_seconds_bucket{le=\"+Inf\"} 2\n\
        # HELP b B.\n# TYPE b counter\nb_total{x=\"q\\\"\\\\\",y=\"2\"} 3\n# EOF\n";

    #[test]
    fn reads_a_well_formed_exposition() {
        let s = Scrape::parse(GOOD).unwrap();
        assert_eq!(s.value("a_seconds_count", &[]), Some(2.0));
        assert_eq!(s.value("a_seconds_bucket", &[("le", "0.5")]), Some(1.0));
        assert_eq!(s.value("b_total", &[("y", "2"), ("x", "q\"\\")]), Some(3.0));
        assert_eq!(s.value("b_total", &[("x", "q\"\\")]), None);
    }

    #[test]
    fn refuses_what_prometheus_would_refuse() {
        let bad = [
            GOOD.replace("# EOF\n", ""),
            GOOD.replace("b_total", "b"),
            GOOD.replace("a_seconds_count 2", "a_seconds_count 3"),
            GOOD.replace("{le=\"+Inf\"} 2", "{le=\"+Inf\"} 0"),
            GOOD.replace("y=\"2\"", "y=2"),
            GOOD.replace("} 3", "} three"),
            GOOD.replace("# TYPE b counter", "# TYPE b countr"),
            GOOD.replace(
                "a_seconds_sum 1.5\n",
                "a_seconds_sum 1.5\na_seconds_sum 1.5\n",
            ),
            format!(
                "{}# TYPE a_seconds gauge\na_seconds 1\n# EOF\n",
                GOOD.trim_end_matches("# EOF\n")
            ),
        ];
        for text in bad {
            assert!(Scrape::parse(&text).is_err(), "accepted:\n{text}");
        }
    }
}
