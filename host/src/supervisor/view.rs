//! What the API shows of a pipeline: its summary, its detail with the stage graph, and its
//! checkpoints and savepoints. Every field is always present (`null` when it has no value), as
//! the OpenAPI document says.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Managed, State, history::PluginRef};
use crate::{
    checkpoint::{Manifest, Offset, Savepoint},
    pipeline::Route,
    runtime::progress::LastCheckpoint,
};

/// How a state is written.
pub fn state_name(state: State) -> &'static str {
    match state {
        State::Starting => "starting",
        State::Running => "running",
        State::Restarting => "restarting",
        State::Failed => "failed",
        State::Stopping => "stopping",
        State::Stopped => "stopped",
        State::Finished => "finished",
    }
}

/// A pipeline in a list.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Its name.
    pub name: String,
    /// Where it is in its life.
    pub state: State,
    /// Its pipeline file.
    pub file: String,
    /// When its current run started.
    pub started_ms: Option<i64>,
    /// Restarts after failures.
    pub restarts: u64,
    /// When it tries again, while restarting.
    pub next_restart_ms: Option<i64>,
    /// Why it last failed.
    pub error: Option<String>,
    /// Records from the source in the current run.
    pub records_in: u64,
    /// …per second, over the last five seconds.
    pub records_in_per_sec: f64,
    /// Records the sinks wrote, all together.
    pub records_out: u64,
    /// Records sent to the dead letters.
    pub dead_letters: u64,
    /// The newest committed checkpoint of the current run.
    pub last_checkpoint: Option<CheckpointBrief>,
}

/// The newest checkpoint, briefly.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointBrief {
    /// Its number.
    pub id: u64,
    /// When its barrier left the source.
    pub started_ms: i64,
    /// Barrier to commit.
    pub duration_ms: u64,
    /// Files it committed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl From<LastCheckpoint> for CheckpointBrief {
    fn from(c: LastCheckpoint) -> CheckpointBrief {
        CheckpointBrief {
            id: c.id,
            started_ms: c.started_ms,
            duration_ms: c.duration.as_millis() as u64,
            files: c.files,
            bytes: c.bytes,
        }
    }
}

/// A pipeline in detail.
#[derive(Clone, Debug, Serialize)]
pub struct Detail {
    /// Its summary's fields.
    #[serde(flatten)]
    pub summary: Summary,
    /// The source.
    pub source: SourceView,
    /// The stages, in order.
    pub stages: Vec<StageView>,
    /// The sinks, in order.
    pub sinks: Vec<SinkView>,
    /// Source, stages and sinks, and what flows between them.
    pub graph: Graph,
    /// Time the source was held back by a full pipeline in the current run.
    pub backpressure_ms: u64,
    /// Checkpoints of the current run.
    pub checkpoints: CheckpointFigures,
}

/// The source in a detail.
#[derive(Clone, Debug, Serialize)]
pub struct SourceView {
    /// Its type key.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its label.
    pub label: String,
    /// Per Kafka partition: records between the source's position and the partition's end.
    pub lag: Vec<LagView>,
}

/// A Kafka partition's lag.
#[derive(Clone, Debug, Serialize)]
pub struct LagView {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Records behind.
    pub lag: i64,
}

/// A stage in a detail.
#[derive(Clone, Debug, Serialize)]
pub struct StageView {
    /// Its name.
    pub name: String,
    /// The plugin it runs.
    pub plugin: Option<PluginRef>,
    /// Where a rollback goes.
    pub previous: Option<PluginRef>,
    /// Its named outputs.
    pub outputs: Vec<String>,
    /// Records in.
    pub records_in: u64,
    /// Records out.
    pub records_out: u64,
    /// Records it failed.
    pub errors: u64,
    /// Records in per second.
    pub records_in_per_sec: f64,
    /// Swaps this run.
    pub swaps: u64,
    /// Instances replaced after a trap this run.
    pub traps: u64,
    /// Linear memory of its instance.
    pub memory_bytes: u64,
    /// Fuel burnt, when it is metered.
    pub fuel_consumed: Option<u64>,
}

/// A sink in a detail.
#[derive(Clone, Debug, Serialize)]
pub struct SinkView {
    /// Its name.
    pub name: String,
    /// Its type key.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its `input:`.
    pub input: String,
    /// Records written this run.
    pub records_written: u64,
    /// …per second.
    pub records_per_sec: f64,
}

/// The stage graph.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Graph {
    /// Source, stages, sinks and, when a sink reads it, `dlq`.
    pub nodes: Vec<Node>,
    /// What flows where.
    pub edges: Vec<Edge>,
}

