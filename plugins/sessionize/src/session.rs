//! A key's open sessions as kept in the host's state, how an event joins them, and what a
//! closed session emits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Config, Event};

/// One session: events of one key, each less than the gap from the next.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    /// Event time of the first event, ms since the epoch.
    pub start: i64,
    /// Event time of the last event.
    pub end: i64,
    /// Number of events.
    pub count: u64,
    /// Sum of the events' amounts (saturating).
    pub amount_sum: i64,
    /// Number of events per value of the type field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub types: BTreeMap<String, u64>,
    /// The earliest event by event time (on a tie, the first to arrive), as it came.
    pub first: Box<RawValue>,
    /// The latest event by event time (on a tie, the last to arrive), as it came.
    pub last: Box<RawValue>,
}

impl Session {
    /// The session of one event.
    pub fn of(event: &Event) -> Session {
        let mut session = Session {
            start: event.time_ms,
            end: event.time_ms,
            count: 0,
            amount_sum: 0,
            types: BTreeMap::new(),
            first: event.raw.to_owned(),
            last: event.raw.to_owned(),
        };
        session.count_in(event);
        session
    }

    /// Adds an event that is less than the gap from this session.
    pub fn add(&mut self, event: &Event) {
        if event.time_ms < self.start {
            self.start = event.time_ms;
            self.first = event.raw.to_owned();
        }
        if event.time_ms >= self.end {
            self.end = event.time_ms;
            self.last = event.raw.to_owned();
        }
        self.count_in(event);
    }

    fn count_in(&mut self, event: &Event) {
        self.count += 1;
        self.amount_sum = self.amount_sum.saturating_add(event.amount);
        if let Some(kind) = &event.kind {
            *self.types.entry(kind.as_ref().to_owned()).or_default() += 1;
        }
    }

    /// Merges `later`, a session that starts after this one ends, into this one.
    fn absorb(&mut self, later: Session) {
        self.end = later.end;
        self.last = later.last;
        self.count += later.count;
        self.amount_sum = self.amount_sum.saturating_add(later.amount_sum);
        for (kind, n) in later.types {
            *self.types.entry(kind).or_default() += n;
        }
    }

    /// When the session closes: `gap` after its last event.
    pub fn closes_at(&self, gap_ms: i64) -> i64 {
        self.end.saturating_add(gap_ms)
    }

    /// Whether an event at `t` belongs with this session.
    fn reaches(&self, t: i64, gap_ms: i64) -> bool {
        self.start.saturating_sub(gap_ms) < t && t < self.closes_at(gap_ms)
    }

    /// Writes the session as the JSON object the stage emits.
    pub fn write_json(&self, key: &str, config: &Config, buf: &mut Vec<u8>) {
        #[derive(Serialize)]
        struct Out<'a> {
            key: &'a str,
            session_start: i64,
            session_end: i64,
            duration_ms: i64,
            count: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            type_counts: Option<&'a BTreeMap<String, u64>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            amount_sum: Option<i64>,
            first_event: &'a RawValue,
            last_event: &'a RawValue,
        }
        let out = Out {
            key,
            session_start: self.start,
            session_end: self.end,
            duration_ms: self.end.saturating_sub(self.start),
            count: self.count,
            type_counts: config.type_field.as_ref().map(|_| &self.types),
            amount_sum: config.amount_field.as_ref().map(|_| self.amount_sum),
            first_event: &self.first,
            last_event: &self.last,
        };
        serde_json::to_writer(buf, &out).expect("a session always serialises");
    }
}

/// Everything the stage keeps for one key: its open sessions, and the time before which its
/// events are late. A key without open sessions has no state at all.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyState {
    /// Events before this time are late: the watermark when the key's state was created (what
    /// came before is forgotten, so it is taken as closed), raised to the close time of every
    /// session the key has emitted since. No event may join a session already emitted.
    pub floor: i64,
    /// The open sessions, in time order; each ends at least the gap before the next starts.
    pub sessions: Vec<Session>,
}

impl KeyState {
    /// The state of a key seen for the first time (or again, once its sessions all closed).
    pub fn new(watermark: i64) -> KeyState {
        KeyState {
            floor: watermark,
            sessions: Vec::new(),
        }
    }

    /// Places an event: it joins (and so merges) every open session it is less than the gap
    /// from, or opens a session of its own. Returns `false`, changing nothing, when it is late:
    /// before the floor, or alone and already more than the gap behind the watermark, so
    /// that its session would have closed.
    pub fn place(&mut self, event: &Event, gap_ms: i64, watermark: i64) -> bool {
        let t = event.time_ms;
        if t < self.floor {
            return false;
        }
        let first = self.sessions.partition_point(|s| s.closes_at(gap_ms) <= t);
        let reached = self.sessions[first..]
            .iter()
            .take_while(|s| s.reaches(t, gap_ms))
            .count();
        if reached == 0 {
            if t.saturating_add(gap_ms) <= watermark {
                return false;
            }
            self.sessions.insert(first, Session::of(event));
            return true;
        }
        let mut merged = self.sessions.drain(first..first + reached);
        let mut session = merged.next().expect("at least one session is reached");
        for later in merged {
            session.absorb(later);
        }
        session.add(event);
        self.sessions.insert(first, session);
        true
    }

    /// Removes and returns the sessions that close at or before `time_ms`, raising the floor
    /// past them.
    pub fn close(&mut self, time_ms: i64, gap_ms: i64) -> Vec<Session> {
        let due = self
            .sessions
            .partition_point(|s| s.closes_at(gap_ms) <= time_ms);
        let closed: Vec<Session> = self.sessions.drain(..due).collect();
        if let Some(last) = closed.last() {
            self.floor = self.floor.max(last.closes_at(gap_ms));
        }
        closed
    }

    /// The state as stored in the host: JSON, so that it reads as text.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a key's state always serialises")
    }

    /// The inverse of [`KeyState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<KeyState, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("a key's state does not decode: {e}"))
    }
}
