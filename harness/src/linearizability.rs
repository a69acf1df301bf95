//! Checking histories of a replicated register for linearizability, and the counter and set
//! checks of the fault-injection test (`cli/tests/faults.rs`).
//!
//! The register checker is Wing and Gong's search with Lowe's memoization, as Porcupine and
//! Knossos run it: walk the history's call and return events in time order; at a call, try to
//! linearize the operation now (the model accepts its input and output in the current state),
//! remembering (set of operations linearized, state) pairs already explored; at a return whose
//! operation is not linearized yet, backtrack. Histories are checked one key at a time (a
//! history is linearizable if and only if every key's sub-history is: P-compositionality).
//!
//! An operation whose outcome is unknown (a timeout, a lost connection, "may or may not be
//! applied") returns at infinity: it may take effect at any point after its call, or never
//! (placed after everything, it changes nothing anyone observed). A failed operation (the
//! server said it was not applied) is left out of the history.
//!
//! On a violation, [`minimize`] finds a small sub-history that is a violation whatever the
//! register held before it: the shortest failing prefix (in call order), cut at the latest
//! quiescent point (no operation in flight) after which the rest still fails from every
//! possible starting value, then stripped of the reads that are not needed. Cutting only at
//! quiescent points, and demanding failure from every start, keeps it honest: it never blames
//! a read for a write that was merely cut away.

use std::collections::{BTreeMap, HashSet};

/// A register operation's input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// GET
    Read,
    /// SET v
    Write(String),
    /// Compare and set: from, to.
    Cas(String, String),
}

/// What a register operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// A read's value (`None`: the key was absent).
    Read(Option<String>),
    /// A write was acknowledged.
    Written,
    /// Whether a compare-and-set swapped.
    Cas(bool),
    /// The outcome is unknown: it may or may not have taken effect.
    Unknown,
}

/// One operation of a history: who, on which key, when it was called and returned (`None`:
/// unknown outcome, returns at infinity), what it asked and what it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The client process (an id per connection).
    pub process: u64,
    /// The register.
    pub key: String,
    /// Call time, in nanoseconds from the start of the test.
    pub call: u64,
    /// Return time; `None` when the outcome is unknown.
    pub ret: Option<u64>,
    /// What was asked.
    pub input: Input,
    /// What came back.
    pub output: Output,
}

/// The register model: its value, and whether `input` with `output` can happen in it.
fn step(state: &Option<String>, input: &Input, output: &Output) -> Option<Option<String>> {
    match (input, output) {
        (Input::Read, Output::Read(v)) => (v == state).then(|| state.clone()),
        (Input::Read, Output::Unknown) => Some(state.clone()),
        (Input::Write(v), Output::Written | Output::Unknown) => Some(Some(v.clone())),
        (Input::Cas(from, to), Output::Cas(true)) => (state.as_ref() == Some(from)).then(|| Some(to.clone())),
        (Input::Cas(from, _), Output::Cas(false)) => (state.as_ref() != Some(from)).then(|| state.clone()),
        (Input::Cas(from, to), Output::Unknown) => {
            Some(if state.as_ref() == Some(from) { Some(to.clone()) } else { state.clone() })
        }
        _ => None,
    }
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    Violation,
    /// The search gave up after this many steps.
    GaveUp(u64),
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For a call, the index of its return event.
    partner: usize,
}

/// Checks one key's operations (initial value: absent), within `max_steps` search steps.
pub fn check_register(ops: &[Op], max_steps: u64) -> Verdict {
    check_register_from(ops, &None, max_steps)
}