/// A node of the graph.
#[derive(Clone, Debug, Serialize)]
pub struct Node {
    /// `source`, `dlq`, `stage:NAME` or `sink:NAME` (a sink may have a stage's name).
    pub id: String,
    /// `source`, `stage`, `sink` or `dlq`.
    pub kind: &'static str,
    /// For people.
    pub label: String,
}

/// An edge of the graph.
#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    /// Node id.
    pub from: String,
    /// Node id.
    pub to: String,
    /// The named output it carries, or empty.
    pub label: String,
}

/// A run's checkpoints.
#[derive(Clone, Debug, Serialize, Default)]
pub struct CheckpointFigures {
    /// Committed.
    pub completed: u64,
    /// Runs that failed (each failure ends a run; a restart follows).
    pub failed: u64,
    /// Mean barrier-to-commit time.
    pub mean_ms: f64,
    /// Longest.
    pub max_ms: u64,
}

/// A checkpoint's manifest, as the API lists it.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointView {
    /// Its number.
    pub id: u64,
    /// When its barrier left the source.
    pub started_ms: i64,
    /// Barrier to manifest.
    pub precommit_ms: u64,
    /// Files the sinks committed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Where the source stands after it.
    pub offsets: Vec<Offset>,
    /// Each committing sink's commit.
    pub sinks: BTreeMap<String, serde_json::Value>,
    /// The stages' state files.
    pub state: Option<crate::state::StateRef>,
    /// The plugin each stage runs after it.
    pub plugins: BTreeMap<String, String>,
}

impl CheckpointView {
    /// The view of `manifest`.
    pub fn of(m: Manifest) -> CheckpointView {
        CheckpointView {
            id: m.checkpoint,
            started_ms: m.started_ms,
            precommit_ms: m.precommit_ms,
            files: m.files,
            bytes: m.bytes,
            offsets: m.offsets,
            sinks: m.sinks,
            state: m.state,
            plugins: m.plugins,
        }
    }
}

/// A savepoint, as the API lists it.
#[derive(Clone, Debug, Serialize)]
pub struct SavepointView {
    /// Its number.
    pub id: u64,
    /// The checkpoint it keeps.
    pub checkpoint: u64,
    /// When it was stored.
    pub created_ms: i64,
    /// Where the source stands.
    pub offsets: Vec<Offset>,
    /// The plugin each stage ran.
    pub plugins: BTreeMap<String, String>,
    /// Bytes of its state snapshot.
    pub state_bytes: u64,
}

impl SavepointView {
    /// The view of `savepoint`.
    pub fn of(s: Savepoint) -> SavepointView {
        SavepointView {
            id: s.id,
            checkpoint: s.manifest.checkpoint,
            created_ms: s.created_ms,
            state_bytes: s.manifest.state.as_ref().map_or(0, |s| s.bytes),
            offsets: s.manifest.offsets,
            plugins: s.manifest.plugins,
        }
    }
}

impl Managed {
    /// The pipeline's summary.
    pub fn summary(&self) -> Summary {
        let inner = self.inner();
        let metrics = inner.run.as_ref().map(|r| &r.metrics);
        let (rate, ..) = inner.rates.per_sec(inner.state);
        Summary {
            name: self.name.clone(),
            state: inner.state,
            file: self.file.display().to_string(),
            started_ms: inner.started_ms,
            restarts: inner.restarts,
            next_restart_ms: inner.next_restart_ms,
            error: inner.error.clone(),
            records_in: metrics.map_or(0, |m| m.records_read()),
            records_in_per_sec: round(rate),
            records_out: metrics.map_or(0, |m| m.records_written()),
            dead_letters: metrics.map_or(0, |m| m.dead_letter_count()),
            last_checkpoint: metrics.and_then(|m| m.last_checkpoint()).map(Into::into),
        }
    }

