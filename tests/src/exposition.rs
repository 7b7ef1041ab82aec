//! Reading numbers back from a collector's `/metrics` text.

/// The value of the sample written exactly `series` (a name, with its labels if it has any).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every sample named `name`, whatever its labels (0 when there is none).
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, sample) = line.rsplit_once(' ')?;
            let sample_name = series.split_once('{').map_or(series, |(n, _)| n);
            (sample_name == name).then(|| sample.parse::<f64>().ok())?
        })
        .sum()
}

/// The sum of every sample named `name` whose labels include `label` (written `key="value"`),
/// whatever its other labels: for an exposition with labels a test cannot know up front (the
/// OpenTelemetry Collector's adds its instance id and version). 0 when there is none.
pub fn sum_where(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, sample) = line.rsplit_once(' ')?;
            let (sample_name, labels) = series.split_once('{')?;
            let labels = labels.strip_suffix('}')?;
            let matches = sample_name == name && labels.split(',').any(|l| l == label);
            matches.then(|| sample.parse::<f64>().ok())?
        })
        // An empty sum is -0.0; a count of nothing reads 0.
        .sum::<f64>()
        + 0.0
}

/// Asserts that `text` has a sample line for each of `expected`. Written `series value`, it
/// must be that whole line (`x 7` is not `x 70`); written `series` alone, any value will do.
#[track_caller]
pub fn assert_exposes(text: &str, expected: &[&str]) {
    for line in expected {
        let with_value = format!("{line} ");
        assert!(
            text.lines()
                .any(|l| l == *line || l.starts_with(&with_value)),
            "{line} missing from\n{text}"
        );
    }
}

/// The counters that account for every record a collector accepted, read from `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accounting {
    /// `usage_collector_records_accepted_total`, all signals: records acknowledged.
    pub accepted: f64,
    /// `usage_collector_events_written_total`: events in committed batches (a repeat counts
    /// again).
    pub written: f64,
    /// `usage_collector_dead_letters_total`, all tables: events the database refused for good.
    pub dead_letters: f64,
    /// `usage_collector_records_dropped_total`, all reasons: accepted records lost.
    pub dropped: f64,
    /// `usage_collector_spool_requests`: requests still in the spool.
    pub spooled_requests: f64,
}

impl Accounting {
    /// Reads the counters from an exposition.
    pub fn read(text: &str) -> Self {
        Self {
            accepted: sum(text, "usage_collector_records_accepted_total"),
            written: sum(text, "usage_collector_events_written_total"),
            dead_letters: sum(text, "usage_collector_dead_letters_total"),
            dropped: sum(text, "usage_collector_records_dropped_total"),
            spooled_requests: sum(text, "usage_collector_spool_requests"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE usage_collector_dead_letters counter\n\
        usage_collector_dead_letters_total{table=\"a\"} 2\n\
        usage_collector_dead_letters_total{table=\"b\"} 3\n\
        usage_collector_dead_letters_lost_total 7\n\
        usage_collector_spool_requests 0\n# EOF\n";

    #[test]
    fn sums_one_name_across_labels_and_no_other_name() {
        assert_eq!(sum(TEXT, "usage_collector_dead_letters_total"), 5.0);
        assert_eq!(sum(TEXT, "usage_collector_dead_letters_lost_total"), 7.0);
        assert_eq!(sum(TEXT, "usage_collector_absent_total"), 0.0);
        assert_eq!(value(TEXT, "usage_collector_spool_requests"), Some(0.0));
        assert_eq!(value(TEXT, "usage_collector_dead_letters_total"), None);
    }

    #[test]
    fn an_expected_line_is_a_whole_sample() {
        assert_exposes(
            TEXT,
            &[
                "usage_collector_dead_letters_total{table=\"a\"} 2",
                "usage_collector_dead_letters_lost_total",
            ],
        );
        let partial = std::panic::catch_unwind(|| {
            assert_exposes(TEXT, &["usage_collector_dead_letters_lost_total 7"]);
            assert_exposes(TEXT, &["usage_collector_dead_letters_lost_total 70"]);
        });
        assert!(partial.is_err(), "7 taken for 70");
        let prefix = std::panic::catch_unwind(|| {
            assert_exposes(TEXT, &["usage_collector_dead_letters"]);
        });
        assert!(prefix.is_err(), "a name prefix taken for a series");
    }
}