/// Checks one key's operations starting from `initial`.
pub fn check_register_from(ops: &[Op], initial: &Option<String>, max_steps: u64) -> Verdict {
    // Events sorted by time; at equal times calls come first (the two operations overlap:
    // the weaker assumption, so no false alarm).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, true, i));
        order.push((op.ret.unwrap_or(u64::MAX), false, i));
    }
    order.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    // A doubly linked list with a sentinel head at index 0.
    let n = order.len();
    let mut ev: Vec<Event> = Vec::with_capacity(n + 1);
    ev.push(Event {
        op: usize::MAX,
        is_call: false,
        prev: usize::MAX,
        next: if n > 0 { 1 } else { usize::MAX },
        partner: 0,
    });
    let mut return_of = vec![0usize; ops.len()];
    for (k, &(_, is_call, op)) in order.iter().enumerate() {
        let idx = k + 1;
        ev.push(Event { op, is_call, prev: idx - 1, next: if idx < n { idx + 1 } else { usize::MAX }, partner: 0 });
        if !is_call {
            return_of[op] = idx;
        }
    }
    for e in ev.iter_mut().skip(1) {
        if e.is_call {
            e.partner = return_of[e.op];
        }
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut calls: Vec<(usize, Option<String>)> = Vec::new();
    let mut state: Option<String> = initial.clone();
    let mut entry = ev[0].next;
    let mut steps = 0u64;
    let unlink = |ev: &mut Vec<Event>, i: usize| {
        let (p, nx) = (ev[i].prev, ev[i].next);
        ev[p].next = nx;
        if nx != usize::MAX {
            ev[nx].prev = p;
        }
    };
    let relink = |ev: &mut Vec<Event>, i: usize| {
        let (p, nx) = (ev[i].prev, ev[i].next);
        ev[p].next = i;
        if nx != usize::MAX {
            ev[nx].prev = i;
        }
    };
    while ev[0].next != usize::MAX {
        steps += 1;
        if steps > max_steps {
            return Verdict::GaveUp(steps);
        }
        if entry == usize::MAX {
            // Past the end with operations left: cannot happen (returns are in the list).
            return Verdict::Violation;
        }
        let e = ev[entry];
        if e.is_call {
            let op = &ops[e.op];
            match step(&state, &op.input, &op.output) {
                Some(next_state) => {
                    let mut l = linearized.clone();
                    l[e.op / 64] |= 1 << (e.op % 64);
                    if cache.insert((l.clone(), next_state.clone())) {
                        calls.push((entry, state));
                        state = next_state;
                        linearized = l;
                        // Lift the call and its return out of the list.
                        unlink(&mut ev, entry);
                        unlink(&mut ev, e.partner);
                        entry = ev[0].next;
                    } else {
                        entry = e.next;
                    }
                }
                None => entry = e.next,
            }
        } else {
            // A return whose call is not linearized yet: undo the last choice.
            let Some((call, prev_state)) = calls.pop() else { return Verdict::Violation };
            state = prev_state;
            let c = ev[call];
            linearized[c.op / 64] &= !(1 << (c.op % 64));
            relink(&mut ev, c.partner);
            relink(&mut ev, call);
            entry = ev[call].next;
        }
    }
    Verdict::Linearizable
}

/// A small sub-history of `ops` (a violation from the absent start) that is a violation from
/// any start (module docs); `budget` bounds the checks spent removing reads.
pub fn minimize(ops: &[Op], max_steps: u64, budget: usize) -> Vec<Op> {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| o.call);
    let fails = |h: &[Op]| check_register(h, max_steps) == Verdict::Violation;
    // The shortest failing prefix, by binary search.
    let (mut lo, mut hi) = (1, ops.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(&ops[..mid]) { hi = mid } else { lo = mid + 1 }
    }
    let prefix = &ops[..hi];
    // Every value the register could hold at a cut.
    let mut starts: Vec<Option<String>> = vec![None];
    for o in prefix {
        match &o.input {
            Input::Write(v) | Input::Cas(_, v) if !starts.contains(&Some(v.clone())) => starts.push(Some(v.clone())),
            _ => {}
        }
    }
    let fails_from_any = |h: &[Op]| starts.iter().all(|s| check_register_from(h, s, max_steps) == Verdict::Violation);
    // Quiescent points: before op j when every earlier op returned before op j's call.
    let mut cut = 0;
    let mut in_flight_until = 0u64;
    let mut quiescent = Vec::new();
    for (j, o) in prefix.iter().enumerate() {
        if j > 0 && in_flight_until < o.call {
            quiescent.push(j);
        }
        in_flight_until = in_flight_until.max(o.ret.unwrap_or(u64::MAX));
    }
    for &j in quiescent.iter().rev() {
        if fails_from_any(&prefix[j..]) {
            cut = j;
            break;
        }
    }
    let mut kept = prefix[cut..].to_vec();
    if cut == 0 {
        return kept; // no cut fails from every start: the whole prefix is the evidence
    }
    // Reads that are not needed go (removing a read never hides a violation elsewhere).
    let mut i = 0;
    let mut checks = 0;
    while i < kept.len() && checks < budget {
        if kept[i].input == Input::Read && i + 1 < kept.len() {
            let mut trial = kept.clone();
            trial.remove(i);
            checks += 1;
            if fails_from_any(&trial) {
                kept = trial;
                continue;
            }
        }
        i += 1;
    }
    kept
}

