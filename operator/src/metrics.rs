//! Prometheus metrics of the operator: reconciles by result, errors by kind,
//! reconcile durations, membership operations by kind and reason.

use prometheus::Encoder;
use prometheus::Histogram;
use prometheus::HistogramOpts;
use prometheus::IntCounterVec;
use prometheus::IntGauge;
use prometheus::Opts;
use prometheus::Registry;
use prometheus::TextEncoder;

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub errors: IntCounterVec,
    pub reconcile_seconds: Histogram,
    pub membership_operations: IntCounterVec,
    /// 1 while this replica leads.
    pub leading: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "kvc_operator_reconciles_total",
                "Reconcile passes by result",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "kvc_operator_reconcile_errors_total",
                "Reconcile errors by kind",
            ),
            &["kind"],
        )?;
        let reconcile_seconds = Histogram::with_opts(HistogramOpts::new(
            "kvc_operator_reconcile_duration_seconds",
            "Duration of a reconcile pass",
        ))?;
        let leading = IntGauge::new(
            "kvc_operator_leading",
            "1 while this replica holds the leader-election Lease and runs the controller",
        )?;
        registry.register(Box::new(leading.clone()))?;
        let membership_operations = IntCounterVec::new(
            Opts::new(
                "kvc_operator_membership_operations_total",
                "Membership steps taken or refused, by operation kind and reason",
            ),
            &["kind", "reason"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(reconcile_seconds.clone()))?;
        registry.register(Box::new(membership_operations.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            reconcile_seconds,
            membership_operations,
            leading,
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
