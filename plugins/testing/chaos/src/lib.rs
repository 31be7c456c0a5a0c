//! Test plugin for the host's sandbox: passes every record through unchanged, except values
//! that ask it to misbehave:
//! - `chaos:loop` spins forever (the epoch deadline must stop it);
//! - `chaos:grow` allocates until memory runs out (the memory cap must stop it);
//! - `chaos:panic` panics, which traps the instance;
//! - `chaos:error` returns a per-record error, the well-behaved way to fail.
//!
//! Config: `{"outputs": ["late", …]}` declares named outputs (records never go there; it lets
//! tests check the wiring of named outputs), `{"fail_init": true}` makes `init` refuse,
//! `{"spin_per_record": N}` burns N loop iterations per record (a slow stage, for backpressure
//! tests: the clock is frozen inside a stage, so it cannot sleep), `{"stall_at_offset": O,
//! "stall_spin": N}` burns N iterations on records at offset O (a stage that stalls once).

use weir_sdk::{Context, Emitter, Record, Stage};

/// The stage.
pub struct Chaos {
    outputs: Vec<String>,
    spin_per_record: u64,
    stall_at_offset: Option<i64>,
    stall_spin: u64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    outputs: Vec<String>,
    #[serde(default)]
    fail_init: bool,
    #[serde(default)]
    spin_per_record: u64,
    stall_at_offset: Option<i64>,
    #[serde(default)]
    stall_spin: u64,
}

impl Stage for Chaos {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("bad chaos config: {e}"))?;
        if config.fail_init {
            return Err("chaos was asked to fail in init".into());
        }
        Ok(Chaos {
            outputs: config.outputs,
            spin_per_record: config.spin_per_record,
            stall_at_offset: config.stall_at_offset,
            stall_spin: config.stall_spin,
        })
    }

    fn outputs(&self) -> Vec<String> {
        self.outputs.clone()
    }

    fn process(&mut self, _cx: &Context, record: &Record, out: &mut Emitter) -> Result<(), String> {
        let spin = if self.stall_at_offset == Some(record.offset) {
            self.stall_spin
        } else {
            self.spin_per_record
        };
        // Data-dependent stores into a table that is then inspected: the loop really runs.
        let mut table = [0u64; 256];
        let mut acc = record.offset as u64 | 1;
        for i in 0..spin {
            acc = acc.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i);
            table[(acc >> 56) as usize] ^= acc;
        }
        if std::hint::black_box(&table).contains(&u64::MAX) {
            return Err("chaos spun into a full word".into());
        }
        match record.value {
            b"chaos:loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            b"chaos:grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            b"chaos:panic" => panic!("chaos was asked to panic"),
            b"chaos:error" => Err("chaos was asked to fail this record".into()),
            value => {
                out.emit(0, record.key, value, record.timestamp_ms, record.headers);
                Ok(())
            }
        }
    }
}

weir_sdk::export_stage!(Chaos);
