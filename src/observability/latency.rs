//! Latency recordings: per-route, per-worker `hdrhistogram`s in
//! microseconds, merged on demand for `GET /stats/latency` and the
//! Prometheus duration histograms.
//!
//! Precision is two significant digits (values are exact to within 1%) from
//! 1 µs to one hour: about 24 KiB per histogram, allocated at a route's
//! first request on each worker. Three digits would cost ten times the
//! memory for precision no latency dashboard shows.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Longest recordable duration; longer ones count as this.
const HIGHEST_US: u64 = 3_600_000_000;
const SIGFIG: u8 = 2;

/// Records `us` microseconds, allocating the histogram on first use.
pub fn record(slot: &mut Option<Histogram<u64>>, us: u64) {
    if slot.is_none() {
        // Constant bounds that hdrhistogram accepts (the tests record into it).
        *slot = Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG).ok();
    }
    if let Some(h) = slot {
        h.saturating_record(us.clamp(1, HIGHEST_US));
    }
}

/// Adds `from` into `into`.
pub fn merge(into: &mut Option<Histogram<u64>>, from: Option<&Histogram<u64>>) {
    let Some(from) = from else { return };
    match into {
        // Same bounds everywhere, so addition cannot fail.
        Some(h) => {
            let _ = h.add(from);
        }
        None => *into = Some(from.clone()),
    }
}

/// Summary in milliseconds: `{"count":..,"p50":..,...,"max":..}`.
pub fn summary_json(out: &mut String, h: Option<&Histogram<u64>>) {
    let Some(h) = h.filter(|h| !h.is_empty()) else {
        out.push_str(r#"{"count":0}"#);
        return;
    };
    let ms = |us: u64| us as f64 / 1000.0;
    let _ = write!(
        out,
        r#"{{"count":{},"p50":{:.3},"p90":{:.3},"p99":{:.3},"p99.9":{:.3},"max":{:.3},"mean":{:.3}}}"#,
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        h.mean() / 1000.0,
    );
}

/// The percentile distribution in HdrHistogram's `.hgrm` text format, values
/// in milliseconds (what HdrHistogram's plotter reads).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::with_capacity(8192);
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / 1000.0;
        if q < 1.0 {
            let _ = writeln!(
                out,
                "{value:12.3} {q:14.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{value:12.3} {q:14.12} {total:10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_within_one_percent() {
        let mut slot = None;
        for us in 1..=10_000 {
            record(&mut slot, us);
        }
        let h = slot.unwrap();
        let p99 = h.value_at_quantile(0.99) as f64;
        assert!((p99 - 9_900.0).abs() / 9_900.0 < 0.01, "{p99}");
        // An hour and more saturate instead of failing.
        let mut slot = None;
        record(&mut slot, u64::MAX);
        assert_eq!(slot.unwrap().len(), 1);
    }

    #[test]
    fn hgrm_ends_at_total_count() {
        let mut slot = None;
        for us in [100, 200, 300, 400] {
            record(&mut slot, us);
        }
        let text = hgrm(slot.as_ref().unwrap());
        let last = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap();
        let cols: Vec<&str> = last.split_whitespace().collect();
        assert_eq!(cols[2], "4", "{text}");
        assert!(text.contains("Total count    =            4"));
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = None;
        let mut b = None;
        record(&mut a, 10);
        record(&mut b, 20);
        record(&mut b, 30);
        merge(&mut a, b.as_ref());
        assert_eq!(a.unwrap().len(), 3);
    }
}
