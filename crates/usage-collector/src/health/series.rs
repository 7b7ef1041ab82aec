//! The metric types behind [`super::Metrics`], readable as well as writable, so that one set of
//! values feeds both exports: `/metrics` through prometheus-client's own encoders, and the OTLP
//! push through a [`Sample`] snapshot (no exposition text is ever parsed back).
//!
//! Counters and gauges are prometheus-client's. Its `Family` and `Histogram` keep their values
//! private, so labelled series ([`Family`]) and the batch-time [`Histogram`] are small types of
//! our own that encode through the same `MetricEncoder`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;

/// A gauge holding a float (timestamps, ages).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// A label set that can also name its labels for the OTLP push.
pub trait LabelSet: EncodeLabelSet + Clone + Ord + std::fmt::Debug + Send + Sync + 'static {
    /// (key, value) of each label, in declaration order.
    fn pairs(&self) -> Vec<(&'static str, String)>;
}

/// Declares label-set structs: each derives prometheus-client's `EncodeLabelSet` and
/// implements [`LabelSet`], from one field list.
macro_rules! label_sets {
    ($( $(#[doc = $doc:literal])+ $name:ident { $( $(#[doc = $fdoc:literal])+ $field:ident : $ty:ty ),+ $(,)? } )+) => {
        $(
            $(#[doc = $doc])+
            #[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord,
                     prometheus_client::encoding::EncodeLabelSet)]
            pub struct $name { $( $(#[doc = $fdoc])+ pub $field: $ty, )+ }

            impl $crate::health::series::LabelSet for $name {
                fn pairs(&self) -> Vec<(&'static str, String)> {
                    vec![$( (stringify!($field), self.$field.to_string()) ),+]
                }
            }
        )+
    };
}
pub(crate) use label_sets;

/// One exported value: what a series holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub enum Point {
    /// A monotonic count.
    Counter(f64),
    /// A value that goes up and down.
    Gauge(f64),
    /// Bucketed observations.
    Histogram {
        /// Observations.
        count: u64,
        /// Their sum.
        sum: f64,
        /// Upper bounds of the finite buckets.
        bounds: Vec<f64>,
        /// Observations per bucket (not cumulative), one more than `bounds` (the +Inf bucket).
        counts: Vec<u64>,
    },
}

/// One series' value with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// (key, value) labels.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub point: Point,
}

/// A metric whose current values can be read as [`Sample`]s.
pub trait Series {
    /// Appends the current value of every series.
    fn samples(&self, out: &mut Vec<Sample>);
}

impl Series for Counter {
    fn samples(&self, out: &mut Vec<Sample>) {
        out.push(Sample {
            labels: Vec::new(),
            point: Point::Counter(self.get() as f64),
        });
    }
}

impl Series for Counter<f64, AtomicU64> {
    fn samples(&self, out: &mut Vec<Sample>) {
        out.push(Sample {
            labels: Vec::new(),
            point: Point::Counter(self.get()),
        });
    }
}

impl Series for Gauge {
    fn samples(&self, out: &mut Vec<Sample>) {
        out.push(Sample {
            labels: Vec::new(),
            point: Point::Gauge(self.get() as f64),
        });
    }
}

impl Series for FloatGauge {
    fn samples(&self, out: &mut Vec<Sample>) {
        out.push(Sample {
            labels: Vec::new(),
            point: Point::Gauge(self.get()),
        });
    }
}

/// Series of one metric, one per label set (sorted, so the exposition is stable).
#[derive(Debug)]
pub struct Family<L, M> {
    series: Arc<RwLock<BTreeMap<L, M>>>,
}

impl<L, M> Clone for Family<L, M> {
    fn clone(&self) -> Self {
        Self {
            series: self.series.clone(),
        }
    }
}

impl<L, M> Default for Family<L, M> {
    fn default() -> Self {
        Self {
            series: Arc::default(),
        }
    }
}

impl<L: LabelSet, M: Clone + Default> Family<L, M> {
    /// The series for `labels`, created (at zero) if new. Metric handles are shared: the
    /// returned value counts into the family.
    pub fn get_or_create(&self, labels: &L) -> M {
        if let Some(metric) = self.get(labels) {
            return metric;
        }
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        series.entry(labels.clone()).or_default().clone()
    }

    /// The series for `labels`, if it exists.
    pub fn get(&self, labels: &L) -> Option<M> {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        series.get(labels).cloned()
    }

    /// How many series exist.
    pub fn len(&self) -> usize {
        self.series.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no series exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<L: LabelSet, M: EncodeMetric + TypedMetric> EncodeMetric for Family<L, M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        for (labels, metric) in series.iter() {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

impl<L: LabelSet, M: Series> Series for Family<L, M> {
    fn samples(&self, out: &mut Vec<Sample>) {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        for (labels, metric) in series.iter() {
            let start = out.len();
            metric.samples(out);
            let pairs = labels.pairs();
            for sample in &mut out[start..] {
                sample.labels.clone_from(&pairs);
            }
        }
    }
}

#[derive(Debug)]
struct Buckets {
    sum: f64,
    count: u64,
    /// Per bucket, the +Inf bucket last.
    counts: Vec<u64>,
}

/// Observations in fixed buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: Arc<[f64]>,
    inner: Arc<Mutex<Buckets>>,
}

impl Histogram {
    /// A histogram with these finite upper bounds (ascending); +Inf is implicit.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Arc<[f64]> = bounds.into_iter().filter(|b| b.is_finite()).collect();
        let counts = vec![0; bounds.len() + 1];
        Self {
            bounds,
            inner: Arc::new(Mutex::new(Buckets {
                sum: 0.0,
                count: 0,
                counts,
            })),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.sum += value;
        inner.count += 1;
        inner.counts[bucket] += 1;
    }

    /// (count, sum, per-bucket counts).
    fn read(&self) -> (u64, f64, Vec<u64>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.count, inner.sum, inner.counts.clone())
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (count, sum, counts) = self.read();
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Series for Histogram {
    fn samples(&self, out: &mut Vec<Sample>) {
        let (count, sum, counts) = self.read();
        out.push(Sample {
            labels: Vec::new(),
            point: Point::Histogram {
                count,
                sum,
                bounds: self.bounds.to_vec(),
                counts,
            },
        });
    }
}
