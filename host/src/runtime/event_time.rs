//! Event time: the watermark the stage chain hands its stages.
//!
//! Each source partition's watermark is the newest event time seen in it minus the bound on
//! out-of-orderness: no record older than that is expected from it any more. The pipeline's
//! watermark is the minimum over the partitions that are not idle (a partition that sent
//! nothing for the idle timeout stops holding the others back, and counts again when it
//! sends), minus the allowed lateness, and it never goes back. A record older than the
//! watermark is *late*: the stage that keeps windows sends it to its `late` output.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::record::Batch;

/// The watermark settings of a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How far out of order records may arrive within a partition, in ms.
    pub max_out_of_orderness_ms: i64,
    /// How long a partition may send nothing before it stops holding the watermark back.
    pub idle_timeout: Duration,
    /// How much longer windows wait for late records, in ms.
    pub allowed_lateness_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_out_of_orderness_ms: 5_000,
            idle_timeout: Duration::from_secs(30),
            allowed_lateness_ms: 0,
        }
    }
}

/// A partition's newest event time, as a checkpoint keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTime {
    /// Topic (or the generator's or file's name).
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Newest event time seen, in ms since the epoch.
    pub max_event_ms: i64,
}

/// One partition's clock.
struct Partition {
    /// Newest event time seen.
    max_event_ms: i64,
    /// When it last sent records.
    seen: Instant,
}

/// The watermark of a running pipeline.
pub struct Watermarks {
    settings: Settings,
    partitions: HashMap<(String, i32), Partition>,
    /// The last watermark handed to the stages.
    emitted: i64,
}

impl Watermarks {
    /// A clock that starts where a checkpoint left `partitions`.
    pub fn new(settings: Settings, partitions: &[PartitionTime]) -> Watermarks {
        let now = Instant::now();
        let mut w = Watermarks {
            settings,
            partitions: partitions
                .iter()
                .map(|p| {
                    (
                        (p.topic.clone(), p.partition),
                        Partition {
                            max_event_ms: p.max_event_ms,
                            seen: now,
                        },
                    )
                })
                .collect(),
            emitted: i64::MIN,
        };
        w.emitted = w.compute(now).unwrap_or(i64::MIN);
        w
    }

    /// Notes a batch's event times.
    pub fn observe(&mut self, batch: &Batch) {
        let Some(newest) = batch.records.iter().map(|r| r.timestamp_ms).max() else {
            return;
        };
        let now = Instant::now();
        match self
            .partitions
            .get_mut(&(batch.topic.clone(), batch.partition))
        {
            Some(p) => {
                p.max_event_ms = p.max_event_ms.max(newest);
                p.seen = now;
            }
            None => {
                self.partitions.insert(
                    (batch.topic.clone(), batch.partition),
                    Partition {
                        max_event_ms: newest,
                        seen: now,
                    },
                );
            }
        }
    }

    fn compute(&self, now: Instant) -> Option<i64> {
        let active = self
            .partitions
            .values()
            .filter(|p| now.duration_since(p.seen) < self.settings.idle_timeout)
            .map(|p| p.max_event_ms)
            .min()?;
        Some(
            active
                .saturating_sub(self.settings.max_out_of_orderness_ms)
                .saturating_sub(self.settings.allowed_lateness_ms),
        )
    }

    /// The new watermark, if it moved forward since the last one handed out.
    pub fn advance(&mut self) -> Option<i64> {
        let next = self.compute(Instant::now())?;
        (next > self.emitted).then(|| {
            self.emitted = next;
            next
        })
    }

    /// The last watermark handed out.
    pub fn current(&self) -> i64 {
        self.emitted
    }

    /// Every partition's newest event time, for a checkpoint.
    pub fn snapshot(&self) -> Vec<PartitionTime> {
        let mut out: Vec<_> = self
            .partitions
            .iter()
            .map(|((topic, partition), p)| PartitionTime {
                topic: topic.clone(),
                partition: *partition,
                max_event_ms: p.max_event_ms,
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(partition: i32, times: &[i64]) -> Batch {
        let mut b = Batch::with_capacity("t", partition, times.len(), 0);
        for (i, t) in times.iter().enumerate() {
            b.push(None, b"{}", *t, i as i64, &[]);
        }
        b
    }

    fn settings(bound: i64, idle_ms: u64, lateness: i64) -> Settings {
        Settings {
            max_out_of_orderness_ms: bound,
            idle_timeout: Duration::from_millis(idle_ms),
            allowed_lateness_ms: lateness,
        }
    }

    #[test]
    fn the_slowest_partition_holds_the_watermark_back() {
        let mut w = Watermarks::new(settings(100, 60_000, 0), &[]);
        assert_eq!(w.advance(), None, "nothing seen yet");
        w.observe(&batch(0, &[1_000, 5_000, 3_000]));
        assert_eq!(w.advance(), Some(4_900));
        w.observe(&batch(1, &[2_000]));
        assert_eq!(w.advance(), None, "partition 1 is behind: no step back");
        w.observe(&batch(1, &[9_000]));
        assert_eq!(
            w.advance(),
            None,
            "the slowest is partition 0 again, at 4,900"
        );
        w.observe(&batch(0, &[7_000]));
        assert_eq!(w.advance(), Some(6_900));
        assert_eq!(w.current(), 6_900);
    }

    #[test]
    fn idle_partitions_stop_holding_it_back_and_lateness_delays_it() {
        let mut w = Watermarks::new(settings(0, 30, 500), &[]);
        w.observe(&batch(0, &[1_000]));
        w.observe(&batch(1, &[10_000]));
        assert_eq!(w.advance(), Some(500));
        std::thread::sleep(Duration::from_millis(40));
        w.observe(&batch(1, &[11_000]));
        assert_eq!(w.advance(), Some(10_500), "partition 0 went idle");
        w.observe(&batch(0, &[1_500]));
        assert_eq!(
            w.advance(),
            None,
            "back, but the watermark does not go back"
        );
    }

    #[test]
    fn a_restart_resumes_from_the_checkpointed_clocks() {
        let mut w = Watermarks::new(settings(100, 60_000, 0), &[]);
        w.observe(&batch(3, &[8_000]));
        w.advance();
        let saved = w.snapshot();
        let restarted = Watermarks::new(settings(100, 60_000, 0), &saved);
        assert_eq!(restarted.current(), 7_900);
        assert_eq!(saved[0].partition, 3);
    }
}
