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
//! tests: the clock is frozen inside a stage, so it cannot sleep).

use weir_sdk::{Context, Emitter, Record, Stage};

/// The stage.
pub struct Chaos {
    outputs: Vec<String>,
    spin_per_record: u64,
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
        })
    }

    fn outputs(&self) -> Vec<String> {
        self.outputs.clone()
    }

    fn process(&mut self, _cx: &Context, record: &Record, out: &mut Emitter) -> Result<(), String> {
        let mut n: u64 = 0;
        for _ in 0..self.spin_per_record {
            n = std::hint::black_box(n.wrapping_add(1));
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