/// Splits a history by key (P-compositionality) and checks each key; returns the verdict per
/// key.
pub fn check_registers(ops: &[Op], max_steps: u64) -> BTreeMap<String, Verdict> {
    let mut by_key: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.clone()).or_default().push(op.clone());
    }
    by_key.into_iter().map(|(k, ops)| (k, check_register(&ops, max_steps))).collect()
}

/// A history written out one operation per line, in call order.
pub fn render(ops: &[Op]) -> String {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| o.call);
    ops.iter()
        .map(|o| {
            let ret = o.ret.map_or("?".to_string(), |r| format!("{:.3} ms", r as f64 / 1e6));
            format!(
                "  p{:<4} {:>12.3} ms .. {:>12}  {} {:?} -> {:?}\n",
                o.process,
                o.call as f64 / 1e6,
                ret,
                o.key,
                o.input,
                o.output
            )
        })
        .collect()
}

/// The counter check: the final value is at least the acknowledged increments and at most
/// those plus the unknown ones.
pub fn check_counter(final_value: i64, acknowledged: u64, unknown: u64) -> Result<(), String> {
    let (lo, hi) = (acknowledged as i64, (acknowledged + unknown) as i64);
    if final_value < lo || final_value > hi {
        return Err(format!(
            "counter is {final_value}: {acknowledged} increments acknowledged, {unknown} unknown (expected {lo}..={hi})"
        ));
    }
    Ok(())
}

