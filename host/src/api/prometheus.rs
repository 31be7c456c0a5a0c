//! `GET /metrics`: every pipeline's counters in the Prometheus text format, one family at a
//! time (a family's samples must stand together), labelled by pipeline and by stage, sink,
//! topic and partition.

use std::sync::Arc;

use crate::{
    metrics::{Exposition, Histogram, Labels},
    runtime::{Metrics, progress::StageFigures},
    supervisor::{Managed, State, Supervisor},
};

/// One pipeline, as the families read it.
struct Pipeline {
    name: String,
    up: bool,
    restarts: u64,
    checkpoint_failures: u64,
    metrics: Option<Arc<Metrics>>,
    stages: Vec<StageFigures>,
    sinks: Vec<(String, u64)>,
}

impl Pipeline {
    fn of(m: &Managed) -> Pipeline {
        let metrics = m.metrics();
        Pipeline {
            name: m.name().to_string(),
            up: m.state() == State::Running,
            restarts: m.restarts(),
            checkpoint_failures: m.checkpoint_failures(),
            stages: metrics
                .as_ref()
                .map(|m| m.stage_figures())
                .unwrap_or_default(),
            sinks: metrics
                .as_ref()
                .map(|m| m.sink_figures())
                .unwrap_or_default(),
            metrics,
        }
    }
}

/// A family of one sample per pipeline.
fn per_pipeline(
    out: &mut Exposition,
    all: &[Pipeline],
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&Pipeline) -> Option<f64>,
) {
    out.family(name, kind, help);
    for p in all {
        if let Some(v) = value(p) {
            out.sample(name, &[("pipeline", &p.name)], v);
        }
    }
}

/// A family of one sample per stage.
fn per_stage(
    out: &mut Exposition,
    all: &[Pipeline],
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&StageFigures) -> Option<f64>,
) {
    out.family(name, kind, help);
    for p in all {
        for s in &p.stages {
            if let Some(v) = value(s) {
                out.sample(name, &[("pipeline", &p.name), ("stage", &s.name)], v);
            }
        }
    }
}

/// A histogram family of one histogram per pipeline.
fn histograms(
    out: &mut Exposition,
    all: &[Pipeline],
    (name, help): (&str, &str),
    histogram: impl Fn(&Metrics) -> &Histogram,
) {
    out.family(name, "histogram", help);
    for p in all {
        if let Some(m) = &p.metrics {
            let labels: Labels<'_> = &[("pipeline", &p.name)];
            out.histogram(name, labels, histogram(m));
        }
    }
}

