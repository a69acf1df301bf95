//! Crash torture: seeded random workloads over `DiskStorage` on the simulated disk; the
//! harness and what it checks are in `keel_harness::torture`.
//!
//! Environment:
//! - `KEEL_TORTURE_STATES`: crash states to check (default 2,500, what CI runs; the
//!   misdirected-write test runs a fifth as many, the fault test one case per 40);
//! - `KEEL_TORTURE_SEED`: replay one case (as printed by a failure) and nothing else;
//! - `KEEL_TORTURE_TRACE=1`: print every call of the workload with both results (for a replay).

use keel_harness::torture::{Fault, crash_case, fault_case};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")))
}

fn seeds(base: u64) -> Box<dyn Iterator<Item = u64>> {
    match env_u64("KEEL_TORTURE_SEED") {
        Some(seed) => Box::new(std::iter::once(seed)),
        None => Box::new((0..).map(move |i| base.wrapping_add(i))),
    }
}

fn run_crash_cases(misdirect: bool, default_states: u64, seed_base: u64) {
    let target = env_u64("KEEL_TORTURE_STATES").map_or(default_states, |n| if misdirect { n / 5 } else { n });
    let replay = env_u64("KEEL_TORTURE_SEED").is_some();
    let (mut states, mut cases) = (0, 0);
    for seed in seeds(seed_base) {
        states += crash_case(seed, misdirect);
        cases += 1;
        if replay || states >= target {
            break;
        }
    }
    let kind = if misdirect { "power loss with misdirected writes" } else { "power loss" };
    eprintln!("{kind}: {states} crash states over {cases} workloads, all checked");
}

#[test]
fn power_loss_at_every_sync_and_between() {
    run_crash_cases(false, 2_500, 1 << 32);
}

#[test]
fn misdirected_writes_are_reported_never_returned() {
    run_crash_cases(true, 500, 3 << 32);
}

#[test]
fn injected_io_failures_latch_and_lose_nothing_durable() {
    let cases = env_u64("KEEL_TORTURE_STATES").map_or(60, |n| (n / 40).max(60));
    for fault in [Fault::SyncEio, Fault::WriteEio, Fault::ShortWrite, Fault::NoSpace] {
        for seed in seeds(2 << 32).take(cases as usize) {
            fault_case(seed, fault);
        }
    }
}