    /// The pipeline in detail: its summary, with its stages, sinks and graph as last loaded.
    pub fn detail(&self) -> Detail {
        let summary = self.summary();
        let failed = self.checkpoint_failures();
        let inner = self.inner();
        let metrics = inner.run.as_ref().map(|r| r.metrics.clone());
        let (_, stage_rates, sink_rates) = inner.rates.per_sec(inner.state);
        let Some(shape) = inner.shape.clone() else {
            return Detail {
                summary,
                source: SourceView {
                    kind: String::new(),
                    label: String::new(),
                    lag: Vec::new(),
                },
                stages: Vec::new(),
                sinks: Vec::new(),
                graph: Graph::default(),
                backpressure_ms: 0,
                checkpoints: CheckpointFigures::default(),
            };
        };
        let figures = metrics
            .as_ref()
            .map(|m| m.stage_figures())
            .unwrap_or_default();
        let written = metrics
            .as_ref()
            .map(|m| m.sink_figures())
            .unwrap_or_default();
        let stages = shape
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let f = figures.get(i).cloned().unwrap_or_default();
                let versions = inner.versions.get(&s.name);
                StageView {
                    name: s.name.clone(),
                    plugin: running(&f, versions),
                    previous: versions.and_then(|v| v.previous.clone()),
                    outputs: s.outputs.clone(),
                    records_in: f.records_in,
                    records_out: f.records_out,
                    errors: f.errors,
                    records_in_per_sec: round(stage_rates.get(i).copied().unwrap_or(0.0)),
                    swaps: f.swaps,
                    traps: f.traps,
                    memory_bytes: f.memory_bytes,
                    fuel_consumed: s.limits.fuel_per_call.map(|_| f.fuel),
                }
            })
            .collect();
        let sinks = shape
            .sinks
            .iter()
            .enumerate()
            .map(|(i, s)| SinkView {
                name: s.name.clone(),
                kind: s.kind.to_string(),
                input: s.input.clone(),
                records_written: written.get(i).map_or(0, |(_, n)| *n),
                records_per_sec: round(sink_rates.get(i).copied().unwrap_or(0.0)),
            })
            .collect();
        let (completed, mean, max) = metrics
            .as_ref()
            .map(|m| m.checkpoint_figures())
            .unwrap_or_default();
        Detail {
            source: SourceView {
                kind: shape.source.to_string(),
                label: shape.source.to_string(),
                lag: metrics
                    .as_ref()
                    .map(|m| m.lag())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| LagView {
                        topic: l.topic,
                        partition: l.partition,
                        lag: l.lag,
                    })
                    .collect(),
            },
            graph: graph(&shape),
            stages,
            sinks,
            backpressure_ms: metrics
                .as_ref()
                .map_or(0, |m| m.held_back_time().as_millis() as u64),
            checkpoints: CheckpointFigures {
                completed,
                failed,
                mean_ms: mean.as_millis() as f64,
                max_ms: max.as_millis() as u64,
            },
            summary,
        }
    }
}

/// The plugin a stage runs, as its thread reports it (between a swap's barrier and its
/// commit, that is the new version already), named as the versions name it.
fn running(
    figures: &crate::runtime::progress::StageFigures,
    versions: Option<&super::history::StageVersions>,
) -> Option<PluginRef> {
    let known = versions.into_iter().flat_map(|v| [&v.current, &v.previous]);
    let mut known = known.flatten();
    if figures.plugin.is_empty() {
        return versions.and_then(|v| v.current.clone());
    }
    Some(
        known
            .find(|p| *p.sha256 == *figures.plugin)
            .cloned()
            .unwrap_or_else(|| PluginRef {
                sha256: figures.plugin.to_string(),
                name: super::short(&figures.plugin).to_string(),
                since_ms: crate::plugin::now_ms(),
            }),
    )
}

/// Two decimals are plenty for a rate.
fn round(rate: f64) -> f64 {
    (rate * 100.0).round() / 100.0
}

/// The graph of a pipeline: source → stages in order → sinks by their inputs.
fn graph(shape: &super::Shape) -> Graph {
    let mut g = Graph::default();
    g.nodes.push(Node {
        id: "source".into(),
        kind: "source",
        label: shape.source.into(),
    });
    let mut previous = "source".to_string();
    for s in &shape.stages {
        let id = format!("stage:{}", s.name);
        g.nodes.push(Node {
            id: id.clone(),
            kind: "stage",
            label: s.name.clone(),
        });
        g.edges.push(Edge {
            from: previous,
            to: id.clone(),
            label: String::new(),
        });
        previous = id;
    }
    if shape.sinks.iter().any(|s| s.route == Route::Dlq) {
        g.nodes.push(Node {
            id: "dlq".into(),
            kind: "dlq",
            label: "dead letters".into(),
        });
    }
    for s in &shape.sinks {
        let id = format!("sink:{}", s.name);
        g.nodes.push(Node {
            id: id.clone(),
            kind: "sink",
            label: format!("{} ({})", s.name, s.kind),
        });
        let (from, label) = match s.route {
            Route::Source => ("source".to_string(), String::new()),
            Route::Dlq => ("dlq".to_string(), String::new()),
            Route::Stage { stage, output } => {
                let stage = &shape.stages[stage];
                let output = output
                    .checked_sub(1)
                    .and_then(|n| stage.outputs.get(n as usize))
                    .cloned()
                    .unwrap_or_default();
                (format!("stage:{}", stage.name), output)
            }
        };
        g.edges.push(Edge {
            from,
            to: id,
            label,
        });
    }
    g
}