/// The text of `/metrics`.
pub fn render(supervisor: &Supervisor) -> String {
    let all: Vec<Pipeline> = supervisor.all().iter().map(|m| Pipeline::of(m)).collect();
    let run = |p: &Pipeline| p.metrics.clone();
    let mut out = Exposition::default();
    per_pipeline(
        &mut out,
        &all,
        ("weir_pipeline_up", "gauge", "1 while the pipeline runs"),
        |p| Some(f64::from(u8::from(p.up))),
    );
    per_pipeline(
        &mut out,
        &all,
        (
            "weir_pipeline_restarts_total",
            "counter",
            "Restarts after failures",
        ),
        |p| Some(p.restarts as f64),
    );
    per_pipeline(
        &mut out,
        &all,
        (
            "weir_source_records_total",
            "counter",
            "Records the source handed out in the current run",
        ),
        |p| run(p).map(|m| m.records_read() as f64),
    );
    per_stage(
        &mut out,
        &all,
        (
            "weir_stage_records_in_total",
            "counter",
            "Records into the stage",
        ),
        |s| Some(s.records_in as f64),
    );
    per_stage(
        &mut out,
        &all,
        (
            "weir_stage_records_out_total",
            "counter",
            "Records the stage emitted",
        ),
        |s| Some(s.records_out as f64),
    );
    per_stage(
        &mut out,
        &all,
        (
            "weir_stage_errors_total",
            "counter",
            "Records the stage failed (sent to the dead letters)",
        ),
        |s| Some(s.errors as f64),
    );
    out.family(
        "weir_sink_records_total",
        "counter",
        "Records the sink wrote",
    );
    for p in &all {
        for (sink, n) in &p.sinks {
            out.sample(
                "weir_sink_records_total",
                &[("pipeline", &p.name), ("sink", sink)],
                *n as f64,
            );
        }
    }
    per_pipeline(
        &mut out,
        &all,
        (
            "weir_dead_letters_total",
            "counter",
            "Records sent to the dead letters",
        ),
        |p| run(p).map(|m| m.dead_letter_count() as f64),
    );
    histograms(
        &mut out,
        &all,
        (
            "weir_end_to_end_latency_seconds",
            "From a record entering the stages to its sink making it visible",
        ),
        |m| m.latency(),
    );
    per_pipeline(
        &mut out,
        &all,
        (
            "weir_checkpoints_total",
            "counter",
            "Checkpoints committed in the current run",
        ),
        |p| run(p).map(|m| m.checkpoint_figures().0 as f64),
    );
    per_pipeline(
        &mut out,
        &all,
        (
            "weir_checkpoint_failures_total",
            "counter",
            "Runs that failed at a checkpoint",
        ),
        |p| Some(p.checkpoint_failures as f64),
    );
    histograms(
        &mut out,
        &all,
        (
            "weir_checkpoint_duration_seconds",
            "Checkpoint barrier to commit",
        ),
        |m| m.checkpoint_durations(),
    );
    per_pipeline(
        &mut out,
        &all,
        (
            "weir_checkpoint_bytes",
            "gauge",
            "Bytes the newest checkpoint committed",
        ),
        |p| run(p).map(|m| m.last_checkpoint().map_or(0, |c| c.bytes) as f64),
    );
    per_pipeline(
        &mut out,
        &all,
        (
            "weir_backpressure_seconds_total",
            "counter",
            "Time the source was held back by a full pipeline",
        ),
        |p| run(p).map(|m| m.held_back_time().as_secs_f64()),
    );
    out.family(
        "weir_kafka_consumer_lag",
        "gauge",
        "Records between the source's position and the partition's end",
    );
    for p in &all {
        for lag in p.metrics.as_ref().map(|m| m.lag()).unwrap_or_default() {
            out.sample(
                "weir_kafka_consumer_lag",
                &[
                    ("pipeline", &p.name),
                    ("topic", &lag.topic),
                    ("partition", &lag.partition.to_string()),
                ],
                lag.lag as f64,
            );
        }
    }
    per_stage(
        &mut out,
        &all,
        (
            "weir_plugin_fuel_consumed_total",
            "counter",
            "Fuel the stage's plugin burnt (stages with fuel_per_call)",
        ),
        |s| (s.fuel > 0).then_some(s.fuel as f64),
    );
    per_stage(
        &mut out,
        &all,
        (
            "weir_plugin_memory_bytes",
            "gauge",
            "Linear memory of the stage's instance",
        ),
        |s| Some(s.memory_bytes as f64),
    );
    per_stage(
        &mut out,
        &all,
        (
            "weir_plugin_traps_total",
            "counter",
            "Instances replaced after a trap",
        ),
        |s| Some(s.traps as f64),
    );
    per_stage(
        &mut out,
        &all,
        (
            "weir_plugin_swaps_total",
            "counter",
            "Hot swaps and rollbacks of the stage's plugin",
        ),
        |s| Some(s.swaps as f64),
    );
    per_stage(
        &mut out,
        &all,
        (
            "weir_plugin_swap_pause_seconds",
            "gauge",
            "Time the last swap kept the stage from processing",
        ),
        |s| Some(s.swap_pause_us as f64 / 1e6),
    );
    out.finish()
}
