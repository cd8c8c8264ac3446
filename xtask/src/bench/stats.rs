//! Pure helpers of the reports: apiserver request counters, medians, percentiles, and
//! the sections of docs/benchmarks.md.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

/// `apiserver_request_total` by (verb, resource, subresource, code).
pub type Requests = BTreeMap<(String, String, String, String), u64>;

pub fn parse_requests(text: &str) -> Requests {
    let mut out = Requests::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        *out.entry((
            label("verb"),
            label("resource"),
            label("subresource"),
            label("code"),
        ))
        .or_default() += value as u64;
    }
    out
}

pub fn diff(before: &Requests, after: &Requests) -> Requests {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or_default());
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

pub fn is_write(verb: &str) -> bool {
    matches!(verb, "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE")
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn spread(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// The `p`-th percentile (0–100) by nearest rank; NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Replaces (or appends) the section `id` in `docs/benchmarks.md`.
pub fn write_section(path: &Path, id: &str, command: &str, report: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let begin = format!("<!-- bench:{id} -->");
    let end = format!("<!-- /bench:{id} -->");
    let when = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC");
    let section = format!(
        "{begin}\n_Measured {when} with `{command}` ({} build)._\n\n{report}{end}",
        super::profile()
    );
    let updated = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{}{}", &text[..b], section, &text[e + end.len()..])
        }
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    std::fs::write(path, updated)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counters_are_parsed_and_diffed() {
        let before = parse_requests(
            "# HELP x\napiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"\",verb=\"LIST\",version=\"v1\"} 3\n",
        );
        let after = parse_requests(
            "apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"\",verb=\"LIST\",version=\"v1\"} 5\napiserver_request_total{code=\"404\",component=\"apiserver\",dry_run=\"\",group=\"x\",resource=\"ocirepositories\",scope=\"resource\",subresource=\"\",verb=\"DELETE\",version=\"v1\"} 2\n",
        );
        let d = diff(&before, &after);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[&("LIST".into(), "pods".into(), String::new(), "200".into())],
            2
        );
        assert_eq!(
            d[&(
                "DELETE".into(),
                "ocirepositories".into(),
                String::new(),
                "404".into()
            )],
            2
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn median_and_spread() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 3.0));
    }
}