/// The set check, for elements appended as `element,`: every acknowledged element is present,
/// every element present was attempted (acknowledged or unknown), none appears twice (a write
/// applied twice).
pub fn check_set(final_value: &str, acknowledged: &HashSet<String>, unknown: &HashSet<String>) -> Result<(), String> {
    let mut seen = HashSet::new();
    for e in final_value.split(',').filter(|e| !e.is_empty()) {
        if !seen.insert(e.to_string()) {
            return Err(format!("element {e} appears twice: a write was applied twice"));
        }
        if !acknowledged.contains(e) && !unknown.contains(e) {
            return Err(format!("element {e} was never written, or was written and reported failed"));
        }
    }
    let mut lost: Vec<&String> = acknowledged.iter().filter(|e| !seen.contains(e.as_str())).collect();
    lost.sort();
    if !lost.is_empty() {
        return Err(format!("{} acknowledged elements lost, first {:?}", lost.len(), &lost[..lost.len().min(10)]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64, call: u64, ret: Option<u64>, input: Input, output: Output) -> Op {
        Op { process, key: "r".into(), call, ret, input, output }
    }
    fn w(v: &str) -> Input {
        Input::Write(v.into())
    }
    fn r(v: Option<&str>) -> Output {
        Output::Read(v.map(String::from))
    }

    #[test]
    fn sequential_histories_are_checked_against_the_model() {
        let ok = [
            op(1, 0, Some(1), w("1"), Output::Written),
            op(1, 2, Some(3), Input::Read, r(Some("1"))),
            op(1, 4, Some(5), Input::Cas("1".into(), "2".into()), Output::Cas(true)),
            op(1, 6, Some(7), Input::Cas("1".into(), "3".into()), Output::Cas(false)),
            op(1, 8, Some(9), Input::Read, r(Some("2"))),
        ];
        assert_eq!(check_register(&ok, 1_000_000), Verdict::Linearizable);
        let mut stale = ok.to_vec();
        stale[4].output = r(Some("1"));
        assert_eq!(check_register(&stale, 1_000_000), Verdict::Violation);
        assert_eq!(check_register(&[op(1, 0, Some(1), Input::Read, r(Some("x")))], 100), Verdict::Violation);
        assert_eq!(check_register(&[op(1, 0, Some(1), Input::Read, r(None))], 100), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Write 1 and write 2 overlap; reads after both see either, but then not flip back.
        let h = [
            op(1, 0, Some(10), w("1"), Output::Written),
            op(2, 1, Some(11), w("2"), Output::Written),
            op(3, 12, Some(13), Input::Read, r(Some("1"))),
            op(3, 14, Some(15), Input::Read, r(Some("1"))),
        ];
        assert_eq!(check_register(&h, 1_000_000), Verdict::Linearizable);
        let mut flip = h.to_vec();
        flip[3].output = r(Some("2"));
        assert_eq!(check_register(&flip, 1_000_000), Verdict::Violation);
        // A read overlapping a write may see the old or the new value.
        let h = [
            op(1, 0, Some(1), w("1"), Output::Written),
            op(1, 2, Some(10), w("2"), Output::Written),
            op(2, 3, Some(4), Input::Read, r(Some("1"))),
            op(2, 5, Some(6), Input::Read, r(Some("2"))),
        ];
        assert_eq!(check_register(&h, 1_000_000), Verdict::Linearizable);
    }

    #[test]
    fn unknown_outcomes_may_take_effect_late_or_never() {
        let h = [
            op(1, 0, Some(1), w("1"), Output::Written),
            op(2, 2, None, w("2"), Output::Unknown),
            op(3, 3, Some(4), Input::Read, r(Some("1"))),
            op(3, 100, Some(101), Input::Read, r(Some("2"))),
        ];
        assert_eq!(check_register(&h, 1_000_000), Verdict::Linearizable, "took effect late");
        let never = [h[0].clone(), h[1].clone(), op(3, 100, Some(101), Input::Read, r(Some("1")))];
        assert_eq!(check_register(&never, 1_000_000), Verdict::Linearizable, "never took effect");
        // But not before it was called.
        let early =
            [h[0].clone(), op(3, 1, Some(2), Input::Read, r(Some("2"))), op(2, 3, None, w("2"), Output::Unknown)];
        assert_eq!(check_register(&early, 1_000_000), Verdict::Violation);
    }

    #[test]
    fn a_violation_is_minimized_to_the_operations_that_make_it() {
        let mut h = Vec::new();
        for i in 0..20u64 {
            h.push(op(1, i * 10, Some(i * 10 + 1), w(&i.to_string()), Output::Written));
            h.push(op(2, i * 10 + 2, Some(i * 10 + 3), Input::Read, r(Some(&i.to_string()))));
        }
        // A stale read at the end.
        h.push(op(3, 1000, Some(1001), Input::Read, r(Some("3"))));
        assert_eq!(check_register(&h, 1_000_000), Verdict::Violation);
        let small = minimize(&h, 1_000_000, 1000);
        // The read of the last write, then the stale read with no write between: a violation
        // from any starting value.
        assert_eq!(small.len(), 2, "{}", render(&small));
        assert_eq!(small[0].output, r(Some("19")));
        assert_eq!(small[1].output, r(Some("3")));
        // A read of a value nobody wrote is blamed on itself, not on a write cut away.
        let h = [op(1, 0, Some(1), w("1"), Output::Written), op(2, 2, Some(3), Input::Read, r(Some("1")))];
        assert_eq!(check_register(&h, 1000), Verdict::Linearizable);
    }

    #[test]
    fn counter_and_set_checks() {
        assert!(check_counter(10, 10, 0).is_ok());
        assert!(check_counter(12, 10, 3).is_ok());
        assert!(check_counter(9, 10, 3).is_err());
        assert!(check_counter(14, 10, 3).is_err());
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        assert!(check_set("a,b,c,", &set(&["a", "b"]), &set(&["c"])).is_ok());
        assert!(check_set("a,", &set(&["a", "b"]), &set(&[])).unwrap_err().contains("lost"));
        assert!(check_set("a,a,", &set(&["a"]), &set(&[])).unwrap_err().contains("twice"));
        assert!(check_set("a,z,", &set(&["a"]), &set(&[])).unwrap_err().contains("never written"));
    }

    #[test]
    fn many_concurrent_unknown_operations_stay_within_the_budget_or_give_up() {
        let mut h = Vec::new();
        for i in 0..40u64 {
            h.push(op(i, i, None, w(&i.to_string()), Output::Unknown));
        }
        h.push(op(99, 100, Some(101), Input::Read, r(Some("7"))));
        match check_register(&h, 5_000_000) {
            Verdict::Linearizable | Verdict::GaveUp(_) => {}
            Verdict::Violation => panic!("a read of an unknown write is linearizable"),
        }
    }
}
